package store

import (
	"context"
	"database/sql"
	"errors"
	"sync"
)

// pool is a connection pool whose queries outside transactions can run as
// prepared statements kept for reuse. SQLite (modernc) otherwise parses and
// plans every statement on every call — a quarter of the server's CPU with
// 10,000 devices polling (BENCHMARKS.md, "Fleet server"). PostgreSQL's
// driver (pgx) keeps its own statement cache per connection, so there the
// pool passes queries through.
type pool struct {
	*sql.DB
	prepare bool

	mu    sync.Mutex
	stmts map[string]*sql.Stmt
}

// maxStmts bounds the cache: queries with generated IN lists vary in
// shape, and past this many the rest run unprepared.
const maxStmts = 256

func newPool(db *sql.DB, prepare bool) *pool {
	return &pool{DB: db, prepare: prepare, stmts: map[string]*sql.Stmt{}}
}

// stmt returns the prepared statement for query, preparing it the first
// time; nil when it is not to be kept (then the caller runs the query
// plainly, and any error in it shows there).
func (p *pool) stmt(ctx context.Context, query string) *sql.Stmt {
	if !p.prepare {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if s, ok := p.stmts[query]; ok {
		return s
	}
	if len(p.stmts) >= maxStmts {
		return nil
	}
	s, err := p.DB.PrepareContext(ctx, query)
	if err != nil {
		return nil
	}
	p.stmts[query] = s
	return s
}

func (p *pool) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if s := p.stmt(ctx, query); s != nil {
		return s.ExecContext(ctx, args...)
	}
	return p.DB.ExecContext(ctx, query, args...)
}

func (p *pool) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if s := p.stmt(ctx, query); s != nil {
		return s.QueryContext(ctx, args...)
	}
	return p.DB.QueryContext(ctx, query, args...)
}

func (p *pool) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if s := p.stmt(ctx, query); s != nil {
		return s.QueryRowContext(ctx, args...)
	}
	return p.DB.QueryRowContext(ctx, query, args...)
}

// Close closes the kept statements, then the pool.
func (p *pool) Close() error {
	p.mu.Lock()
	var errs []error
	for q, s := range p.stmts {
		errs = append(errs, s.Close())
		delete(p.stmts, q)
	}
	p.mu.Unlock()
	return errors.Join(append(errs, p.DB.Close())...)
}
