package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"
)

// AppendAudit implements Store. A zero Time is now.
func (db *DB) AppendAudit(ctx context.Context, e AuditEntry) (AuditEntry, error) {
	if e.Actor == "" || e.Action == "" {
		return AuditEntry{}, fmt.Errorf("audit: actor and action are required: %w", ErrInvalid)
	}
	if err := checkText("audit", e.Actor, e.Action, e.Object); err != nil {
		return AuditEntry{}, err
	}
	if len(e.Details) > 0 && !validJSON(e.Details) {
		return AuditEntry{}, fmt.Errorf("audit %s: details are not JSON: %w", e.Action, ErrInvalid)
	}
	if e.Time.IsZero() {
		e.Time = db.now()
	}
	e.Time = e.Time.UTC().Truncate(time.Microsecond)
	err := db.w.QueryRowContext(ctx, "INSERT INTO audit (created, actor, action, object, details) VALUES ($1, $2, $3, $4, $5) RETURNING id",
		micros(e.Time), e.Actor, e.Action, e.Object, nullText(e.Details)).Scan(&e.ID)
	if err != nil {
		return AuditEntry{}, fmt.Errorf("audit %s: %w", e.Action, err)
	}
	return e, nil
}

// ListAudit implements Store.
func (db *DB) ListAudit(ctx context.Context, f AuditFilter) ([]AuditEntry, error) {
	q := "SELECT id, created, actor, action, object, details FROM audit WHERE 1 = 1"
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		q += fmt.Sprintf(" AND "+cond, len(args))
	}
	if f.Actor != "" {
		add("actor = $%d", f.Actor)
	}
	if f.Action != "" {
		add("action = $%d", f.Action)
	}
	if f.Object != "" {
		add("object = $%d", f.Object)
	}
	if !f.Since.IsZero() {
		add("created >= $%d", micros(f.Since))
	}
	if !f.Until.IsZero() {
		add("created < $%d", micros(f.Until))
	}
	if f.Before > 0 {
		add("id < $%d", f.Before)
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	args = append(args, limit)
	q += fmt.Sprintf(" ORDER BY id DESC LIMIT $%d", len(args))
	es, err := queryAll(ctx, db.r, func(s scanner) (AuditEntry, error) {
		var e AuditEntry
		var created int64
		var details sql.NullString
		if err := s.Scan(&e.ID, &created, &e.Actor, &e.Action, &e.Object, &details); err != nil {
			return AuditEntry{}, err
		}
		e.Time = fromMicros(created)
		if details.Valid {
			e.Details = json.RawMessage(details.String)
		}
		return e, nil
	}, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list audit: %w", err)
	}
	return es, nil
}
