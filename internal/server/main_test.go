package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/pgtest"
	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/server"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/store"
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

// backend makes empty databases of one kind.
type backend struct {
	name string
	// db returns a DSN ("" for SQLite) and a data directory.
	db func(t *testing.T) (dsn, dir string)
}

var (
	sqlite   = backend{"SQLite", func(t *testing.T) (string, string) { return "", t.TempDir() }}
	postgres = backend{"Postgres", func(t *testing.T) (string, string) { return pg.NewDatabase(t), t.TempDir() }}
)

// eachBackend runs fn on SQLite and on PostgreSQL.
func eachBackend(t *testing.T, fn func(t *testing.T, b backend)) {
	for _, b := range []backend{sqlite, postgres} {
		t.Run(b.name, func(t *testing.T) {
			if b.name == "Postgres" {
				pg.Require(t)
			}
			fn(t, b)
		})
	}
}

// clock is a fake clock tests move by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// logBuffer collects a server's log.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// env is a running server over a real store, reached over real HTTP.
type env struct {
	t          *testing.T
	st         *store.DB
	srv        *server.Server
	URL        string
	dsn, dir   string
	adminToken string
	admin      *serverapi.Client
	logs       *logBuffer

	mu      sync.Mutex
	secrets []string // that must never show in the log
}

type envOptions struct {
	clock  *clock
	rescan time.Duration
	// dsn and dir, if set, name an existing database (a second replica).
	dsn, dir   string
	adminToken string
	// maxBlob and maxLayer bound what /v2 takes (Options.MaxBlob, MaxLayer).
	maxBlob, maxLayer int64
	// logsKept is Options.LogsKept.
	logsKept int
}

func newEnv(t *testing.T, b backend, o envOptions) *env {
	t.Helper()
	e := &env{t: t, dsn: o.dsn, dir: o.dir, logs: &logBuffer{}}
	if e.dir == "" {
		e.dsn, e.dir = b.db(t)
	}
	st, err := store.Open(ctx, e.dsn, e.dir)
	if err != nil {
		t.Fatal(err)
	}
	e.st = st
	opts := server.Options{
		Logger: slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Rescan: o.rescan,

		MaxBlob:  o.maxBlob,
		MaxLayer: o.maxLayer,
		LogsKept: o.logsKept,
	}
	if o.clock != nil {
		st.Now, opts.Now = o.clock.Now, o.clock.Now
	}
	if st.Backend() == "postgres" {
		opts.ListenDSN = e.dsn
	}
	e.adminToken = o.adminToken
	if e.adminToken == "" {
		path, err := server.Bootstrap(ctx, st, e.dir, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		e.adminToken = strings.TrimSpace(string(b))
	}
	e.secret(e.adminToken)
	cs, err := server.OpenContent(filepath.Join(e.dir, "content"))
	if err != nil {
		t.Fatal(err)
	}
	opts.Content = cs
	e.srv = server.New(st, opts)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.srv.Run(runCtx)
	}()
	hs := httptest.NewServer(e.srv.Handler())
	e.URL = hs.URL
	e.admin = e.client(e.adminToken)
	t.Cleanup(func() {
		stop() // answers the long polls under way
		hs.Close()
		<-done
		st.Close()
		cs.Close()
		logs := e.logs.String()
		e.mu.Lock()
		defer e.mu.Unlock()
		for _, s := range e.secrets {
			if strings.Contains(logs, s) {
				t.Errorf("the server's log holds a secret (%.6s…)", s)
			}
		}
		if t.Failed() {
			t.Logf("server log:\n%s", logs)
		}
	})
	return e
}

// secret records a secret the log must not hold.
func (e *env) secret(s string) {
	e.mu.Lock()
	e.secrets = append(e.secrets, s)
	e.mu.Unlock()
}

func (e *env) client(token string) *serverapi.Client {
	c, err := serverapi.New(e.URL, serverapi.Options{Token: token})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(c.Close)
	return c
}

// user makes a user with a role and returns a token of it.
func (e *env) user(name, role string) string {
	e.t.Helper()
	u, err := e.admin.CreateUser(ctx, name, role)
	if err != nil {
		e.t.Fatal(err)
	}
	tok, err := e.admin.CreateToken(ctx, u.ID, serverapi.CreateTokenRequest{Name: "test"})
	if err != nil {
		e.t.Fatal(err)
	}
	e.secret(tok.Secret)
	return tok.Secret
}

func (e *env) fleet(name string) *serverapi.FleetKey {
	e.t.Helper()
	f, err := e.admin.CreateFleet(ctx, name)
	if err != nil {
		e.t.Fatal(err)
	}
	e.secret(f.ProvisioningKey)
	return f
}

// device registers a device and returns it with a client holding its
// token, and the token.
func (e *env) device(key, name string) (serverapi.Device, *serverapi.Client, string) {
	e.t.Helper()
	reg, err := e.client("").Register(ctx, serverapi.RegisterRequest{ProvisioningKey: key, Name: name, Arch: "arm64", AgentVersion: "v0.1.0"})
	if err != nil {
		e.t.Fatal(err)
	}
	e.secret(reg.Token)
	return reg.Device, e.client(reg.Token), reg.Token
}

// spec is a small release spec.
func spec(images ...string) release.Spec {
	s := release.Spec{Services: map[string]release.Service{}}
	for i, img := range images {
		s.Services[[]string{"web", "db", "worker"}[i]] = release.Service{Image: img, Environment: map[string]string{"FROM_FILE": "yes"}}
	}
	return s
}

func (e *env) release(fleet, app, version string) *serverapi.Release {
	e.t.Helper()
	r, _, err := e.admin.CreateRelease(ctx, fleet, serverapi.CreateReleaseRequest{App: app, Version: version, Spec: spec("web:"+version, "db:1")})
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

// do sends a raw request; it returns the status and body.
func (e *env) do(method, path, token string, body io.Reader) (int, http.Header, []byte) {
	e.t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, e.URL+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

// auditCount is how many audit entries there are.
func (e *env) auditCount() int {
	e.t.Helper()
	es, err := e.st.ListAudit(ctx, store.AuditFilter{Limit: 100000})
	if err != nil {
		e.t.Fatal(err)
	}
	return len(es)
}

// status is the HTTP status of a client's error (0 for none).
func status(err error) int {
	var ae *serverapi.Error
	if errors.As(err, &ae) {
		return ae.Status
	}
	if err != nil {
		return -1
	}
	return 0
}

// errorOnly checks that an error body is {"error": "..."} and nothing more.
func errorOnly(t *testing.T, what string, body []byte) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Errorf("%s: the error body is not JSON: %q", what, body)
		return ""
	}
	msg, ok := m["error"].(string)
	if len(m) != 1 || !ok || msg == "" {
		t.Errorf("%s: want {\"error\": \"…\"} only, got %s", what, body)
	}
	return msg
}

func readFile(t *testing.T, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
