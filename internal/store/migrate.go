package store

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
)

// The schema is the migrations in migrations/, applied in order of their
// number (NNNN_what.sql) and recorded in schema_migrations. A migration is
// never edited once released: a change is a new file. The text is SQL both
// databases run, except {{autoid}}, which stands for an auto-increment
// primary key (dialect.autoID).
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

type migration struct {
	version int64
	name    string
	sql     string
}

// migrations reads the embedded files, rewritten for d.
func (d dialect) migrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.ParseInt(num, 10, 64)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: want NNNN_what.sql", e.Name())
		}
		text, err := fs.ReadFile(migrationFiles, path.Join("migrations", e.Name()))
		if err != nil {
			return nil, err
		}
		s := strings.ReplaceAll(string(text), "{{autoid}}", d.autoID())
		if strings.Contains(s, "{{") {
			return nil, fmt.Errorf("migration %s: unknown {{…}} placeholder", e.Name())
		}
		ms = append(ms, migration{version: v, name: e.Name(), sql: s})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i := 1; i < len(ms); i++ {
		if ms[i].version == ms[i-1].version {
			return nil, fmt.Errorf("migrations %s and %s share a number", ms[i-1].name, ms[i].name)
		}
	}
	return ms, nil
}

// migrate applies the migrations the database lacks, all in one
// transaction: on failure nothing is applied. On PostgreSQL, replicas
// starting together queue on an advisory lock held until the transaction
// ends; the first applies, the others find nothing left to do. On SQLite
// the transaction's write lock (BEGIN IMMEDIATE) does the same.
func (db *DB) migrate(ctx context.Context) error {
	ms, err := db.dialect.migrations()
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	err = db.inTx(ctx, func(tx *sql.Tx) error {
		if db.dialect == dialectPostgres {
			if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLockKey); err != nil {
				return fmt.Errorf("take the migration lock: %w", err)
			}
		}
		if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
			version BIGINT PRIMARY KEY,
			name    TEXT NOT NULL,
			applied BIGINT NOT NULL
		)`); err != nil {
			return err
		}
		applied := map[int64]bool{}
		var newest int64
		rows, err := tx.QueryContext(ctx, "SELECT version FROM schema_migrations")
		if err != nil {
			return err
		}
		for rows.Next() {
			var v int64
			if err := rows.Scan(&v); err != nil {
				rows.Close()
				return err
			}
			applied[v] = true
			newest = max(newest, v)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if known := ms[len(ms)-1].version; newest > known {
			return fmt.Errorf("the database is at schema version %d, newer than this berth knows (%d); nothing was changed: run a berth at least as new as the one that migrated it", newest, known)
		}
		for _, m := range ms {
			if applied[m.version] {
				continue
			}
			if _, err := tx.ExecContext(ctx, m.sql); err != nil {
				return fmt.Errorf("%s: %w", m.name, err)
			}
			if _, err := tx.ExecContext(ctx, "INSERT INTO schema_migrations (version, name, applied) VALUES ($1, $2, $3)",
				m.version, m.name, micros(db.now())); err != nil {
				return fmt.Errorf("%s: record: %w", m.name, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("migrate %s store: %w", db.dialect, err)
	}
	return nil
}
