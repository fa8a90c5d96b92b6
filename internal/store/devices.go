package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

const deviceCols = "id, fleet_id, name, notes, created, last_seen, state, state_version, target_version"

func scanDevice(s scanner) (Device, error) {
	var d Device
	var created int64
	var lastSeen sql.NullInt64
	var state sql.NullString
	if err := s.Scan(&d.ID, &d.FleetID, &d.Name, &d.Notes, &created, &lastSeen, &state, &d.StateVersion, &d.TargetVersion); err != nil {
		return Device{}, err
	}
	d.Created = fromMicros(created)
	d.LastSeen = fromNullMicros(lastSeen)
	if state.Valid {
		d.State = json.RawMessage(state.String)
	}
	d.Tags = []string{}
	return d, nil
}

// device reads one device and its tags.
func (db *DB) device(ctx context.Context, what, where string, args ...any) (Device, error) {
	d, err := scanDevice(db.r.QueryRowContext(ctx, "SELECT "+deviceCols+" FROM devices WHERE "+where, args...))
	if err != nil {
		return Device{}, notFound(err, "%s", what)
	}
	if err := db.loadTags(ctx, []*Device{&d}); err != nil {
		return Device{}, fmt.Errorf("%s: %w", what, err)
	}
	return d, nil
}

// loadTags fills in the tags of ds.
func (db *DB) loadTags(ctx context.Context, ds []*Device) error {
	if len(ds) == 0 {
		return nil
	}
	byID := make(map[string]*Device, len(ds))
	args := make([]any, len(ds))
	for i, d := range ds {
		byID[d.ID] = d
		args[i] = d.ID
	}
	rows, err := db.r.QueryContext(ctx, "SELECT device_id, tag FROM device_tags WHERE device_id IN ("+placeholders(1, len(args))+") ORDER BY tag", args...)
	if err != nil {
		return fmt.Errorf("tags: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, tag string
		if err := rows.Scan(&id, &tag); err != nil {
			return fmt.Errorf("tags: %w", err)
		}
		byID[id].Tags = append(byID[id].Tags, tag)
	}
	return rows.Err()
}

// CreateDevice implements Store.
func (db *DB) CreateDevice(ctx context.Context, fleetID, name, tokenSecret string) (Device, error) {
	if name == "" {
		return Device{}, fmt.Errorf("create device: no name: %w", ErrInvalid)
	}
	if err := checkText("create device", name); err != nil {
		return Device{}, err
	}
	if err := checkSecret("create device "+name+": token", tokenSecret); err != nil {
		return Device{}, err
	}
	d := Device{ID: newID(), FleetID: fleetID, Name: name, Tags: []string{}, Created: db.now()}
	err := db.inTx(ctx, func(tx *sql.Tx) error {
		v, err := db.nextTarget(ctx, tx)
		if err != nil {
			return err
		}
		d.TargetVersion = v
		_, err = tx.ExecContext(ctx, "INSERT INTO devices (id, fleet_id, name, token_hash, created, target_version) VALUES ($1, $2, $3, $4, $5, $6)",
			d.ID, d.FleetID, d.Name, hashSecret(tokenSecret), micros(d.Created), v)
		switch {
		case isForeignKey(err):
			return fmt.Errorf("no such fleet: %w", ErrNotFound)
		case isUnique(err) && strings.Contains(err.Error(), "token_hash"):
			return fmt.Errorf("the token is in use: %w", ErrConflict)
		case isUnique(err):
			return fmt.Errorf("the name is taken in the fleet: %w", ErrConflict)
		case err != nil:
			return err
		}
		// The fleet's releases are where a new device starts.
		_, err = tx.ExecContext(ctx, `INSERT INTO device_apps (device_id, app, fleet_id, release_id, pinned, updated, generation)
			SELECT $1, app, fleet_id, release_id, FALSE, CAST($2 AS BIGINT), CAST($4 AS BIGINT) FROM fleet_apps WHERE fleet_id = $3`,
			d.ID, micros(d.Created), d.FleetID, v)
		if err != nil {
			return fmt.Errorf("start with the fleet's releases: %w", err)
		}
		return db.notify(ctx, tx, TargetsChannel, fmt.Sprint(v))
	})
	if err != nil {
		return Device{}, fmt.Errorf("create device %s in fleet %s: %w", name, fleetID, err)
	}
	return d, nil
}

// Device implements Store.
func (db *DB) Device(ctx context.Context, id string) (Device, error) {
	return db.device(ctx, "device "+id, "id = $1", id)
}

// DeviceByName implements Store.
func (db *DB) DeviceByName(ctx context.Context, fleetID, name string) (Device, error) {
	return db.device(ctx, fmt.Sprintf("device %s in fleet %s", name, fleetID), "fleet_id = $1 AND name = $2", fleetID, name)
}

// DeviceByToken implements Store. It runs on every request a device
// makes, so it reads one row and leaves out the state, often the row's
// biggest column.
func (db *DB) DeviceByToken(ctx context.Context, secret string) (Device, error) {
	const cols = "id, fleet_id, name, notes, created, last_seen, NULL, state_version, target_version"
	d, err := scanDevice(db.r.QueryRowContext(ctx, "SELECT "+cols+" FROM devices WHERE token_hash = $1", hashSecret(secret)))
	if err != nil {
		return Device{}, notFound(err, "device with token %s…", secretPrefix(secret))
	}
	return d, nil
}

// ListDevices implements Store.
func (db *DB) ListDevices(ctx context.Context, f DeviceFilter) ([]Device, error) {
	q := "SELECT " + deviceCols + " FROM devices WHERE fleet_id = $1"
	args := []any{f.FleetID}
	if f.Tag != "" {
		args = append(args, f.Tag)
		q += fmt.Sprintf(" AND id IN (SELECT device_id FROM device_tags WHERE tag = $%d)", len(args))
	}
	if f.After != "" {
		args = append(args, f.After)
		q += fmt.Sprintf(" AND name > $%d", len(args))
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 1000
	}
	args = append(args, limit)
	q += fmt.Sprintf(" ORDER BY name LIMIT $%d", len(args))
	ds, err := queryAll(ctx, db.r, scanDevice, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list devices of fleet %s: %w", f.FleetID, err)
	}
	ptrs := make([]*Device, len(ds))
	for i := range ds {
		ptrs[i] = &ds[i]
	}
	if err := db.loadTags(ctx, ptrs); err != nil {
		return nil, fmt.Errorf("list devices of fleet %s: %w", f.FleetID, err)
	}
	return ds, nil
}

// SetDeviceName implements Store.
func (db *DB) SetDeviceName(ctx context.Context, id, name string) error {
	if name == "" {
		return fmt.Errorf("rename device %s: no name: %w", id, ErrInvalid)
	}
	if err := checkText("rename device "+id, name); err != nil {
		return err
	}
	res, err := db.w.ExecContext(ctx, "UPDATE devices SET name = $2 WHERE id = $1", id, name)
	if isUnique(err) {
		return fmt.Errorf("rename device %s to %s: the name is taken in the fleet: %w", id, name, ErrConflict)
	}
	return mustAffect(res, err, "rename device %s", id)
}

// SetDeviceNotes implements Store.
func (db *DB) SetDeviceNotes(ctx context.Context, id, notes string) error {
	if err := checkText("set notes of device "+id, notes); err != nil {
		return err
	}
	res, err := db.w.ExecContext(ctx, "UPDATE devices SET notes = $2 WHERE id = $1", id, notes)
	return mustAffect(res, err, "set notes of device %s", id)
}

// SetDeviceTags implements Store.
func (db *DB) SetDeviceTags(ctx context.Context, id string, tags []string) error {
	tags = slices.Clone(tags)
	slices.Sort(tags)
	tags = slices.Compact(tags)
	if len(tags) > 0 && tags[0] == "" {
		return fmt.Errorf("tag device %s: an empty tag: %w", id, ErrInvalid)
	}
	if err := checkText("tag device "+id, tags...); err != nil {
		return err
	}
	return db.inTx(ctx, func(tx *sql.Tx) error {
		var one int
		if err := tx.QueryRowContext(ctx, "SELECT 1 FROM devices WHERE id = $1", id).Scan(&one); err != nil {
			return notFound(err, "tag device %s", id)
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM device_tags WHERE device_id = $1", id); err != nil {
			return fmt.Errorf("tag device %s: %w", id, err)
		}
		for _, t := range tags {
			if _, err := tx.ExecContext(ctx, "INSERT INTO device_tags (device_id, tag) VALUES ($1, $2)", id, t); err != nil {
				return fmt.Errorf("tag device %s: %w", id, err)
			}
		}
		return nil
	})
}

// SetDeviceToken implements Store.
func (db *DB) SetDeviceToken(ctx context.Context, id, secret string) error {
	if err := checkSecret("set token of device "+id, secret); err != nil {
		return err
	}
	return db.inTx(ctx, func(tx *sql.Tx) error {
		v, err := db.nextTarget(ctx, tx)
		if err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, "UPDATE devices SET token_hash = $2 WHERE id = $1", id, hashSecret(secret))
		if isUnique(err) {
			return fmt.Errorf("set token of device %s: the token is in use: %w", id, ErrConflict)
		}
		if err := mustAffect(res, err, "set token of device %s", id); err != nil {
			return err
		}
		return db.notify(ctx, tx, TargetsChannel, strconv.FormatInt(v, 10))
	})
}

// DeleteDevice implements Store.
func (db *DB) DeleteDevice(ctx context.Context, id string) error {
	return db.inTx(ctx, func(tx *sql.Tx) error {
		v, err := db.nextTarget(ctx, tx)
		if err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, "DELETE FROM devices WHERE id = $1", id)
		if err := mustAffect(res, err, "delete device %s", id); err != nil {
			return err
		}
		// Tags, apps and rollout progress go by ON DELETE CASCADE;
		// environment layers have no foreign key (device_id may be '').
		if _, err := tx.ExecContext(ctx, "DELETE FROM env_layers WHERE device_id = $1", id); err != nil {
			return fmt.Errorf("delete device %s: environment: %w", id, err)
		}
		return db.notify(ctx, tx, TargetsChannel, strconv.FormatInt(v, 10))
	})
}

// TouchDevice implements Store.
func (db *DB) TouchDevice(ctx context.Context, id string) error {
	res, err := db.w.ExecContext(ctx, "UPDATE devices SET last_seen = $2 WHERE id = $1", id, micros(db.now()))
	return mustAffect(res, err, "touch device %s", id)
}

// TouchDevices implements Store.
func (db *DB) TouchDevices(ctx context.Context, ids []string) error {
	ids = slices.Sorted(slices.Values(ids))
	now := micros(db.now())
	list := jsonList(ids)
	return db.inTxRetry(ctx, func(tx *sql.Tx) error {
		if err := db.lockDevices(ctx, tx, db.dialect.inList("id", 1), list); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, "UPDATE devices SET last_seen = $1 WHERE "+db.dialect.inList("id", 2), now, list); err != nil {
			return fmt.Errorf("record that %d devices were seen: %w", len(ids), err)
		}
		return nil
	})
}

// DeviceState implements Store.
func (db *DB) DeviceState(ctx context.Context, id string) (json.RawMessage, int64, error) {
	var state sql.NullString
	var v int64
	if err := db.r.QueryRowContext(ctx, "SELECT state, state_version FROM devices WHERE id = $1", id).Scan(&state, &v); err != nil {
		return nil, 0, notFound(err, "state of device %s", id)
	}
	if !state.Valid {
		return nil, v, nil
	}
	return json.RawMessage(state.String), v, nil
}

// SetDeviceState implements Store.
func (db *DB) SetDeviceState(ctx context.Context, id string, state json.RawMessage, ifVersion int64) (int64, error) {
	return setState(ctx, db.w, id, state, ifVersion, micros(db.now()))
}

// SetDeviceStates implements Store.
func (db *DB) SetDeviceStates(ctx context.Context, reports []StateReport) ([]StateResult, error) {
	// Each row in ID order: see lockDevices.
	order := make([]int, len(reports))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return strings.Compare(reports[a].DeviceID, reports[b].DeviceID) })
	var rs []StateResult
	err := db.inTxRetry(ctx, func(tx *sql.Tx) error {
		rs = make([]StateResult, len(reports))
		now := micros(db.now())
		for _, i := range order {
			r := reports[i]
			v, err := setState(ctx, tx, r.DeviceID, r.State, r.IfVersion, now)
			if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrConflict) && !errors.Is(err, ErrInvalid) {
				return err // the database's: nothing of the batch is kept
			}
			rs[i] = StateResult{Version: v, Err: err}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store %d state reports: %w", len(reports), err)
	}
	return rs, nil
}

// setState stores one device's state and marks it seen.
func setState(ctx context.Context, q querier, id string, state json.RawMessage, ifVersion, now int64) (int64, error) {
	if len(state) > 0 && !validJSON(state) {
		return 0, fmt.Errorf("set state of device %s: not JSON: %w", id, ErrInvalid)
	}
	query := "UPDATE devices SET state = $2, state_version = state_version + 1, last_seen = $3 WHERE id = $1"
	args := []any{id, nullText(state), now}
	if ifVersion != AnyVersion {
		query += " AND state_version = $4"
		args = append(args, ifVersion)
	}
	var v int64
	err := q.QueryRowContext(ctx, query+" RETURNING state_version", args...).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) && ifVersion != AnyVersion {
		var one int
		if err := q.QueryRowContext(ctx, "SELECT 1 FROM devices WHERE id = $1", id).Scan(&one); err != nil {
			return 0, notFound(err, "set state: device %s", id)
		}
		return 0, fmt.Errorf("set state of device %s: the state is no longer at version %d: %w", id, ifVersion, ErrConflict)
	}
	if err != nil {
		return 0, notFound(err, "set state of device %s", id)
	}
	return v, nil
}
