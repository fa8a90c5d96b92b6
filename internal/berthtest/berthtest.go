// Package berthtest is berth's integration harness: real berthd and berth
// binaries, the real Docker Engine, test images built FROM scratch on the
// spot. Tests read like a story:
//
//	env := berthtest.NewEnv(t)
//	robot := env.NewDevice(t)
//	robot.MustDeploy(t, "app", twoServices)
//	robot.AwaitPhase(t, "app", release.PhaseIdle)
//
// Every device is an agent with its own instance name, state directory and
// socket; its cleanup removes whatever that agent created on the engine, even
// when the test fails.
package berthtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/engine"
	"github.com/berth-robotics/berth/internal/goimage"
	"github.com/berth-robotics/berth/internal/localapi"
	"github.com/berth-robotics/berth/internal/release"
)

// Env is what the devices of one test share: binaries, images, the engine.
type Env struct {
	// Images are the test images' tags: "a" and "b" run the same testapp
	// but differ, so switching between them is an image change.
	Images map[string]string
	Bin    string // directory with berthd and berth
	run    string
}

var (
	setupOnce sync.Once
	shared    *Env
	setupErr  error
)

// requireEngine skips under -short outside CI and fails in CI without an engine.
func requireEngine(t testing.TB) {
	t.Helper()
	if testing.Short() && os.Getenv("CI") == "" {
		t.Skip("integration test: needs the Docker Engine (runs without -short)")
	}
}

// NewEnv returns the shared environment, building binaries and images once.
func NewEnv(t testing.TB) *Env {
	t.Helper()
	requireEngine(t)
	setupOnce.Do(func() { shared, setupErr = setup() })
	if setupErr != nil {
		t.Fatalf("berthtest setup: %v", setupErr)
	}
	return shared
}

func setup() (*Env, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	root, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	bin, err := os.MkdirTemp("", "berthtest-bin-")
	if err != nil {
		return nil, err
	}
	for _, cmd := range []string{"berthd", "berth"} {
		c := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(bin, cmd), "./cmd/"+cmd)
		c.Dir = root
		c.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := c.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build %s: %v\n%s", cmd, err, out)
		}
	}
	eng, err := engine.New(ctx, "", "berthtest-setup")
	if err != nil {
		return nil, fmt.Errorf("the Docker Engine is needed for integration tests: %w", err)
	}
	defer eng.Close()
	binary, err := goimage.Binary(ctx, filepath.Join(root, "internal", "berthtest", "testapp"))
	if err != nil {
		return nil, err
	}
	e := &Env{Bin: bin, run: randomID(), Images: map[string]string{}}
	for _, variant := range []string{"a", "b"} {
		tag := fmt.Sprintf("berthtest/app:%s-%s", variant, e.run)
		bctx, err := goimage.Context(binary, "LABEL berthtest.variant="+variant, "LABEL berthtest.run="+e.run)
		if err != nil {
			return nil, err
		}
		if _, err := eng.BuildImage(ctx, bctx, tag); err != nil {
			return nil, err
		}
		e.Images[variant] = tag
	}
	return e, nil
}

// Teardown removes the shared images and binaries; call it from TestMain.
func Teardown() {
	if shared == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if eng, err := engine.New(ctx, "", "berthtest-setup"); err == nil {
		for _, tag := range shared.Images {
			if id, err := eng.ImageID(ctx, tag); err == nil {
				_ = eng.RemoveImage(ctx, id)
			}
		}
		eng.Close()
	}
	// Images tests built under berthtest/ that their own cleanup could not
	// remove while a device's container still used them (cleanups run in
	// reverse order): every device is gone now. The shared images of other
	// test processes on the same engine (label berthtest.run of another
	// run) are theirs: removing them made those runs fail with "images not
	// on the device's engine".
	if out, err := exec.CommandContext(ctx, "docker", "images", "-q", "--no-trunc", "--filter", "reference=berthtest/*").Output(); err == nil {
		others := map[string]bool{}
		// Images built FROM this run's test images carry its label too:
		// those are this run's to remove.
		if o, err := exec.CommandContext(ctx, "docker", "images", "-q", "--no-trunc", "--filter", "label=berthtest.run").Output(); err == nil {
			mine := map[string]bool{}
			if m, err := exec.CommandContext(ctx, "docker", "images", "-q", "--no-trunc", "--filter", "label=berthtest.run="+shared.run).Output(); err == nil {
				for _, id := range strings.Fields(string(m)) {
					mine[id] = true
				}
			}
			for _, id := range strings.Fields(string(o)) {
				others[id] = !mine[id]
			}
		}
		var ids []string
		for _, id := range strings.Fields(string(out)) {
			if !others[id] {
				ids = append(ids, id)
			}
		}
		// A container that is going away at this moment (a device's agent
		// stopping it) holds its image: try again once, then say what is left.
		for try := 0; len(ids) > 0; try++ {
			out, err := exec.CommandContext(ctx, "docker", append([]string{"rmi", "-f"}, ids...)...).CombinedOutput()
			if err == nil {
				break
			}
			if try == 1 {
				fmt.Fprintf(os.Stderr, "berthtest: test images left on the engine: %v\n%s", err, out)
				break
			}
			time.Sleep(5 * time.Second)
			ids = slices.DeleteFunc(ids, func(id string) bool {
				return exec.CommandContext(ctx, "docker", "image", "inspect", id).Run() != nil
			})
		}
	}
	os.RemoveAll(shared.Bin)
}

func moduleRoot() (string, error) {
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Dir(file)
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("go.mod not found above %s", file)
		}
		dir = parent
	}
}

func randomID() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// FreePort returns a TCP port on 127.0.0.1 that nothing listens on now.
func FreePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
}

// Device is one robot: a berthd with its own name, state directory and socket.
type Device struct {
	Name     string
	StateDir string
	Socket   string
	env      *Env
	eng      *engine.Client
	cmd      *exec.Cmd
	done     chan struct{}
	log      *os.File
	args     []string // extra berthd flags (fleet mode)
}

// Policy is written to the device's config.json; tests keep timings short.
const Policy = `{"settle": "1s", "verify_timeout": "20s", "lock_timeout": "60s"}`

// NewDevice starts a berthd with a fresh name and state, removed at cleanup
// with everything it created on the engine.
func (e *Env) NewDevice(t testing.TB) *Device {
	t.Helper()
	return e.NewDeviceWithPolicy(t, Policy)
}

// NewDeviceWithPolicy starts a device whose config.json is policy.
func (e *Env) NewDeviceWithPolicy(t testing.TB, policy string) *Device {
	t.Helper()
	return e.newDevice(t, policy)
}

// NewFleetDevice starts a device in fleet mode, registering with the server
// at url with a fleet's provisioning key.
func (e *Env) NewFleetDevice(t testing.TB, url, key string, args ...string) *Device {
	t.Helper()
	return e.newDevice(t, Policy, append([]string{"--server", url, "--provisioning-key", key, "--poll-wait", "3s"}, args...)...)
}

// NewDeviceIn starts a device whose state directory and socket are under
// base (a small filesystem, in the fault tests).
func (e *Env) NewDeviceIn(t testing.TB, base, policy string) *Device {
	t.Helper()
	return e.newDeviceIn(t, base, "", policy)
}

// NewDeviceOn starts a device whose agent drives the engine at host (a
// second engine, in the fault tests), its state under base ("" for a
// temporary directory).
func (e *Env) NewDeviceOn(t testing.TB, host, base, policy string) *Device {
	t.Helper()
	return e.newDeviceIn(t, base, host, policy, "--docker-host", host)
}

func (e *Env) newDevice(t testing.TB, policy string, args ...string) *Device {
	t.Helper()
	return e.newDeviceIn(t, "", "", policy, args...)
}

func (e *Env) newDeviceIn(t testing.TB, base, host, policy string, args ...string) *Device {
	t.Helper()
	dir, err := os.MkdirTemp(base, "bt-")
	if err != nil {
		t.Fatal(err)
	}
	d := &Device{Name: "berthtest-" + randomID(), StateDir: filepath.Join(dir, "state"), Socket: filepath.Join(dir, "s.sock"), env: e, args: args}
	if err := os.MkdirAll(d.StateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d.StateDir, "config.json"), []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	d.eng, err = engine.New(context.Background(), host, d.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Kill(t)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := d.eng.Purge(ctx, true); err != nil {
			t.Errorf("cleanup of device %s: %v", d.Name, err)
		}
		d.eng.Close()
		b, _ := os.ReadFile(filepath.Join(dir, "berthd.log"))
		noSecrets(t, "berthd's log of "+d.Name, b, d.secrets()...)
		if t.Failed() {
			t.Logf("berthd log of %s:\n%s", d.Name, b)
		}
		os.RemoveAll(dir)
	})
	d.Start(t)
	return d
}

// secrets are the device's provisioning key and token, if any: they
// must never show in its log.
func (d *Device) secrets() []string {
	var out []string
	for i, a := range d.args {
		if a == "--provisioning-key" && i+1 < len(d.args) {
			out = append(out, d.args[i+1])
		}
	}
	var reg struct {
		Token string `json:"token"`
	}
	if b, err := os.ReadFile(filepath.Join(d.StateDir, "device.json")); err == nil && json.Unmarshal(b, &reg) == nil {
		out = append(out, reg.Token)
	}
	return out
}

// Engine is the engine client scoped to this device's instance name.
func (d *Device) Engine() *engine.Client { return d.eng }

// Start starts berthd (again), with extra environment, and waits for its socket.
func (d *Device) Start(t testing.TB, extraEnv ...string) {
	t.Helper()
	d.StartNoWait(t, extraEnv...)
	logf := d.log
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		cl := d.Client()
		_, err := cl.State(context.Background())
		cl.Close()
		if err == nil {
			return
		}
		select {
		case <-d.done:
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("berthd exited at start:\n%s", b)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("berthd %s did not answer on %s", d.Name, d.Socket)
}

// StartNoWait starts berthd (again) and returns at once: the fault tests
// kill it while it recovers, before it serves.
func (d *Device) StartNoWait(t testing.TB, extraEnv ...string) {
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(filepath.Dir(d.StateDir), "berthd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	d.log = logf
	d.cmd = exec.Command(filepath.Join(d.env.Bin, "berthd"), append([]string{"--name", d.Name, "--state-dir", d.StateDir, "--socket", d.Socket}, d.args...)...)
	d.cmd.Env = append(os.Environ(), extraEnv...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(d.cmd, d.done)
}

// Kill stops berthd with SIGKILL, as a power cut would.
func (d *Device) Kill(t testing.TB) {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	_ = d.cmd.Process.Kill()
	<-d.done
	d.log.Close()
	d.cmd = nil
}

// Stop stops berthd with SIGTERM, as a service manager would, and waits
// for it to exit (killing it after 30 s).
func (d *Device) Stop(t testing.TB) {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		t.Errorf("berthd %s did not stop within 30 s of SIGTERM; killed", d.Name)
		_ = d.cmd.Process.Kill()
		<-d.done
	}
	d.log.Close()
	d.cmd = nil
}

// Target is the device's --to.
func (d *Device) Target() string { return "unix://" + d.Socket }

// Client returns a local API client for the device.
func (d *Device) Client() *localapi.Client { return localapi.Unix(d.Socket) }

// LockDir is the host directory mounted at /run/berth in the app's containers.
func (d *Device) LockDir(app string) string { return filepath.Join(d.StateDir, "apps", app, "lock") }

// Berth runs the berth binary with --to set to this device, and the test
// images in the environment as IMG_A and IMG_B for Compose substitution.
func (d *Device) Berth(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return d.BerthEnv(t, nil, args...)
}

// BerthEnv is Berth with extra environment variables.
func (d *Device) BerthEnv(t testing.TB, env []string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if !slices.Contains(args, "--to") {
		args = append(args, "--to", d.Target())
	}
	cmd := exec.CommandContext(ctx, filepath.Join(d.env.Bin, "berth"), args...)
	cmd.Env = append(append(os.Environ(), "IMG_A="+d.env.Images["a"], "IMG_B="+d.env.Images["b"]), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// Deploy writes compose to a file and runs berth deploy with it.
func (d *Device) Deploy(t testing.TB, app, compose string, args ...string) (string, error) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "compose.yaml")
	if err := os.WriteFile(f, []byte(compose), 0o644); err != nil {
		t.Fatal(err)
	}
	return d.Berth(t, append([]string{"deploy", "-f", f, "--app", app, "--version", "test"}, args...)...)
}

// MustDeploy deploys and fails the test unless the release is committed.
func (d *Device) MustDeploy(t testing.TB, app, compose string, args ...string) string {
	t.Helper()
	out, err := d.Deploy(t, app, compose, args...)
	if err != nil {
		t.Fatalf("deploy %s: %v\n%s", app, err, out)
	}
	return out
}

// State returns the device's current state.
func (d *Device) State(t testing.TB) *release.CurrentState {
	t.Helper()
	cl := d.Client()
	defer cl.Close()
	st, err := cl.State(context.Background())
	if err != nil {
		t.Fatalf("state of %s: %v", d.Name, err)
	}
	return st
}

// App returns one app's state.
func (d *Device) App(t testing.TB, app string) release.AppState {
	t.Helper()
	a, ok := d.State(t).Apps[app]
	if !ok {
		t.Fatalf("device %s has no app %s", d.Name, app)
	}
	return a
}

// Await polls the app's state until ok returns true or the timeout passes.
func (d *Device) Await(t testing.TB, app string, timeout time.Duration, what string, ok func(release.AppState) bool) release.AppState {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last release.AppState
	for time.Now().Before(deadline) {
		if a, found := d.State(t).Apps[app]; found {
			last = a
			if ok(a) {
				return a
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("app %s on %s: not %s within %s; last state: %+v", app, d.Name, what, timeout, last)
	return last
}

// AwaitHealthy waits until the app is at rest (idle, or rolled back to a
// release that runs) and every service is running
// (healthy where it has a healthcheck) or, for one-shot jobs, exited 0.
func (d *Device) AwaitHealthy(t testing.TB, app string) release.AppState {
	t.Helper()
	return d.Await(t, app, 60*time.Second, "healthy", func(a release.AppState) bool {
		if (a.Phase != release.PhaseIdle && a.Phase != release.PhaseRolledBack) || len(a.Services) == 0 {
			return false
		}
		for _, s := range a.Services {
			oneShotDone := s.State == "exited" && s.ExitCode == 0
			if (s.State != "running" && !oneShotDone) || s.Health == release.HealthUnhealthy || s.Health == release.HealthStarting {
				return false
			}
		}
		return true
	})
}

// Containers lists the device's containers of app as the engine sees them.
func (d *Device) Containers(t testing.TB, app string) []release.Container {
	t.Helper()
	cs, err := d.eng.Containers(context.Background(), app)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// Get fetches a URL and returns the body, or an error unless it answers 200.
func Get(url string) (string, error) {
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), nil
}

// Contains fails the test unless s contains every one of subs.
func Contains(t testing.TB, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("output lacks %q:\n%s", sub, s)
		}
	}
}

// PID is berthd's process ID (0 when it is not running).
func (d *Device) PID() int {
	if d.cmd == nil || d.cmd.Process == nil {
		return 0
	}
	return d.cmd.Process.Pid
}

// BinDir is where the harness built berthd and berth.
func (e *Env) BinDir() string { return e.Bin }
