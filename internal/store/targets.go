package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
)

// nextTarget takes the next target version. Call it first in a transaction
// that changes targets: on PostgreSQL the counter's row stays locked until
// the transaction ends, so such transactions commit in version order (a
// reader that sees version N has seen every change below it) and cannot
// deadlock over device rows.
func (db *DB) nextTarget(ctx context.Context, tx *sql.Tx) (int64, error) {
	var v int64
	err := tx.QueryRowContext(ctx, "UPDATE counters SET value = value + 1 WHERE name = 'target' RETURNING value").Scan(&v)
	if err != nil {
		return 0, fmt.Errorf("next target version: %w", err)
	}
	return v, nil
}

// setTarget gives the devices matched by where (a condition on devices
// whose arguments start at $2) target version v and announces it.
func (db *DB) setTarget(ctx context.Context, tx *sql.Tx, v int64, where string, args ...any) error {
	if err := db.lockDevices(ctx, tx, shiftParams(where, -1), args...); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, "UPDATE devices SET target_version = $1 WHERE "+where, append([]any{v}, args...)...); err != nil {
		return fmt.Errorf("set target version: %w", err)
	}
	return db.notify(ctx, tx, TargetsChannel, strconv.FormatInt(v, 10))
}

// releaseApp returns the app of a fleet's release.
func releaseApp(ctx context.Context, q querier, fleetID, releaseID string) (string, error) {
	var app string
	err := q.QueryRowContext(ctx, "SELECT app FROM releases WHERE fleet_id = $1 AND id = $2", fleetID, releaseID).Scan(&app)
	if err != nil {
		return "", notFound(err, "release %s in fleet %s", releaseID, fleetID)
	}
	return app, nil
}

// DeviceApps implements Store.
func (db *DB) DeviceApps(ctx context.Context, deviceID string) ([]DeviceApp, error) {
	as, err := queryAll(ctx, db.r, func(s scanner) (DeviceApp, error) {
		var a DeviceApp
		var updated int64
		err := s.Scan(&a.App, &a.ReleaseID, &a.Pinned, &updated, &a.Generation)
		a.Updated = fromMicros(updated)
		return a, err
	}, "SELECT app, release_id, pinned, updated, generation FROM device_apps WHERE device_id = $1 ORDER BY app", deviceID)
	if err != nil {
		return nil, fmt.Errorf("apps of device %s: %w", deviceID, err)
	}
	return as, nil
}

// DevicesApps implements Store.
func (db *DB) DevicesApps(ctx context.Context, deviceIDs []string) (map[string][]DeviceApp, error) {
	out := make(map[string][]DeviceApp, len(deviceIDs))
	if len(deviceIDs) == 0 {
		return out, nil
	}
	type row struct {
		device string
		app    DeviceApp
	}
	rows, err := queryAll(ctx, db.r, func(s scanner) (row, error) {
		var r row
		var updated int64
		err := s.Scan(&r.device, &r.app.App, &r.app.ReleaseID, &r.app.Pinned, &updated, &r.app.Generation)
		r.app.Updated = fromMicros(updated)
		return r, err
	}, "SELECT device_id, app, release_id, pinned, updated, generation FROM device_apps WHERE "+db.dialect.inList("device_id", 1)+" ORDER BY device_id, app", jsonList(deviceIDs))
	if err != nil {
		return nil, fmt.Errorf("apps of %d devices: %w", len(deviceIDs), err)
	}
	for _, r := range rows {
		out[r.device] = append(out[r.device], r.app)
	}
	return out, nil
}

// TargetParts implements Store.
func (db *DB) TargetParts(ctx context.Context, devices []Device) (map[string]TargetParts, error) {
	ids := make([]string, 0, len(devices))
	fleets := make([]string, 0, 1)
	for _, d := range devices {
		ids = append(ids, d.ID)
		if !slices.Contains(fleets, d.FleetID) {
			fleets = append(fleets, d.FleetID)
		}
	}
	type ref struct {
		device     string
		rel        Release
		generation int64
	}
	// One device (a fetch, a poll on its own): plain equality, which
	// every planner takes to the index; many: one JSON list each.
	devWhere, devArg := db.dialect.inList("a.device_id", 1), any(jsonList(ids))
	envWhere, envArgs := `(device_id = '' AND `+db.dialect.inList("fleet_id", 1)+`) OR `+db.dialect.inList("device_id", 2), []any{jsonList(fleets), jsonList(ids)}
	if len(devices) == 1 {
		devWhere, devArg = "a.device_id = $1", ids[0]
		envWhere, envArgs = "fleet_id = $1 AND device_id IN ('', $2)", []any{fleets[0], ids[0]}
	}
	refs, err := queryAll(ctx, db.r, func(s scanner) (ref, error) {
		var r ref
		var created int64
		if err := s.Scan(&r.device, &r.rel.FleetID, &r.rel.ID, &r.rel.App, &r.rel.Version, &created, &r.rel.CreatedBy, &r.rel.Signature, &r.rel.KeyID, &r.generation); err != nil {
			return ref{}, err
		}
		r.rel.Created = fromMicros(created)
		return r, nil
	}, `SELECT a.device_id, r.fleet_id, r.id, r.app, r.version, r.created, r.created_by, r.signature, r.key_id, a.generation FROM device_apps a
		JOIN releases r ON r.fleet_id = a.fleet_id AND r.id = a.release_id
		WHERE `+devWhere+` ORDER BY a.device_id, a.app`, devArg)
	if err != nil {
		return nil, fmt.Errorf("releases of %d devices: %w", len(ids), err)
	}
	layers, err := queryAll(ctx, db.r, func(s scanner) (EnvLayer, error) {
		var l EnvLayer
		var vars string
		var updated int64
		if err := s.Scan(&l.FleetID, &l.DeviceID, &l.Service, &vars, &updated); err != nil {
			return EnvLayer{}, err
		}
		l.Updated = fromMicros(updated)
		return l, json.Unmarshal([]byte(vars), &l.Vars)
	}, `SELECT fleet_id, device_id, service, vars, updated FROM env_layers
		WHERE `+envWhere+` ORDER BY fleet_id, device_id, service`, envArgs...)
	if err != nil {
		return nil, fmt.Errorf("environment of %d devices: %w", len(ids), err)
	}
	parts := make(map[string]TargetParts, len(devices))
	for _, r := range refs {
		p := parts[r.device]
		p.Releases = append(p.Releases, r.rel)
		if p.Generations == nil {
			p.Generations = map[string]int64{}
		}
		p.Generations[r.rel.App] = r.generation
		parts[r.device] = p
	}
	for _, d := range devices {
		p := parts[d.ID]
		for _, l := range layers { // ordered as EnvLayers: fleet's first, then the device's own
			if l.FleetID == d.FleetID && (l.DeviceID == "" || l.DeviceID == d.ID) {
				p.Env = append(p.Env, l)
			}
		}
		parts[d.ID] = p
	}
	return parts, nil
}

// AssignRelease implements Store.
func (db *DB) AssignRelease(ctx context.Context, fleetID, releaseID string, deviceIDs []string) (Assigned, error) {
	ids := slices.Clone(deviceIDs)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	var changed Assigned
	err := db.inTxRetry(ctx, func(tx *sql.Tx) error {
		v, err := db.nextTarget(ctx, tx)
		if err != nil {
			return err
		}
		app, err := releaseApp(ctx, tx, fleetID, releaseID)
		if err != nil {
			return err
		}
		if len(ids) == 0 {
			changed = Assigned{}
			return nil
		}
		args := []any{fleetID}
		for _, id := range ids {
			args = append(args, id)
		}
		var n int
		if err := tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM devices WHERE fleet_id = $1 AND id IN ("+placeholders(2, len(ids))+")", args...).Scan(&n); err != nil {
			return err
		}
		if n != len(ids) {
			return fmt.Errorf("%d of the %d devices are not in the fleet: %w", len(ids)-n, len(ids), ErrNotFound)
		}
		changed, err = db.assign(ctx, tx, v, fleetID, releaseID, app, "id IN ("+placeholders(5, len(ids))+")", args[1:]...)
		return err
	})
	if err != nil {
		return Assigned{}, fmt.Errorf("assign release %s of fleet %s: %w", releaseID, fleetID, err)
	}
	return changed, nil
}

// AssignFleet implements Store.
func (db *DB) AssignFleet(ctx context.Context, fleetID, releaseID string) (changed Assigned, devices int, err error) {
	err = db.inTxRetry(ctx, func(tx *sql.Tx) error {
		v, err := db.nextTarget(ctx, tx)
		if err != nil {
			return err
		}
		app, err := releaseApp(ctx, tx, fleetID, releaseID)
		if err != nil {
			return err
		}
		if err := setFleetRelease(ctx, tx, fleetID, app, releaseID, micros(db.now())); err != nil {
			return err
		}
		if err := tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM devices WHERE fleet_id = $1", fleetID).Scan(&devices); err != nil {
			return err
		}
		changed, err = db.assign(ctx, tx, v, fleetID, releaseID, app, "TRUE")
		return err
	})
	if err != nil {
		return Assigned{}, 0, fmt.Errorf("assign release %s to fleet %s: %w", releaseID, fleetID, err)
	}
	return changed, devices, nil
}

// assign points the fleet's devices matched by where (a condition on
// devices' columns, its arguments from $5 on) at a release of app, in one
// statement: a device's row for the app is inserted, or updated unless it
// is pinned to another release, with generation v. RETURNING names the
// devices whose row it wrote, and a read before names those already on
// the release: the rest changed. All of them get target version v (for
// those already there, a renewal: see DeviceApp.Generation).
func (db *DB) assign(ctx context.Context, tx *sql.Tx, v int64, fleetID, releaseID, app, where string, args ...any) (Assigned, error) {
	ids := func(s scanner) (string, error) {
		var id string
		return id, s.Scan(&id)
	}
	there, err := queryAll(ctx, tx, ids, `SELECT a.device_id FROM device_apps a JOIN devices ON devices.id = a.device_id
		WHERE a.fleet_id = $1 AND a.app = $2 AND a.release_id = $3 AND `+shiftParams(where, -1),
		append([]any{fleetID, app, releaseID}, args...)...)
	if err != nil {
		return Assigned{}, fmt.Errorf("devices on the release already: %w", err)
	}
	// The WHERE in the SELECT also keeps SQLite from reading ON CONFLICT
	// as a join's ON.
	q := `INSERT INTO device_apps (device_id, app, fleet_id, release_id, pinned, updated, generation)
		SELECT id, $2, $1, $3, FALSE, $4, $5 FROM devices WHERE fleet_id = $1 AND ` + shiftParams(where, 1) + `
		ON CONFLICT (device_id, app) DO UPDATE SET release_id = excluded.release_id, updated = excluded.updated, generation = excluded.generation
		WHERE device_apps.pinned = FALSE OR device_apps.release_id = excluded.release_id
		RETURNING device_id`
	written, err := queryAll(ctx, tx, ids, q, append([]any{fleetID, app, releaseID, micros(db.now()), v}, args...)...)
	if err != nil {
		return Assigned{}, fmt.Errorf("point devices at the release: %w", err)
	}
	slices.Sort(written)
	var out Assigned
	for _, id := range written {
		if slices.Contains(there, id) {
			out.Renewed = append(out.Renewed, id)
		} else {
			out.Changed = append(out.Changed, id)
		}
	}
	if len(written) > 0 {
		if err := db.setTarget(ctx, tx, v, db.dialect.inList("id", 2), jsonList(written)); err != nil {
			return Assigned{}, err
		}
	}
	return out, nil
}

// PinRelease implements Store.
func (db *DB) PinRelease(ctx context.Context, deviceID, releaseID string) error {
	err := db.inTx(ctx, func(tx *sql.Tx) error {
		v, err := db.nextTarget(ctx, tx)
		if err != nil {
			return err
		}
		var fleetID string
		if err := tx.QueryRowContext(ctx, "SELECT fleet_id FROM devices WHERE id = $1", deviceID).Scan(&fleetID); err != nil {
			return notFound(err, "device %s", deviceID)
		}
		// Only a release of the device's own fleet.
		app, err := releaseApp(ctx, tx, fleetID, releaseID)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO device_apps (device_id, app, fleet_id, release_id, pinned, updated, generation)
			VALUES ($1, $2, $3, $4, TRUE, $5, $6)
			ON CONFLICT (device_id, app) DO UPDATE SET release_id = excluded.release_id, pinned = TRUE, updated = excluded.updated, generation = excluded.generation`,
			deviceID, app, fleetID, releaseID, micros(db.now()), v)
		if err != nil {
			return err
		}
		return db.setTarget(ctx, tx, v, "id = $2", deviceID)
	})
	if err != nil {
		return fmt.Errorf("pin device %s to release %s: %w", deviceID, releaseID, err)
	}
	return nil
}

// UnpinApp implements Store.
func (db *DB) UnpinApp(ctx context.Context, deviceID, app string) error {
	res, err := db.w.ExecContext(ctx, "UPDATE device_apps SET pinned = FALSE WHERE device_id = $1 AND app = $2", deviceID, app)
	return mustAffect(res, err, "unpin app %s of device %s", app, deviceID)
}

// RenewApp implements Store.
func (db *DB) RenewApp(ctx context.Context, deviceID, app string) (int64, error) {
	var v int64
	err := db.inTx(ctx, func(tx *sql.Tx) error {
		var err error
		if v, err = db.nextTarget(ctx, tx); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, "UPDATE device_apps SET generation = $3, updated = $4 WHERE device_id = $1 AND app = $2", deviceID, app, v, micros(db.now()))
		if err := mustAffect(res, err, "renew app %s of device %s", app, deviceID); err != nil {
			return err
		}
		return db.setTarget(ctx, tx, v, "id = $2", deviceID)
	})
	if err != nil {
		return 0, err
	}
	return v, nil
}

// RemoveApp implements Store.
func (db *DB) RemoveApp(ctx context.Context, deviceID, app string) error {
	return db.inTx(ctx, func(tx *sql.Tx) error {
		v, err := db.nextTarget(ctx, tx)
		if err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, "DELETE FROM device_apps WHERE device_id = $1 AND app = $2", deviceID, app)
		if err := mustAffect(res, err, "remove app %s from device %s", app, deviceID); err != nil {
			return err
		}
		return db.setTarget(ctx, tx, v, "id = $2", deviceID)
	})
}

// DeviceRelease implements Store.
func (db *DB) DeviceRelease(ctx context.Context, deviceID, releaseID string) (Release, error) {
	r, err := scanRelease(db.r.QueryRowContext(ctx, "SELECT "+releaseColsOf("r")+` FROM releases r
		JOIN device_apps a ON a.fleet_id = r.fleet_id AND a.release_id = r.id
		WHERE a.device_id = $1 AND r.id = $2`, deviceID, releaseID))
	if err != nil {
		return Release{}, notFound(err, "release %s of device %s", releaseID, deviceID)
	}
	return r, nil
}

// TargetVersion implements Store.
func (db *DB) TargetVersion(ctx context.Context, deviceID string) (int64, error) {
	var v int64
	if err := db.r.QueryRowContext(ctx, "SELECT target_version FROM devices WHERE id = $1", deviceID).Scan(&v); err != nil {
		return 0, notFound(err, "target version of device %s", deviceID)
	}
	return v, nil
}

// LatestTargetVersion implements Store.
func (db *DB) LatestTargetVersion(ctx context.Context) (int64, error) {
	var v int64
	if err := db.r.QueryRowContext(ctx, "SELECT value FROM counters WHERE name = 'target'").Scan(&v); err != nil {
		return 0, fmt.Errorf("latest target version: %w", err)
	}
	return v, nil
}

// TargetChanges implements Store.
func (db *DB) TargetChanges(ctx context.Context, since int64, limit int) ([]TargetChange, error) {
	if limit <= 0 {
		limit = 1000
	}
	cs, err := queryAll(ctx, db.r, func(s scanner) (TargetChange, error) {
		var c TargetChange
		return c, s.Scan(&c.DeviceID, &c.Version)
	}, "SELECT id, target_version FROM devices WHERE target_version > $1 ORDER BY target_version, id LIMIT $2", since, limit)
	if err != nil {
		return nil, fmt.Errorf("target changes since %d: %w", since, err)
	}
	return cs, nil
}
