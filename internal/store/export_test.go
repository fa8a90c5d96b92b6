package store

import "database/sql"

// RawDB is the database behind db, for tests that look at rows directly.
func (db *DB) RawDB() *sql.DB { return db.w.DB }
