package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
)

const rolloutCols = "id, fleet_id, release_id, app, params, status, created_by, created, updated"

func scanRollout(s scanner) (Rollout, error) {
	var r Rollout
	var params string
	var created, updated int64
	if err := s.Scan(&r.ID, &r.FleetID, &r.ReleaseID, &r.App, &params, &r.Status, &r.CreatedBy, &created, &updated); err != nil {
		return Rollout{}, err
	}
	r.Params = json.RawMessage(params)
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
	r.ID = newID()
	r.Created = db.now()
	r.Updated = r.Created
	err := db.inTx(ctx, func(tx *sql.Tx) error {
		app, err := releaseApp(ctx, tx, r.FleetID, r.ReleaseID)
		if err != nil {
			return err
		}
		r.App = app
		_, err = tx.ExecContext(ctx, "INSERT INTO rollouts ("+rolloutCols+") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
			r.ID, r.FleetID, r.ReleaseID, r.App, string(r.Params), string(r.Status), r.CreatedBy, micros(r.Created), micros(r.Updated))
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
	if !to.Valid() {
		return Rollout{}, fmt.Errorf("set status of rollout %s: status %q: %w", id, to, ErrInvalid)
	}
	r, err := scanRollout(db.w.QueryRowContext(ctx, "UPDATE rollouts SET status = $3, updated = $4 WHERE id = $1 AND status = $2 RETURNING "+rolloutCols,
		id, string(from), string(to), micros(db.now())))
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
		err := s.Scan(&d.DeviceID, &d.Stage, &d.PreviousRelease, &d.Status, &d.Detail, &updated)
		d.Updated = fromMicros(updated)
		return d, err
	}, `SELECT device_id, stage, previous_release, status, detail, updated FROM rollout_devices
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
