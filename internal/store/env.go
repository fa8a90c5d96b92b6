package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
)

// SetEnv implements Store.
func (db *DB) SetEnv(ctx context.Context, l EnvLayer) error {
	what := fmt.Sprintf("set environment of fleet %s (device %q, service %q)", l.FleetID, l.DeviceID, l.Service)
	for k, v := range l.Vars {
		if k == "" {
			return fmt.Errorf("%s: an empty variable name: %w", what, ErrInvalid)
		}
		if err := checkText(what, k, v); err != nil {
			return err
		}
	}
	vars, err := json.Marshal(l.Vars)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	err = db.inTx(ctx, func(tx *sql.Tx) error {
		v, err := db.nextTarget(ctx, tx)
		if err != nil {
			return err
		}
		if l.DeviceID != "" {
			var one int
			err := tx.QueryRowContext(ctx, "SELECT 1 FROM devices WHERE id = $1 AND fleet_id = $2", l.DeviceID, l.FleetID).Scan(&one)
			if err != nil {
				return notFound(err, "device %s in the fleet", l.DeviceID)
			}
		}
		if len(l.Vars) == 0 {
			_, err = tx.ExecContext(ctx, "DELETE FROM env_layers WHERE fleet_id = $1 AND device_id = $2 AND service = $3",
				l.FleetID, l.DeviceID, l.Service)
		} else {
			_, err = tx.ExecContext(ctx, `INSERT INTO env_layers (fleet_id, device_id, service, vars, updated) VALUES ($1, $2, $3, $4, $5)
				ON CONFLICT (fleet_id, device_id, service) DO UPDATE SET vars = excluded.vars, updated = excluded.updated`,
				l.FleetID, l.DeviceID, l.Service, string(vars), micros(db.now()))
		}
		if isForeignKey(err) {
			return fmt.Errorf("no such fleet: %w", ErrNotFound)
		}
		if err != nil {
			return err
		}
		if l.DeviceID != "" {
			return db.setTarget(ctx, tx, v, "id = $2", l.DeviceID)
		}
		return db.setTarget(ctx, tx, v, "fleet_id = $2", l.FleetID)
	})
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// EnvLayers implements Store.
func (db *DB) EnvLayers(ctx context.Context, fleetID, deviceID string) ([]EnvLayer, error) {
	ls, err := queryAll(ctx, db.r, func(s scanner) (EnvLayer, error) {
		l := EnvLayer{FleetID: fleetID}
		var vars string
		var updated int64
		if err := s.Scan(&l.DeviceID, &l.Service, &vars, &updated); err != nil {
			return EnvLayer{}, err
		}
		l.Updated = fromMicros(updated)
		return l, json.Unmarshal([]byte(vars), &l.Vars)
	}, `SELECT device_id, service, vars, updated FROM env_layers
		WHERE fleet_id = $1 AND device_id IN ('', $2) ORDER BY device_id, service`, fleetID, deviceID)
	if err != nil {
		return nil, fmt.Errorf("environment of fleet %s, device %q: %w", fleetID, deviceID, err)
	}
	return ls, nil
}

// MergeEnv computes the environment of one service of one device from the
// layers that reach it (as EnvLayers returns them), in any order: fleet,
// then service, then device, then device-service, the later winning. Layers
// for other services are ignored.
func MergeEnv(layers []EnvLayer, service string) map[string]string {
	rank := func(l EnvLayer) int {
		r := 0
		if l.DeviceID != "" {
			r += 2
		}
		if l.Service != "" {
			r++
		}
		return r
	}
	ls := slices.Clone(layers)
	slices.SortStableFunc(ls, func(a, b EnvLayer) int { return rank(a) - rank(b) })
	env := map[string]string{}
	for _, l := range ls {
		if l.Service == "" || l.Service == service {
			maps.Copy(env, l.Vars)
		}
	}
	return env
}
