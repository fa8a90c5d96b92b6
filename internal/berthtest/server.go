package berthtest

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Server is a `berth server` process on loopback over SQLite in its own
// data directory (or over a PostgreSQL database), stopped at cleanup.
type Server struct {
	// URL is where clients reach it: its own address, unless a test puts
	// a proxy in front (several replicas behind one address).
	URL     string
	Token   string // the bootstrap admin token
	DataDir string
	addr    string // where this process listens
	db      string // PostgreSQL DSN; "" for SQLite in DataDir
	env     *Env
	cmd     *exec.Cmd
	done    chan struct{}
	log     *os.File
	secrets []string // that must never show in its log: tokens, keys
}

// NewServer starts a fleet server over SQLite.
func (e *Env) NewServer(t testing.TB) *Server {
	t.Helper()
	return e.NewServerOn(t, "")
}

// NewServerOn starts a fleet server over the PostgreSQL database at dsn
// ("" for SQLite in its data directory).
func (e *Env) NewServerOn(t testing.TB, dsn string) *Server {
	t.Helper()
	s := e.newServer(t, dsn)
	b, err := os.ReadFile(filepath.Join(s.DataDir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	s.Token = strings.TrimSpace(string(b))
	s.secrets = append(s.secrets, s.Token)
	return s
}

// Replica starts another `berth server` process on s's PostgreSQL
// database, with a data directory of its own on another port: a second
// replica. Its content directory is s's (replicas must share it, as on a
// shared filesystem: docs/api.md). It has s's admin token and URL.
func (s *Server) Replica(t testing.TB) *Server {
	t.Helper()
	if s.db == "" {
		t.Fatal("replicas need PostgreSQL: start the first server with NewServerOn")
	}
	r := s.env.newServer(t, s.db, func(dataDir string) {
		if err := os.MkdirAll(dataDir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(s.DataDir, "content"), filepath.Join(dataDir, "content")); err != nil {
			t.Fatal(err)
		}
	})
	r.Token, r.URL = s.Token, s.URL
	r.secrets = append(r.secrets, s.secrets...)
	return r
}

func (e *Env) newServer(t testing.TB, dsn string, prepare ...func(dataDir string)) *Server {
	t.Helper()
	dir := t.TempDir()
	s := &Server{DataDir: filepath.Join(dir, "data"), addr: "127.0.0.1:" + FreePort(t), db: dsn, env: e}
	s.URL = "http://" + s.addr
	for _, f := range prepare {
		f(s.DataDir)
	}
	var err error
	if s.log, err = os.Create(filepath.Join(dir, "server.log")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Stop()
		b, _ := os.ReadFile(s.log.Name())
		noSecrets(t, "berth server's log", b, s.secrets...)
		if t.Failed() {
			t.Logf("berth server log:\n%s", b)
		}
		s.log.Close()
	})
	s.Start(t)
	return s
}

// noSecrets fails the test if a log holds any of the secrets.
func noSecrets(t testing.TB, what string, log []byte, secrets ...string) {
	t.Helper()
	for _, sec := range secrets {
		if sec != "" && bytes.Contains(log, []byte(sec)) {
			t.Errorf("%s holds a secret (%.6s…)", what, sec)
		}
	}
}

// Start starts the server (again, on the same address and data) and waits
// until it answers.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	s.cmd = exec.Command(filepath.Join(s.env.Bin, "berth"), "server", "--data-dir", s.DataDir, "--listen", s.addr)
	s.cmd.Env = append(os.Environ(), "BERTH_DB="+s.db) // not on the command line: a DSN may hold a password
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(s.cmd, s.done)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + s.addr + "/v1/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-s.done:
			b, _ := os.ReadFile(s.log.Name())
			t.Fatalf("berth server exited at start:\n%s", b)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("berth server did not answer on %s", s.addr)
}

// Addr is where this server process listens (host:port).
func (s *Server) Addr() string { return s.addr }

// Running reports whether the server process runs.
func (s *Server) Running() bool { return s.cmd != nil }

// Stop kills the server with SIGKILL.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// Terminate stops the server with SIGTERM, as a service manager would,
// and waits for it to exit (killing it after 30 s); it reports whether
// the server exited on its own, and with status 0.
func (s *Server) Terminate() (graceful bool) {
	if s.cmd == nil || s.cmd.Process == nil {
		return true
	}
	defer func() { s.cmd = nil }()
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
		return s.cmd.ProcessState != nil && s.cmd.ProcessState.Success()
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
		return false
	}
}

// Berth runs a berth command against the server as its admin.
func (s *Server) Berth(t testing.TB, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(s.env.Bin, "berth"), args...)
	cmd.Env = append(os.Environ(), "BERTH_SERVER="+s.URL, "BERTH_TOKEN="+s.Token, "HOME="+filepath.Dir(s.DataDir), "BERTH_CACHE="+filepath.Join(filepath.Dir(s.DataDir), "cache"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// AssignAll makes release id the target of every device of fleet lab.
func (s *Server) AssignAll(t testing.TB, id string) {
	t.Helper()
	if out, err := s.Berth(t, "release", "assign", id, "--fleet", "lab", "--all"); err != nil {
		t.Fatal(err, out)
	}
}

// CreateFleet creates a fleet with `berth fleet create --json` and returns
// its provisioning key.
func (s *Server) CreateFleet(t testing.TB, name string) string {
	t.Helper()
	out, err := s.Berth(t, "fleet", "create", name, "--json")
	if err != nil {
		t.Fatal(err, out)
	}
	var fl struct {
		Key string `json:"provisioning_key"`
	}
	if err := json.Unmarshal([]byte(out), &fl); err != nil || fl.Key == "" {
		t.Fatalf("fleet create --json: %v\n%s", err, out)
	}
	s.secrets = append(s.secrets, fl.Key)
	return fl.Key
}
