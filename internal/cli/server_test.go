package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/pgtest"
	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
)

// pg is one PostgreSQL for this test binary.
var pg pgtest.Cluster

func TestMain(m *testing.M) {
	code := m.Run()
	if err := pg.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "stop PostgreSQL:", err)
	}
	os.Exit(code)
}

// syncBuffer is written by a command running in another goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// cliEnv isolates a test from the user's config and environment.
func cliEnv(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	t.Setenv("HOME", t.TempDir())
	for _, k := range []string{"BERTH_SERVER", "BERTH_TOKEN", "BERTH_TLS_FINGERPRINT", "BERTH_DB"} {
		t.Setenv(k, "")
	}
}

// startServer runs `berth server` in-process until the test ends, and
// returns its URL and data directory.
func startServer(t *testing.T, args ...string) (url, dir string, logs *syncBuffer) {
	t.Helper()
	dir = t.TempDir()
	sctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	logs = &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- Main(sctx, "test", append([]string{"server", "--data-dir", dir, "--listen", "127.0.0.1:0"}, args...), &out, logs)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("berth server exited %d:\n%s", code, logs)
			}
		case <-time.After(15 * time.Second):
			t.Error("berth server did not stop")
		}
	})
	re := regexp.MustCompile(`listening on (http\S+)`)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if m := re.FindStringSubmatch(out.String()); m != nil {
			return m[1], dir, logs
		}
		select {
		case code := <-done:
			t.Fatalf("berth server exited %d:\n%s", code, logs)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("berth server did not say where it listens:\n%s\n%s", out.String(), logs)
	return "", "", nil
}

// berth runs the CLI in-process; it returns stdout and the error output.
func berth(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(context.Background(), "test", args, &out, &errb)
	return out.String(), errb.String(), code
}

// must runs the CLI and fails the test unless it exits 0.
func must(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := berth(t, args...)
	if code != 0 {
		t.Fatalf("berth %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

func decodeJSON[T any](t *testing.T, s string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, s)
	}
	return v
}

// TestFleetCLI drives the fleet commands end to end against `berth
// server` (SQLite), with devices speaking the device API as an agent will.
func TestFleetCLI(t *testing.T) {
	cliEnv(t)
	url, dir, logs := startServer(t)
	ctx := context.Background()
	adminToken := strings.TrimSpace(readFileT(t, filepath.Join(dir, "admin.token")))

	// Nothing to go on yet: a clear word.
	if _, errOut, code := berth(t, "fleet", "list"); code == 0 || !strings.Contains(errOut, "berth login") {
		t.Errorf("without a server: exit %d, %s", code, errOut)
	}
	if _, errOut, code := berth(t, "login", "--server", url, "--token", "bt_"+strings.Repeat("z", 32)); code == 0 || !strings.Contains(errOut, "unknown token") {
		t.Errorf("login with a bad token: exit %d, %s", code, errOut)
	}
	out := must(t, "login", "--server", url, "--token", adminToken)
	if !strings.Contains(out, "as admin (admin)") {
		t.Errorf("login: %s", out)
	}
	cfgPath, _ := configPath()
	if fi, err := os.Stat(cfgPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("config %s: %v, %v", cfgPath, fi, err)
	}

	fk := decodeJSON[map[string]any](t, must(t, "fleet", "create", "lab", "--json"))
	key, _ := fk["provisioning_key"].(string)
	if !strings.HasPrefix(key, "bp_") || fk["name"] != "lab" {
		t.Fatalf("fleet create --json: %v", fk)
	}
	if out := must(t, "fleet", "list"); !strings.Contains(out, "lab") || !strings.Contains(out, "PROVISIONING KEY") || strings.Contains(out, key) {
		t.Errorf("fleet list:\n%s", out)
	}

	// Two robots register, as agents do.
	agents := map[string]*serverapi.Client{}
	for _, name := range []string{"robot-a", "robot-b"} {
		anon, _ := serverapi.New(url, serverapi.Options{})
		reg, err := anon.Register(ctx, serverapi.RegisterRequest{ProvisioningKey: key, Name: name, Arch: "arm64", AgentVersion: "test"})
		if err != nil {
			t.Fatal(err)
		}
		agents[name], _ = serverapi.New(url, serverapi.Options{Token: reg.Token})
	}

	compose := filepath.Join(t.TempDir(), "compose.yaml")
	os.WriteFile(compose, []byte("services:\n  web:\n    image: web:1\n    environment:\n      GREETING: hello\n  db:\n    image: db:1\n"), 0o644)
	rel := decodeJSON[map[string]any](t, must(t, "release", "create", "--no-upload", "-f", compose, "--fleet", "lab", "--app", "hello", "--version", "v1", "--json"))
	id, _ := rel["id"].(string)
	if !strings.HasPrefix(id, "sha256:") || rel["version"] != "v1" {
		t.Fatalf("release create --json: %v", rel)
	}
	if again := decodeJSON[map[string]any](t, must(t, "release", "create", "--no-upload", "-f", compose, "--fleet", "lab", "--app", "hello", "--version", "v1", "--json")); again["id"] != id {
		t.Errorf("the same release again: %v, want id %s", again["id"], id)
	}
	if out := must(t, "release", "create", "--no-upload", "-f", compose, "--fleet", "lab", "--app", "hello", "--version", "v1"); !strings.Contains(out, "already there") {
		t.Errorf("release create again:\n%s", out)
	}
	// Without --version: git describe, or "unversioned" outside a repository.
	if out := must(t, "release", "create", "--no-upload", "-f", compose, "--fleet", "lab", "--app", "hello"); !strings.Contains(out, "unversioned") {
		t.Errorf("release create without --version:\n%s", out)
	}
	if out := must(t, "release", "list", "--fleet", "lab"); !strings.Contains(out, release.ShortID(id)) || !strings.Contains(out, "user:admin") {
		t.Errorf("release list:\n%s", out)
	}
	if out := must(t, "release", "assign", release.ShortID(id), "--fleet", "lab", "--all"); !strings.Contains(out, "2 device(s) moved") {
		t.Errorf("release assign:\n%s", out)
	}

	// Robot A gets the release and reports it running.
	tg, _, err := agents["robot-a"].Target(ctx, 0, 0)
	if err != nil || tg.Apps["hello"] == nil || tg.Apps["hello"].ID != id {
		t.Fatalf("robot-a's target: %+v, %v", tg, err)
	}
	state := release.CurrentState{
		Agent: release.AgentInfo{Name: "robot-a", Version: "test"},
		Apps: map[string]release.AppState{"hello": {Release: id, FleetRelease: id, Version: "v1", Phase: release.PhaseIdle,
			Services: map[string]release.ServiceState{"web": {Container: "c1", State: "running", Health: "none", Release: id}}}},
		Reported: time.Now(),
	}
	if _, err := agents["robot-a"].ReportState(ctx, state); err != nil {
		t.Fatal(err)
	}

	// The contract: a JSON list whose items have name, online and apps.
	var items []map[string]json.RawMessage
	items = decodeJSON[[]map[string]json.RawMessage](t, must(t, "device", "list", "--fleet", "lab", "--json"))
	if len(items) != 2 {
		t.Fatalf("device list --json: %d items", len(items))
	}
	for _, it := range items {
		for _, k := range []string{"name", "online", "apps"} {
			if _, ok := it[k]; !ok {
				t.Errorf("device list --json: an item lacks %q", k)
			}
		}
	}
	var apps map[string]release.AppState
	json.Unmarshal(items[0]["apps"], &apps)
	if apps["hello"].Phase != release.PhaseIdle || apps["hello"].Services["web"].State != "running" || string(items[0]["online"]) != "true" {
		t.Errorf("robot-a in device list: online %s, apps %+v", items[0]["online"], apps)
	}
	if out := must(t, "device", "list", "--fleet", "lab"); !strings.Contains(out, "robot-a") || !strings.Contains(out, "hello v1 (running)") || !strings.Contains(out, "hello  (unknown)") {
		t.Errorf("device list:\n%s", out)
	}
	if out := must(t, "device", "show", "robot-a", "--fleet", "lab"); !strings.Contains(out, "hello  release "+release.ShortID(id)) || !strings.Contains(out, "hello  running, runs "+release.ShortID(id)) {
		t.Errorf("device show:\n%s", out)
	}

	// Environment: set on the device, merged into its target.
	if out := must(t, "device", "env", "robot-a", "--fleet", "lab", "GREETING=hi", "MODE=field"); !strings.Contains(out, "GREETING=hi") {
		t.Errorf("device env:\n%s", out)
	}
	must(t, "device", "env", "robot-a", "--fleet", "lab", "--unset", "MODE")
	tg, _, _ = agents["robot-a"].Target(ctx, tg.Version, 0)
	if env := tg.Apps["hello"].Spec.Services["web"].Environment; env["GREETING"] != "hi" || env["MODE"] != "" {
		t.Errorf("robot-a's web environment: %v", env)
	}
	must(t, "fleet", "env", "lab", "--service", "db", "POOL=4")
	if out := must(t, "fleet", "env", "lab", "--service", "db"); strings.TrimSpace(out) != "POOL=4" {
		t.Errorf("fleet env:\n%s", out)
	}

	// Tags.
	if out := must(t, "device", "tag", "robot-a", "--fleet", "lab", "lidar", "field"); strings.TrimSpace(out) != "field lidar" {
		t.Errorf("device tag: %q", out)
	}
	if got := decodeJSON[[]serverapi.Device](t, must(t, "device", "list", "--fleet", "lab", "--tag", "lidar", "--json")); len(got) != 1 || got[0].Name != "robot-a" {
		t.Errorf("device list --tag lidar: %+v", got)
	}
	if out := must(t, "device", "tag", "robot-a", "--fleet", "lab", "--remove", "field"); strings.TrimSpace(out) != "lidar" {
		t.Errorf("device tag --remove: %q", out)
	}

	// Pin robot-b to v1, move the fleet to v2: robot-b stays; unpinned, it moves.
	must(t, "device", "pin", "robot-b", "--fleet", "lab", "--release", id)
	v2 := decodeJSON[map[string]any](t, must(t, "release", "create", "--no-upload", "-f", compose, "--fleet", "lab", "--app", "hello", "--version", "v2", "--json"))["id"].(string)
	if out := must(t, "release", "assign", v2, "--fleet", "lab", "--all"); !strings.Contains(out, "1 device(s) moved, 1 already there or pinned") {
		t.Errorf("assign past a pin:\n%s", out)
	}
	b := decodeJSON[serverapi.Device](t, must(t, "device", "show", "robot-b", "--fleet", "lab", "--json"))
	if b.Target["hello"].Release != id || !b.Target["hello"].Pinned {
		t.Errorf("pinned robot-b: %+v", b.Target)
	}
	must(t, "device", "pin", "robot-b", "--fleet", "lab", "--clear", "hello")
	must(t, "release", "assign", v2, "--fleet", "lab", "--device", "robot-b")
	if b := decodeJSON[serverapi.Device](t, must(t, "device", "show", b.ID, "--json")); b.Target["hello"].Release != v2 {
		t.Errorf("unpinned robot-b: %+v", b.Target)
	}

	// A viewer reads but changes nothing; flags and the environment beat the stored login.
	must(t, "user", "create", "vera", "--role", "viewer")
	tok := decodeJSON[serverapi.NewToken](t, must(t, "user", "token", "vera", "--json")).Secret
	if out := must(t, "fleet", "list", "--server", url, "--token", tok); !strings.Contains(out, "lab") {
		t.Errorf("a viewer's fleet list:\n%s", out)
	}
	t.Setenv("BERTH_TOKEN", tok)
	_, errOut, code := berth(t, "fleet", "create", "other")
	if code == 0 || !strings.Contains(errOut, "needs the admin role") {
		t.Errorf("a viewer creating a fleet: exit %d, %s", code, errOut)
	}
	if fs := decodeJSON[[]serverapi.Fleet](t, must(t, "fleet", "list", "--json")); len(fs) != 1 {
		t.Errorf("fleets after the refusal: %+v", fs)
	}

	// Logs a robot shipped, read by the viewer: by name with --fleet.
	now := time.Now().UTC()
	if err := agents["robot-a"].ShipLogs(ctx, serverapi.LogBatch{Lines: []serverapi.LogLine{
		{App: "hello", Service: "web", Container: "c1", Time: now.Add(-time.Hour), Stream: "stdout", Text: "old"},
		{App: "hello", Service: "web", Container: "c1", Time: now, Stream: "stdout", Text: "ready"},
		{App: "hello", Service: "db", Container: "c2", Time: now, Stream: "stderr", Text: "db up"},
	}}); err != nil {
		t.Fatal(err)
	}
	if out := must(t, "logs", "--device", "robot-a", "--fleet", "lab", "--app", "hello", "web", "--since", "10m"); !strings.Contains(out, "web | ready") || strings.Contains(out, "old") || strings.Contains(out, "db up") {
		t.Errorf("berth logs --device:\n%s", out)
	}
	out = must(t, "logs", "--device", "robot-a", "--fleet", "lab", "--json")
	if ls := strings.Split(strings.TrimSpace(out), "\n"); len(ls) != 3 || decodeJSON[serverapi.LogLine](t, ls[2]).Text != "db up" {
		t.Errorf("berth logs --device --json:\n%s", out)
	}
	if _, errOut, code := berth(t, "logs", "--device", "robot-b", "--fleet", "lab"); code != 0 || errOut != "" {
		t.Errorf("robot-b's logs (none): exit %d, %s", code, errOut)
	}

	for _, secret := range []string{adminToken, key, tok} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the server's log holds a secret (%.6s…)", secret)
		}
	}
}

// TestServerCLIPostgres: `berth server --db` on PostgreSQL.
func TestServerCLIPostgres(t *testing.T) {
	pg.Require(t)
	cliEnv(t)
	dsn := pg.NewDatabase(t)
	url, dir, logs := startServer(t, "--db", dsn)
	if !strings.Contains(logs.String(), "store=postgres") {
		t.Errorf("not on PostgreSQL:\n%s", logs)
	}
	if strings.Contains(logs.String(), dsn) {
		t.Error("the log holds the DSN")
	}
	must(t, "login", "--server", url, "--token", strings.TrimSpace(readFileT(t, filepath.Join(dir, "admin.token"))))
	must(t, "fleet", "create", "lab")
	if ds := must(t, "device", "list", "--fleet", "lab", "--json"); strings.TrimSpace(ds) != "[]" {
		t.Errorf("an empty fleet's devices: %s", ds)
	}
}

func readFileT(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
