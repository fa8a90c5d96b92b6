package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
)

const rolloutCols = "id, fleet_id, release_id, app, params, status, created_by, created, updated, stage, state"

func scanRollout(s scanner) (Rollout, error) {
	var r Rollout
	var params, state string
	var created, updated int64
	if err := s.Scan(&r.ID, &r.FleetID, &r.ReleaseID, &r.App, &params, &r.Status, &r.CreatedBy, &created, &updated, &r.Stage, &state); err != nil {
		return Rollout{}, err
	}
	r.Params = json.RawMessage(params)
	r.State = json.RawMessage(state)
	r.Created = fromMicros(created)
	r.Updated = fromMicros(updated)
	return r, nil
}

// CreateRollout implements Store.
func (db *DB) CreateRollout(ctx context.Context, r Rollout, devices []RolloutDevice) (Rollout, error) {
	if len(r.Params) == 0 {
		r.Params = json.RawMessage("{}")
	}
	if !validJSON(r.Params) {
		return Rollout{}, fmt.Errorf("create rollout of release %s: params are not JSON: %w", r.ReleaseID, ErrInvalid)
	}
	if err := checkText("create rollout", r.CreatedBy); err != nil {
		return Rollout{}, err
	}
	if r.Status == "" {
		r.Status = RolloutRunning
	}
	if r.Status != RolloutRunning && r.Status != RolloutPaused {
		return Rollout{}, fmt.Errorf("create rollout of release %s: status %q: want running or paused: %w", r.ReleaseID, r.Status, ErrInvalid)
	}
	if len(r.State) == 0 {
		r.State = json.RawMessage("{}")
	}
	if !validJSON(r.State) {
		return Rollout{}, fmt.Errorf("create rollout of release %s: state is not JSON: %w", r.ReleaseID, ErrInvalid)
	}
	r.ID = newID()
	r.Stage = 0
	r.Created = db.now()
	r.Updated = r.Created
	err := db.inTxRetry(ctx, func(tx *sql.Tx) error {
		app, err := releaseApp(ctx, tx, r.FleetID, r.ReleaseID)
		if err != nil {
			return err
		}
		r.App = app
		_, err = tx.ExecContext(ctx, "INSERT INTO rollouts ("+rolloutCols+") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
			r.ID, r.FleetID, r.ReleaseID, r.App, string(r.Params), string(r.Status), r.CreatedBy, micros(r.Created), micros(r.Updated), r.Stage, string(r.State))
		if isUnique(err) {
			return fmt.Errorf("a rollout of app %s is already running or paused in the fleet: %w", app, ErrConflict)
		}
		if err != nil {
			return err
		}
		for _, d := range devices {
			var fleetID string
			if err := tx.QueryRowContext(ctx, "SELECT fleet_id FROM devices WHERE id = $1", d.DeviceID).Scan(&fleetID); err != nil || fleetID != r.FleetID {
				return fmt.Errorf("device %s: not in the fleet: %w", d.DeviceID, ErrNotFound)
			}
			if d.Status == "" {
				d.Status = "pending"
			}
			if err := checkText("device "+d.DeviceID, d.Status, d.Detail, d.PreviousRelease); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO rollout_devices (rollout_id, device_id, stage, previous_release, status, detail, updated)
				VALUES ($1, $2, $3, $4, $5, $6, $7)`,
				r.ID, d.DeviceID, d.Stage, d.PreviousRelease, d.Status, d.Detail, micros(r.Created))
			if isUnique(err) {
				return fmt.Errorf("device %s is listed twice: %w", d.DeviceID, ErrInvalid)
			}
			if err != nil {
				return fmt.Errorf("device %s: %w", d.DeviceID, err)
			}
		}
		return nil
	})
	if err != nil {
		return Rollout{}, fmt.Errorf("create rollout of release %s in fleet %s: %w", r.ReleaseID, r.FleetID, err)
	}
	return r, nil
}

// Rollout implements Store.
func (db *DB) Rollout(ctx context.Context, id string) (Rollout, error) {
	r, err := scanRollout(db.r.QueryRowContext(ctx, "SELECT "+rolloutCols+" FROM rollouts WHERE id = $1", id))
	if err != nil {
		return Rollout{}, notFound(err, "rollout %s", id)
	}
	return r, nil
}

// ListRollouts implements Store.
func (db *DB) ListRollouts(ctx context.Context, fleetID string) ([]Rollout, error) {
	rs, err := queryAll(ctx, db.r, scanRollout, "SELECT "+rolloutCols+" FROM rollouts WHERE fleet_id = $1 ORDER BY created DESC, id", fleetID)
	if err != nil {
		return nil, fmt.Errorf("list rollouts of fleet %s: %w", fleetID, err)
	}
	return rs, nil
}

// SetRolloutStatus implements Store.
func (db *DB) SetRolloutStatus(ctx context.Context, id string, from, to RolloutStatus) (Rollout, error) {
	return db.UpdateRollout(ctx, id, from, to, nil)
}

// UpdateRollout implements Store.
func (db *DB) UpdateRollout(ctx context.Context, id string, from, to RolloutStatus, state json.RawMessage) (Rollout, error) {
	if !to.Valid() {
		return Rollout{}, fmt.Errorf("set status of rollout %s: status %q: %w", id, to, ErrInvalid)
	}
	q, args := "UPDATE rollouts SET status = $3, updated = $4 WHERE id = $1 AND status = $2 RETURNING "+rolloutCols,
		[]any{id, string(from), string(to), micros(db.now())}
	if state != nil {
		if !validJSON(state) {
			return Rollout{}, fmt.Errorf("set state of rollout %s: not JSON: %w", id, ErrInvalid)
		}
		q = "UPDATE rollouts SET status = $3, updated = $4, state = $5 WHERE id = $1 AND status = $2 RETURNING " + rolloutCols
		args = append(args, string(state))
	}
	r, err := scanRollout(db.w.QueryRowContext(ctx, q, args...))
	if isUnique(err) {
		return Rollout{}, fmt.Errorf("set status of rollout %s to %s: another rollout of the app is active: %w", id, to, ErrConflict)
	}
	if errors.Is(err, sql.ErrNoRows) {
		cur, err := db.Rollout(ctx, id)
		if err != nil {
			return Rollout{}, fmt.Errorf("set status: %w", err)
		}
		return Rollout{}, fmt.Errorf("set status of rollout %s to %s: it is %s, not %s: %w", id, to, cur.Status, from, ErrConflict)
	}
	if err != nil {
		return Rollout{}, fmt.Errorf("set status of rollout %s: %w", id, err)
	}
	return r, nil
}

// RolloutDevices implements Store.
func (db *DB) RolloutDevices(ctx context.Context, rolloutID string) ([]RolloutDevice, error) {
	ds, err := queryAll(ctx, db.r, func(s scanner) (RolloutDevice, error) {
		d := RolloutDevice{RolloutID: rolloutID}
		var updated int64
		err := s.Scan(&d.DeviceID, &d.Stage, &d.PreviousRelease, &d.Status, &d.Detail, &updated, &d.StateVersion, &d.Generation)
		d.Updated = fromMicros(updated)
		return d, err
	}, `SELECT device_id, stage, previous_release, status, detail, updated, state_version, generation FROM rollout_devices
		WHERE rollout_id = $1 ORDER BY stage, device_id`, rolloutID)
	if err != nil {
		return nil, fmt.Errorf("devices of rollout %s: %w", rolloutID, err)
	}
	return ds, nil
}

// UpdateRolloutDevice implements Store.
func (db *DB) UpdateRolloutDevice(ctx context.Context, d RolloutDevice) error {
	if err := checkText("update rollout device", d.Status, d.Detail); err != nil {
		return err
	}
	res, err := db.w.ExecContext(ctx, "UPDATE rollout_devices SET status = $3, detail = $4, updated = $5 WHERE rollout_id = $1 AND device_id = $2",
		d.RolloutID, d.DeviceID, d.Status, d.Detail, micros(db.now()))
	return mustAffect(res, err, "update device %s of rollout %s", d.DeviceID, d.RolloutID)
}

// ActiveRollouts implements Store.
func (db *DB) ActiveRollouts(ctx context.Context) ([]Rollout, error) {
	rs, err := queryAll(ctx, db.r, scanRollout, "SELECT "+rolloutCols+" FROM rollouts WHERE status IN ('running', 'paused') ORDER BY created, id")
	if err != nil {
		return nil, fmt.Errorf("active rollouts: %w", err)
	}
	return rs, nil
}

// SetRolloutDevice implements Store.
func (db *DB) SetRolloutDevice(ctx context.Context, d RolloutDevice, from string) error {
	if err := checkText("set rollout device", d.Status, d.Detail, from); err != nil {
		return err
	}
	res, err := db.w.ExecContext(ctx, `UPDATE rollout_devices SET status = $4, detail = $5, updated = $6
		WHERE rollout_id = $1 AND device_id = $2 AND status = $3`,
		d.RolloutID, d.DeviceID, from, d.Status, d.Detail, micros(db.now()))
	err = mustAffect(res, err, "set device %s of rollout %s to %s", d.DeviceID, d.RolloutID, d.Status)
	if !errors.Is(err, ErrNotFound) {
		return err
	}
	var cur string
	if db.r.QueryRowContext(ctx, "SELECT status FROM rollout_devices WHERE rollout_id = $1 AND device_id = $2", d.RolloutID, d.DeviceID).Scan(&cur) != nil {
		return err
	}
	return fmt.Errorf("set device %s of rollout %s to %s: it is %s, not %s: %w", d.DeviceID, d.RolloutID, d.Status, cur, from, ErrConflict)
}

// MoveRolloutStage implements Store.
func (db *DB) MoveRolloutStage(ctx context.Context, rolloutID string, stage int) ([]RolloutDevice, error) {
	var moved []RolloutDevice
	err := db.inTx(ctx, func(tx *sql.Tx) error {
		moved = nil
		v, err := db.nextTarget(ctx, tx)
		if err != nil {
			return err
		}
		now := db.now()
		// The update locks the rollout's row until the transaction ends:
		// a pause or an abort either comes before it (and nothing moves)
		// or waits for it (and sees every device it moved).
		var fleetID, releaseID, app string
		err = tx.QueryRowContext(ctx, `UPDATE rollouts SET stage = $2, updated = CASE WHEN stage = $2 THEN updated ELSE $4 END
			WHERE id = $1 AND status = 'running' AND (stage = $2 OR stage = $3)
			RETURNING fleet_id, release_id, app`, rolloutID, stage, stage-1, micros(now)).Scan(&fleetID, &releaseID, &app)
		if errors.Is(err, sql.ErrNoRows) {
			var status RolloutStatus
			var cur int
			if err := tx.QueryRowContext(ctx, "SELECT status, stage FROM rollouts WHERE id = $1", rolloutID).Scan(&status, &cur); err != nil {
				return notFound(err, "rollout %s", rolloutID)
			}
			return fmt.Errorf("rollout %s is %s at stage %d: %w", rolloutID, status, cur, ErrConflict)
		}
		if err != nil {
			return err
		}
		ids, err := queryAll(ctx, tx, func(s scanner) (string, error) {
			var id string
			return id, s.Scan(&id)
		}, "SELECT device_id FROM rollout_devices WHERE rollout_id = $1 AND stage = $2 AND status = $3 ORDER BY device_id",
			rolloutID, stage, RolloutDevicePending)
		if err != nil {
			return err
		}
		var changed []string
		for _, id := range ids {
			d := RolloutDevice{RolloutID: rolloutID, DeviceID: id, Stage: stage, Status: RolloutDeviceUpdating, Updated: now}
			var pinned bool
			err := tx.QueryRowContext(ctx, "SELECT release_id, pinned FROM device_apps WHERE device_id = $1 AND app = $2", id, app).Scan(&d.PreviousRelease, &pinned)
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("device %s: %w", id, err)
			}
			if err := tx.QueryRowContext(ctx, "SELECT state_version FROM devices WHERE id = $1", id).Scan(&d.StateVersion); err != nil {
				return fmt.Errorf("device %s: %w", id, err)
			}
			if pinned && d.PreviousRelease != releaseID {
				d.Status, d.Detail = RolloutDeviceSkipped, "pinned to "+d.PreviousRelease
			} else {
				// Moved, or renewed where it had the release already
				// (a LAN override ends, a failure is tried again): a
				// new generation either way.
				d.Generation = v
				_, err := tx.ExecContext(ctx, `INSERT INTO device_apps (device_id, app, fleet_id, release_id, pinned, updated, generation)
					VALUES ($1, $2, $3, $4, FALSE, $5, $6)
					ON CONFLICT (device_id, app) DO UPDATE SET release_id = excluded.release_id, updated = excluded.updated, generation = excluded.generation`,
					id, app, fleetID, releaseID, micros(now), v)
				if err != nil {
					return fmt.Errorf("device %s: %w", id, err)
				}
				changed = append(changed, id)
			}
			_, err = tx.ExecContext(ctx, `UPDATE rollout_devices SET status = $3, detail = $4, previous_release = $5, state_version = $6, updated = $7, generation = $9
				WHERE rollout_id = $1 AND device_id = $2 AND status = $8`,
				rolloutID, id, d.Status, d.Detail, d.PreviousRelease, d.StateVersion, micros(now), RolloutDevicePending, d.Generation)
			if err != nil {
				return fmt.Errorf("device %s: %w", id, err)
			}
			moved = append(moved, d)
		}
		if len(changed) == 0 {
			return nil
		}
		return db.setTarget(ctx, tx, v, db.dialect.inList("id", 2), jsonList(changed))
	})
	if err != nil {
		return nil, fmt.Errorf("move stage %d of rollout %s: %w", stage, rolloutID, err)
	}
	return moved, nil
}
