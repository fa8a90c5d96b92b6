package store

import (
	"context"
	"database/sql"
	"fmt"
)

const fleetCols = "id, name, key_prefix, created"

func scanFleet(s scanner) (Fleet, error) {
	var f Fleet
	var created int64
	if err := s.Scan(&f.ID, &f.Name, &f.KeyPrefix, &created); err != nil {
		return Fleet{}, err
	}
	f.Created = fromMicros(created)
	return f, nil
}

// keyColumns returns what is stored of a provisioning key: its prefix and
// hash, or "" and NULL for no key.
func keyColumns(key string) (string, sql.NullString, error) {
	if key == "" {
		return "", sql.NullString{}, nil
	}
	if err := checkSecret("provisioning key", key); err != nil {
		return "", sql.NullString{}, err
	}
	return secretPrefix(key), sql.NullString{String: hashSecret(key), Valid: true}, nil
}

// CreateFleet implements Store.
func (db *DB) CreateFleet(ctx context.Context, name, provisioningKey string) (Fleet, error) {
	if name == "" {
		return Fleet{}, fmt.Errorf("create fleet: no name: %w", ErrInvalid)
	}
	if err := checkText("create fleet", name); err != nil {
		return Fleet{}, err
	}
	prefix, hash, err := keyColumns(provisioningKey)
	if err != nil {
		return Fleet{}, fmt.Errorf("create fleet %s: %w", name, err)
	}
	f := Fleet{ID: newID(), Name: name, KeyPrefix: prefix, Created: db.now()}
	_, err = db.w.ExecContext(ctx, "INSERT INTO fleets (id, name, key_prefix, key_hash, created) VALUES ($1, $2, $3, $4, $5)",
		f.ID, f.Name, f.KeyPrefix, hash, micros(f.Created))
	if isUnique(err) {
		// The name, or (never by chance) the key.
		return Fleet{}, fmt.Errorf("create fleet %s: the name is taken: %w", name, ErrConflict)
	}
	if err != nil {
		return Fleet{}, fmt.Errorf("create fleet %s: %w", name, err)
	}
	return f, nil
}

// Fleet implements Store.
func (db *DB) Fleet(ctx context.Context, id string) (Fleet, error) {
	f, err := scanFleet(db.r.QueryRowContext(ctx, "SELECT "+fleetCols+" FROM fleets WHERE id = $1", id))
	if err != nil {
		return Fleet{}, notFound(err, "fleet %s", id)
	}
	return f, nil
}

// FleetByName implements Store.
func (db *DB) FleetByName(ctx context.Context, name string) (Fleet, error) {
	f, err := scanFleet(db.r.QueryRowContext(ctx, "SELECT "+fleetCols+" FROM fleets WHERE name = $1", name))
	if err != nil {
		return Fleet{}, notFound(err, "fleet %s", name)
	}
	return f, nil
}

// FleetByProvisioningKey implements Store.
func (db *DB) FleetByProvisioningKey(ctx context.Context, key string) (Fleet, error) {
	f, err := scanFleet(db.r.QueryRowContext(ctx, "SELECT "+fleetCols+" FROM fleets WHERE key_hash = $1", hashSecret(key)))
	if err != nil {
		return Fleet{}, notFound(err, "fleet with provisioning key %s…", secretPrefix(key))
	}
	return f, nil
}

// ListFleets implements Store.
func (db *DB) ListFleets(ctx context.Context) ([]Fleet, error) {
	fs, err := queryAll(ctx, db.r, scanFleet, "SELECT "+fleetCols+" FROM fleets ORDER BY name")
	if err != nil {
		return nil, fmt.Errorf("list fleets: %w", err)
	}
	return fs, nil
}

// SetProvisioningKey implements Store.
func (db *DB) SetProvisioningKey(ctx context.Context, fleetID, key string) (Fleet, error) {
	prefix, hash, err := keyColumns(key)
	if err != nil {
		return Fleet{}, fmt.Errorf("set provisioning key of fleet %s: %w", fleetID, err)
	}
	f, err := scanFleet(db.w.QueryRowContext(ctx, "UPDATE fleets SET key_prefix = $2, key_hash = $3 WHERE id = $1 RETURNING "+fleetCols,
		fleetID, prefix, hash))
	if isUnique(err) {
		return Fleet{}, fmt.Errorf("set provisioning key of fleet %s: the key is in use: %w", fleetID, ErrConflict)
	}
	if err != nil {
		return Fleet{}, notFound(err, "set provisioning key of fleet %s", fleetID)
	}
	return f, nil
}

// SetFleetRelease implements Store.
func (db *DB) SetFleetRelease(ctx context.Context, fleetID, releaseID string) error {
	return db.inTx(ctx, func(tx *sql.Tx) error {
		app, err := releaseApp(ctx, tx, fleetID, releaseID)
		if err != nil {
			return fmt.Errorf("set fleet %s to release %s: %w", fleetID, releaseID, err)
		}
		return setFleetRelease(ctx, tx, fleetID, app, releaseID, micros(db.now()))
	})
}

// setFleetRelease makes a release the one the fleet's new devices start
// with, for its app.
func setFleetRelease(ctx context.Context, tx *sql.Tx, fleetID, app, releaseID string, now int64) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO fleet_apps (fleet_id, app, release_id, updated) VALUES ($1, $2, $3, $4)
		ON CONFLICT (fleet_id, app) DO UPDATE SET release_id = excluded.release_id, updated = excluded.updated`,
		fleetID, app, releaseID, now)
	if err != nil {
		return fmt.Errorf("set fleet %s to release %s: %w", fleetID, releaseID, err)
	}
	return nil
}

// FleetReleases implements Store.
func (db *DB) FleetReleases(ctx context.Context, fleetID string) ([]AppRelease, error) {
	return fleetReleases(ctx, db.r, fleetID)
}

func fleetReleases(ctx context.Context, q querier, fleetID string) ([]AppRelease, error) {
	ars, err := queryAll(ctx, q, func(s scanner) (AppRelease, error) {
		var a AppRelease
		return a, s.Scan(&a.App, &a.ReleaseID)
	}, "SELECT app, release_id FROM fleet_apps WHERE fleet_id = $1 ORDER BY app", fleetID)
	if err != nil {
		return nil, fmt.Errorf("releases of fleet %s: %w", fleetID, err)
	}
	return ars, nil
}

const fleetKeyCols = "fleet_id, key_id, public_key, created, created_by"

func scanFleetKey(s scanner) (FleetKey, error) {
	var k FleetKey
	var created int64
	if err := s.Scan(&k.FleetID, &k.ID, &k.PublicKey, &created, &k.CreatedBy); err != nil {
		return FleetKey{}, err
	}
	k.Created = fromMicros(created)
	return k, nil
}

// AddFleetKey implements Store.
func (db *DB) AddFleetKey(ctx context.Context, k FleetKey) (FleetKey, error) {
	if k.FleetID == "" || k.ID == "" || k.PublicKey == "" {
		return FleetKey{}, fmt.Errorf("add fleet key: fleet, ID and public key are required: %w", ErrInvalid)
	}
	if err := checkText("add fleet key", k.ID, k.PublicKey, k.CreatedBy); err != nil {
		return FleetKey{}, err
	}
	k.Created = db.now()
	_, err := db.w.ExecContext(ctx, "INSERT INTO fleet_keys ("+fleetKeyCols+") VALUES ($1, $2, $3, $4, $5)",
		k.FleetID, k.ID, k.PublicKey, micros(k.Created), k.CreatedBy)
	if isUnique(err) {
		return FleetKey{}, fmt.Errorf("add key %s to fleet %s: it is there already: %w", k.ID, k.FleetID, ErrConflict)
	}
	if isForeignKey(err) {
		return FleetKey{}, fmt.Errorf("add key %s: fleet %s: %w", k.ID, k.FleetID, ErrNotFound)
	}
	if err != nil {
		return FleetKey{}, fmt.Errorf("add key %s to fleet %s: %w", k.ID, k.FleetID, err)
	}
	return k, nil
}

// FleetKeys implements Store.
func (db *DB) FleetKeys(ctx context.Context, fleetID string) ([]FleetKey, error) {
	ks, err := queryAll(ctx, db.r, scanFleetKey, "SELECT "+fleetKeyCols+" FROM fleet_keys WHERE fleet_id = $1 ORDER BY key_id", fleetID)
	if err != nil {
		return nil, fmt.Errorf("keys of fleet %s: %w", fleetID, err)
	}
	return ks, nil
}

// RemoveFleetKey implements Store.
func (db *DB) RemoveFleetKey(ctx context.Context, fleetID, keyID string) error {
	res, err := db.w.ExecContext(ctx, "DELETE FROM fleet_keys WHERE fleet_id = $1 AND key_id = $2", fleetID, keyID)
	if err != nil {
		return fmt.Errorf("remove key %s of fleet %s: %w", keyID, fleetID, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("remove key %s of fleet %s: %w", keyID, fleetID, err)
	} else if n == 0 {
		return fmt.Errorf("remove key %s of fleet %s: no such key: %w", keyID, fleetID, ErrNotFound)
	}
	return nil
}
