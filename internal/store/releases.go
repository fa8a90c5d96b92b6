package store

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
)

const releaseCols = "fleet_id, id, app, version, spec, created, created_by, signature, key_id"

// releaseColsOf is releaseCols qualified by a table alias.
func releaseColsOf(alias string) string {
	return alias + "." + strings.ReplaceAll(releaseCols, ", ", ", "+alias+".")
}

func scanRelease(s scanner) (Release, error) {
	var r Release
	var spec string
	var created int64
	if err := s.Scan(&r.FleetID, &r.ID, &r.App, &r.Version, &spec, &created, &r.CreatedBy, &r.Signature, &r.KeyID); err != nil {
		return Release{}, err
	}
	r.Spec = json.RawMessage(spec)
	r.Created = fromMicros(created)
	return r, nil
}

// CreateRelease implements Store.
func (db *DB) CreateRelease(ctx context.Context, r Release) (Release, bool, error) {
	if r.ID == "" || r.FleetID == "" || r.App == "" {
		return Release{}, false, fmt.Errorf("create release: ID, fleet and app are required: %w", ErrInvalid)
	}
	if err := checkText("create release", r.ID, r.App, r.Version, r.CreatedBy, r.Signature, r.KeyID); err != nil {
		return Release{}, false, err
	}
	if !validJSON(r.Spec) {
		return Release{}, false, fmt.Errorf("create release %s: the spec is not JSON: %w", r.ID, ErrInvalid)
	}
	var spec bytes.Buffer
	if err := json.Compact(&spec, r.Spec); err != nil {
		return Release{}, false, fmt.Errorf("create release %s: spec: %v: %w", r.ID, err, ErrInvalid)
	}
	r.Spec = spec.Bytes()
	r.Created = db.now()
	// Insert unless there; then read what is there. Under concurrent
	// creates of one release, exactly one inserts and all compare alike.
	res, err := db.w.ExecContext(ctx, "INSERT INTO releases ("+releaseCols+") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (fleet_id, id) DO NOTHING",
		r.FleetID, r.ID, r.App, r.Version, string(r.Spec), micros(r.Created), r.CreatedBy, r.Signature, r.KeyID)
	if isForeignKey(err) {
		return Release{}, false, fmt.Errorf("create release %s: fleet %s: %w", r.ID, r.FleetID, ErrNotFound)
	}
	if err != nil {
		return Release{}, false, fmt.Errorf("create release %s: %w", r.ID, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return Release{}, false, fmt.Errorf("create release %s: %w", r.ID, err)
	} else if n == 1 {
		return r, true, nil
	}
	old, err := db.release(ctx, db.w, r.FleetID, r.ID)
	if err != nil {
		return Release{}, false, fmt.Errorf("create release %s: %w", r.ID, err)
	}
	if old.App != r.App || old.Version != r.Version || !bytes.Equal(old.Spec, r.Spec) {
		return Release{}, false, fmt.Errorf("create release %s: a release with this ID and different content exists (app %s, version %s); releases are immutable: %w",
			r.ID, old.App, old.Version, ErrConflict)
	}
	if r.Signature != "" && (r.Signature != old.Signature || r.KeyID != old.KeyID) {
		// Signed again (after a key rotation, or first signed now): the
		// caller verified the new signature; it replaces the old, and the
		// targets naming the release change, so that devices which
		// refused it for its signature fetch it again.
		err := db.inTx(ctx, func(tx *sql.Tx) error {
			v, err := db.nextTarget(ctx, tx)
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, "UPDATE releases SET signature = $3, key_id = $4 WHERE fleet_id = $1 AND id = $2",
				r.FleetID, r.ID, r.Signature, r.KeyID); err != nil {
				return err
			}
			return db.setTarget(ctx, tx, v, "id IN (SELECT device_id FROM device_apps WHERE fleet_id = $2 AND release_id = $3)", r.FleetID, r.ID)
		})
		if err != nil {
			return Release{}, false, fmt.Errorf("create release %s: sign: %w", r.ID, err)
		}
		old.Signature, old.KeyID = r.Signature, r.KeyID
	}
	return old, false, nil
}

// Release implements Store.
func (db *DB) Release(ctx context.Context, fleetID, id string) (Release, error) {
	return db.release(ctx, db.r, fleetID, id)
}

func (db *DB) release(ctx context.Context, q querier, fleetID, id string) (Release, error) {
	r, err := scanRelease(q.QueryRowContext(ctx, "SELECT "+releaseCols+" FROM releases WHERE fleet_id = $1 AND id = $2", fleetID, id))
	if err != nil {
		return Release{}, notFound(err, "release %s in fleet %s", id, fleetID)
	}
	return r, nil
}

// ListReleases implements Store.
func (db *DB) ListReleases(ctx context.Context, f ReleaseFilter) ([]Release, error) {
	q := "SELECT " + releaseCols + " FROM releases WHERE fleet_id = $1"
	args := []any{f.FleetID}
	if f.App != "" {
		args = append(args, f.App)
		q += " AND app = $2"
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	args = append(args, limit)
	q += fmt.Sprintf(" ORDER BY created DESC, id LIMIT $%d", len(args))
	rs, err := queryAll(ctx, db.r, scanRelease, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list releases of fleet %s: %w", f.FleetID, err)
	}
	return rs, nil
}
