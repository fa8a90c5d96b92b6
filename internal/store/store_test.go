package store_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/pgtest"
	"github.com/berth-robotics/berth/internal/store"
	"github.com/berth-robotics/berth/internal/store/storetest"
	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
)

// pg is one PostgreSQL for the whole test binary; each test gets a database.
var pg pgtest.Cluster

func TestMain(m *testing.M) {
	code := m.Run()
	if err := pg.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "stop PostgreSQL:", err)
	}
	os.Exit(code)
}

var ctx = context.Background()

// backend opens stores of one kind; dsn returns a DSN and data directory for
// a new, empty database.
type backend struct {
	name string
	dsn  func(t testing.TB) (dsn, dir string)
}

func backends() []backend {
	return []backend{
		{"SQLite", func(t testing.TB) (string, string) { return "", t.TempDir() }},
		{"Postgres", func(t testing.TB) (string, string) { return pg.NewDatabase(t), "" }},
	}
}

func open(t *testing.T, dsn, dir string) *store.DB {
	t.Helper()
	db, err := store.Open(ctx, dsn, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// TestConformance runs the conformance suite against SQLite and PostgreSQL.
func TestConformance(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			if b.name == "Postgres" {
				pg.Require(t)
			}
			storetest.Run(t, func(t *testing.T, now func() time.Time) store.Store {
				dsn, dir := b.dsn(t)
				db, err := store.Open(ctx, dsn, dir)
				if err != nil {
					t.Fatal(err)
				}
				if got := db.Backend(); !strings.EqualFold(got, b.name) {
					t.Fatalf("backend %s, want %s", got, b.name)
				}
				db.Now = now
				return db
			})
		})
	}
}

func migrationFiles(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("migrations")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

func appliedMigrations(t *testing.T, db *store.DB) int {
	t.Helper()
	var n int
	if err := db.RawDB().QueryRowContext(ctx, "SELECT COUNT(*) FROM schema_migrations").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestConcurrentMigrations: replicas starting at once against one fresh
// database all come up, and the migrations are applied once.
func TestConcurrentMigrations(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			dsn, dir := b.dsn(t)
			const n = 4
			dbs := make([]*store.DB, n)
			errs := make([]error, n)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range n {
				wg.Go(func() {
					<-start
					dbs[i], errs[i] = store.Open(ctx, dsn, dir)
				})
			}
			close(start)
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Fatalf("replica %d: %v", i, err)
				}
				t.Cleanup(func() { dbs[i].Close() })
			}
			if got, want := appliedMigrations(t, dbs[0]), migrationFiles(t); got != want {
				t.Errorf("%d migrations recorded, want %d", got, want)
			}
			// Every replica works on the one schema.
			for i, db := range dbs {
				if _, err := db.CreateUser(ctx, fmt.Sprintf("u%d", i), store.RoleViewer); err != nil {
					t.Errorf("replica %d: %v", i, err)
				}
			}
			if us, _ := dbs[0].ListUsers(ctx); len(us) != n {
				t.Errorf("%d users, want %d", len(us), n)
			}
		})
	}
}

// TestReopen: what was stored is there after a restart, and the
// migrations are not applied again.
func TestReopen(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			dsn, dir := b.dsn(t)
			db, err := store.Open(ctx, dsn, dir)
			if err != nil {
				t.Fatal(err)
			}
			f, err := db.CreateFleet(ctx, "lab", store.NewSecret("bp"))
			if err != nil {
				t.Fatal(err)
			}
			e, err := db.AppendAudit(ctx, store.AuditEntry{Actor: "user:alice", Action: "fleet.create", Object: "fleet/lab"})
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			db = open(t, dsn, dir)
			got, err := db.FleetByName(ctx, "lab")
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(f, got); d != "" {
				t.Errorf("fleet after reopening (-want +got):\n%s", d)
			}
			// Audit IDs keep growing across restarts.
			e2, err := db.AppendAudit(ctx, store.AuditEntry{Actor: "user:alice", Action: "fleet.list"})
			if err != nil {
				t.Fatal(err)
			}
			if e2.ID <= e.ID {
				t.Errorf("audit ID %d after %d", e2.ID, e.ID)
			}
			if got, want := appliedMigrations(t, db), migrationFiles(t); got != want {
				t.Errorf("%d migrations recorded, want %d", got, want)
			}
		})
	}
}

// TestNewerSchema: a database migrated by a newer berth is refused, and
// left untouched.
func TestNewerSchema(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			dsn, dir := b.dsn(t)
			db, err := store.Open(ctx, dsn, dir)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := db.RawDB().ExecContext(ctx, "INSERT INTO schema_migrations (version, name, applied) VALUES (9999, '9999_future.sql', 0)"); err != nil {
				t.Fatal(err)
			}
			db.Close()
			db, err = store.Open(ctx, dsn, dir)
			if err == nil {
				db.Close()
				t.Fatal("opened a database from the future")
			}
			if !strings.Contains(err.Error(), "newer than this berth knows") {
				t.Errorf("error: %v", err)
			}
		})
	}
}

// TestSecretsStoredHashed: no secret reaches the database, only its SHA-256
// and a short prefix.
func TestSecretsStoredHashed(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			dsn, dir := b.dsn(t)
			db := open(t, dsn, dir)
			u, err := db.CreateUser(ctx, "alice", store.RoleAdmin)
			if err != nil {
				t.Fatal(err)
			}
			token, key, devToken := store.NewSecret("bt"), store.NewSecret("bp"), store.NewSecret("bd")
			if _, err := db.CreateToken(ctx, u.ID, "laptop", token, time.Time{}); err != nil {
				t.Fatal(err)
			}
			f, err := db.CreateFleet(ctx, "lab", key)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := db.CreateDevice(ctx, f.ID, "r1", devToken); err != nil {
				t.Fatal(err)
			}
			for _, q := range []struct {
				query  string
				secret string
			}{
				{"SELECT id, user_id, name, prefix, hash FROM tokens", token},
				{"SELECT id, name, key_prefix, key_hash FROM fleets", key},
				{"SELECT id, fleet_id, name, token_hash, notes FROM devices", devToken},
			} {
				var cols [5]string
				row := db.RawDB().QueryRowContext(ctx, q.query)
				dest := []any{&cols[0], &cols[1], &cols[2], &cols[3], &cols[4]}
				n := strings.Count(q.query, ",") + 1
				if err := row.Scan(dest[:n]...); err != nil {
					t.Fatal(err)
				}
				sum := sha256.Sum256([]byte(q.secret))
				hash := false
				for _, c := range cols[:n] {
					if strings.Contains(c, q.secret[4:]) {
						t.Errorf("%s: the secret is stored: %q", q.query, c)
					}
					hash = hash || c == hex.EncodeToString(sum[:])
				}
				if !hash {
					t.Errorf("%s: no column holds the SHA-256 of the secret: %q", q.query, cols[:n])
				}
			}
		})
	}
}

// TestNotify: on PostgreSQL a committed target change is announced on
// TargetsChannel with the new version; Notify sends on any channel.
func TestNotify(t *testing.T) {
	dsn := pg.NewDatabase(t)
	db := open(t, dsn, "")
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, ch := range []string{store.TargetsChannel, "berth_test"} {
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
			t.Fatal(err)
		}
	}
	next := func() (string, string) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		n, err := conn.WaitForNotification(wctx)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return n.Channel, n.Payload
	}

	f, err := db.CreateFleet(ctx, "lab", "")
	if err != nil {
		t.Fatal(err)
	}
	d, err := db.CreateDevice(ctx, f.ID, "r1", store.NewSecret("bd"))
	if err != nil {
		t.Fatal(err)
	}
	if ch, payload := next(); ch != store.TargetsChannel || payload != fmt.Sprint(d.TargetVersion) {
		t.Errorf("after registering: %s %q, want version %d", ch, payload, d.TargetVersion)
	}
	// A change that fails is rolled back, its notification with it.
	err = db.SetEnv(ctx, store.EnvLayer{FleetID: f.ID, DeviceID: "nobody", Vars: map[string]string{"A": "1"}})
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	if err := db.SetEnv(ctx, store.EnvLayer{FleetID: f.ID, Vars: map[string]string{"A": "1"}}); err != nil {
		t.Fatal(err)
	}
	v, err := db.TargetVersion(ctx, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	if ch, payload := next(); ch != store.TargetsChannel || payload != fmt.Sprint(v) {
		t.Errorf("after an env change: %s %q, want version %d", ch, payload, v)
	}
	if err := db.Notify(ctx, "berth_test", "hello"); err != nil {
		t.Fatal(err)
	}
	if ch, payload := next(); ch != "berth_test" || payload != "hello" {
		t.Errorf("Notify: %s %q", ch, payload)
	}
}

// TestSQLiteFile: the database is a file in the data directory that only
// its owner can read; "sqlite:PATH" names another.
func TestSQLiteFile(t *testing.T) {
	dir := t.TempDir()
	db := open(t, "", dir)
	if err := db.Notify(ctx, store.TargetsChannel, "1"); err != nil {
		t.Errorf("Notify on SQLite: %v", err)
	}
	fi, err := os.Stat(filepath.Join(dir, store.SQLiteFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	path := filepath.Join(t.TempDir(), "other.db")
	open(t, "sqlite:"+path, "")
	if _, err := os.Stat(path); err != nil {
		t.Error(err)
	}
}

func TestOpenRefuses(t *testing.T) {
	for _, tc := range []struct{ name, dsn, dir string }{
		{"NoDSNNoDir", "", ""},
		{"UnknownScheme", "mysql://root@localhost/berth", "/tmp"},
		{"QueryInPath", "sqlite:/tmp/a?b.db", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, err := store.Open(ctx, tc.dsn, tc.dir)
			if err == nil {
				db.Close()
			}
			if !errors.Is(err, store.ErrInvalid) {
				t.Errorf("got %v, want ErrInvalid", err)
			}
		})
	}
}

func TestMergeEnv(t *testing.T) {
	fleet := store.EnvLayer{Vars: map[string]string{"A": "fleet", "B": "fleet", "C": "fleet", "D": "fleet"}}
	svc := store.EnvLayer{Service: "nav", Vars: map[string]string{"B": "service", "C": "service", "D": "service"}}
	other := store.EnvLayer{Service: "arm", Vars: map[string]string{"A": "arm", "E": "arm"}}
	dev := store.EnvLayer{DeviceID: "d", Vars: map[string]string{"C": "device", "D": "device"}}
	devSvc := store.EnvLayer{DeviceID: "d", Service: "nav", Vars: map[string]string{"D": "device-service"}}
	for _, tc := range []struct {
		name    string
		layers  []store.EnvLayer
		service string
		want    map[string]string
	}{
		{"None", nil, "nav", map[string]string{}},
		{"FleetOnly", []store.EnvLayer{fleet}, "nav", fleet.Vars},
		{"AllInOrder", []store.EnvLayer{fleet, svc, dev, devSvc}, "nav",
			map[string]string{"A": "fleet", "B": "service", "C": "device", "D": "device-service"}},
		{"AllReversed", []store.EnvLayer{devSvc, dev, other, svc, fleet}, "nav",
			map[string]string{"A": "fleet", "B": "service", "C": "device", "D": "device-service"}},
		{"OtherService", []store.EnvLayer{devSvc, dev, other, svc, fleet}, "arm",
			map[string]string{"A": "arm", "B": "fleet", "C": "device", "D": "device", "E": "arm"}},
		{"DeviceBeatsService", []store.EnvLayer{dev, svc}, "nav",
			map[string]string{"B": "service", "C": "device", "D": "device"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if d := cmp.Diff(tc.want, store.MergeEnv(tc.layers, tc.service)); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
	// The layers are not changed.
	if fleet.Vars["A"] != "fleet" || len(fleet.Vars) != 4 {
		t.Errorf("MergeEnv changed its input: %v", fleet.Vars)
	}
}
