package store

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"time"
)

// AppendLogs implements Store.
func (db *DB) AppendLogs(ctx context.Context, deviceID string, lines []LogLine, keep int) error {
	for _, l := range lines {
		if err := checkText("log line", l.App, l.Service, l.Container, l.Stream, l.Text); err != nil {
			return err
		}
	}
	err := db.inTx(ctx, func(tx *sql.Tx) error {
		for _, l := range lines {
			if _, err := tx.ExecContext(ctx, "INSERT INTO device_logs (device_id, app, service, container, logged, stream, text) VALUES ($1, $2, $3, $4, $5, $6, $7)",
				deviceID, l.App, l.Service, l.Container, micros(l.Time), l.Stream, l.Text); err != nil {
				return err
			}
		}
		if keep > 0 {
			// The id of the newest line beyond keep, if any: it and
			// everything older go.
			if _, err := tx.ExecContext(ctx, `DELETE FROM device_logs WHERE device_id = $1 AND id <= (
				SELECT id FROM device_logs WHERE device_id = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)`, deviceID, keep); err != nil {
				return err
			}
		}
		return db.notify(ctx, tx, LogsChannel, deviceID)
	})
	if err != nil {
		return notFound(err, "append logs of device %s", deviceID)
	}
	return nil
}

// Logs implements Store.
func (db *DB) Logs(ctx context.Context, f LogFilter) ([]LogLine, error) {
	q := "SELECT id, app, service, container, logged, stream, text FROM device_logs WHERE device_id = $1"
	args := []any{f.DeviceID}
	add := func(cond string, v any) {
		args = append(args, v)
		q += fmt.Sprintf(" AND "+cond, len(args))
	}
	if f.App != "" {
		add("app = $%d", f.App)
	}
	if f.Service != "" {
		add("service = $%d", f.Service)
	}
	if f.Stream != "" {
		add("stream = $%d", f.Stream)
	}
	if !f.Since.IsZero() {
		add("logged >= $%d", micros(f.Since))
	}
	if f.After != 0 {
		add("id > $%d", f.After)
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 1000
	}
	args = append(args, limit)
	order := "DESC" // the newest limit lines, unless reading on after a line
	if f.After != 0 {
		order = "ASC"
	}
	q += fmt.Sprintf(" ORDER BY id %s LIMIT $%d", order, len(args))
	ls, err := queryAll(ctx, db.r, func(s scanner) (LogLine, error) {
		var l LogLine
		var t int64
		if err := s.Scan(&l.ID, &l.App, &l.Service, &l.Container, &t, &l.Stream, &l.Text); err != nil {
			return LogLine{}, err
		}
		l.Time = fromMicros(t)
		return l, nil
	}, q, args...)
	if err != nil {
		return nil, fmt.Errorf("logs of device %s: %w", f.DeviceID, err)
	}
	if order == "DESC" {
		slices.Reverse(ls)
	}
	return ls, nil
}

// LogLine is one line of a container's log, as a device shipped it. ID
// grows with every line stored.
type LogLine struct {
	ID        int64
	App       string
	Service   string
	Container string
	Time      time.Time
	Stream    string // stdout, stderr, or berth for the agent's own notes
	Text      string
}

// LogFilter selects a device's log lines for Logs. Empty fields select all.
type LogFilter struct {
	DeviceID string
	App      string
	Service  string
	Stream   string    // only this stream's lines
	Since    time.Time // lines logged at or after
	After    int64     // if not 0, lines stored after this ID, oldest first (-1: from the first)
	Limit    int       // at most; default 1000
}
