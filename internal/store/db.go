package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// DB is the Store on SQLite or PostgreSQL. Open returns one.
type DB struct {
	// Now is the clock the store stamps times with; set it, if at all,
	// before the first call. Times are kept to the microsecond.
	Now func() time.Time

	dialect dialect
	r       *pool // reads outside transactions
	w       *pool // writes; on SQLite a single connection
}

var _ Store = (*DB)(nil)

func newDB(d dialect, r, w *pool) *DB {
	return &DB{Now: time.Now, dialect: d, r: r, w: w}
}

// Backend names the database: "sqlite" or "postgres".
func (db *DB) Backend() string { return db.dialect.String() }

// Close implements Store.
func (db *DB) Close() error {
	err := db.w.Close()
	if db.r != db.w {
		err = errors.Join(err, db.r.Close())
	}
	return err
}

// querier is what *sql.DB and *sql.Tx share.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// scanner is what *sql.Row and *sql.Rows share.
type scanner interface {
	Scan(dest ...any) error
}

// inTx runs fn in a write transaction and commits if fn returns nil.
func (db *DB) inTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

var param = regexp.MustCompile(`\$[0-9]+`)

// shiftParams renumbers a query's $N parameters by d: a condition written
// for arguments from $2 on, shifted by -1, takes them from $1 on.
func shiftParams(query string, d int) string {
	return param.ReplaceAllStringFunc(query, func(p string) string {
		n, _ := strconv.Atoi(p[1:])
		return "$" + strconv.Itoa(n+d)
	})
}

// inTxRetry is inTx for transactions that write many rows at once, and may
// run fn again (up to three times) if PostgreSQL broke a deadlock by
// aborting it: fn must start from nothing each time.
func (db *DB) inTxRetry(ctx context.Context, fn func(tx *sql.Tx) error) error {
	for try := 1; ; try++ {
		err := db.inTx(ctx, fn)
		if err == nil || try == 3 || !isRetryable(err) || ctx.Err() != nil {
			return err
		}
	}
}

// now is the store's clock, in UTC, to the microsecond.
func (db *DB) now() time.Time {
	return db.Now().UTC().Truncate(time.Microsecond)
}

func micros(t time.Time) int64 { return t.UnixMicro() }

// nullMicros stores the zero time as NULL.
func nullMicros(t time.Time) sql.NullInt64 {
	if t.IsZero() {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: t.UnixMicro(), Valid: true}
}

func fromMicros(v int64) time.Time { return time.UnixMicro(v).UTC() }

func fromNullMicros(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return fromMicros(v.Int64)
}

// nullText stores "" as NULL.
func nullText(s []byte) sql.NullString {
	return sql.NullString{String: string(s), Valid: len(s) > 0}
}

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// newID returns a random, opaque ID: 80 bits, 16 characters.
func newID() string {
	var b [10]byte
	rand.Read(b[:])
	return idEncoding.EncodeToString(b[:])
}

// NewSecret returns a new random secret for an API token, a device token or
// a provisioning key: kind, an underscore, then 160 random bits in 32
// characters ("bt_…"). The store keeps only its hash and first characters.
func NewSecret(kind string) string {
	var b [20]byte
	rand.Read(b[:])
	return kind + "_" + idEncoding.EncodeToString(b[:])
}

// secretPrefix is what is kept of a secret to recognize it by: the kind and
// six more characters, too few to guess the rest from.
func secretPrefix(secret string) string {
	_, rest, ok := strings.Cut(secret, "_")
	n := len(secret) - len(rest) + 6
	if !ok || len(secret) < n+16 {
		// Not NewSecret's shape: keep a quarter at most.
		n = min(len(secret)/4, 8)
	}
	return secret[:n]
}

// hashSecret is the hex SHA-256 under which a secret is stored.
func hashSecret(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// checkText refuses text that PostgreSQL cannot store (invalid UTF-8, NUL
// bytes), on SQLite too, so that both take the same inputs.
func checkText(what string, ss ...string) error {
	for _, s := range ss {
		if !utf8.ValidString(s) || strings.ContainsRune(s, 0) {
			return fmt.Errorf("%s: %q: not UTF-8 text: %w", what, s, ErrInvalid)
		}
	}
	return nil
}

// validJSON reports whether b is JSON both databases can store.
func validJSON(b []byte) bool {
	return json.Valid(b) && utf8.Valid(b) && !bytes.Contains(b, []byte{0})
}

// checkSecret refuses secrets too short to be secret.
func checkSecret(what, secret string) error {
	if len(secret) < 16 {
		return fmt.Errorf("%s: shorter than 16 characters: %w", what, ErrInvalid)
	}
	return nil
}

// notFound wraps sql.ErrNoRows as ErrNotFound; so too a key PostgreSQL
// refused as text (it could match nothing).
func notFound(err error, format string, args ...any) error {
	what := fmt.Sprintf(format, args...)
	if errors.Is(err, sql.ErrNoRows) || isBadText(err) {
		return fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// mustAffect turns "no row changed" into ErrNotFound.
func mustAffect(res sql.Result, err error, format string, args ...any) error {
	if isBadText(err) {
		return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), err)
	}
	if n == 0 {
		return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrNotFound)
	}
	return nil
}

// placeholders returns "$from, $from+1, …" for n arguments.
func placeholders(from, n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "$%d", from+i)
	}
	return b.String()
}

// queryAll runs a query and scans every row with scan.
func queryAll[T any](ctx context.Context, q querier, scan func(scanner) (T, error), query string, args ...any) ([]T, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
