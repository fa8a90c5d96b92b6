package berthtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/release"
)

// TestFleetPullOverFaultyLink: a device in fleet mode fetches a release's
// content from the fleet server over HTTPS through a link of the test's
// own — 20 Mbit/s (tbf) and 1% loss (iptables) each way — which is cut at
// random offsets of the transfer: the link goes down, both ends' TCP
// connections break (ss -K) 300 ms later, the link comes back. The agent
// tries again on its own from what it kept; the release must end up
// running, and no cut may re-send more than 256 KiB: per cut, what the
// device's TCP took in during the try (each byte once, read with the link
// down) less what its content store gained, in wire bytes (cutCosts).
//
// The server runs in the host's network namespace on the link's address;
// berthd runs in the link's namespace (the robot's side here), driving the
// shared engine through its socket. BERTH_FAULT_CUTS and BERTH_FAULT_SEED
// as for TestPushOverFaultyLink; the image is 4 MiB per cut (at least 24
// MiB).
func TestFleetPullOverFaultyLink(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	rng := FaultSeed(t)
	cuts := FaultCount(t, "BERTH_FAULT_CUTS", 3)
	link := NewLink(t, "20mbit", "0.01")
	link.ShapeInbound(t, "20mbit", "0.01")
	srv := newTLSServer(t, env, link.HostIP)
	key := srv.admin(t, "fleet", "create", "lab", "--json")
	var fl struct {
		Key string `json:"provisioning_key"`
	}
	if err := json.Unmarshal([]byte(key), &fl); err != nil || fl.Key == "" {
		t.Fatalf("fleet create --json: %v\n%s", err, key)
	}
	srv.secrets = append(srv.secrets, fl.Key)
	robot := envInNetNS(t, env, link.NetNS).NewFleetDevice(t, srv.url, fl.Key, "--server-fingerprint", srv.fingerprint)
	pieces := filepath.Join(robot.StateDir, "content", "pieces")
	port := FreePort(t)
	size := max(24, 4*cuts) << 20

	// Each release's payload has a path of its own: the same path would
	// have the uploader and the server try a binary delta of 24+ MiB of
	// random bytes against the previous one, which takes minutes here and
	// is refused in the end.
	// upload puts a fresh image of the size in a release (the laptop
	// has it, the device's engine — this engine — not once it is
	// uploaded) and returns the release's ID and the image's ID.
	upload := func(version string) (string, string) {
		tag := payloadImage(t, env, size, "/payload-"+version)
		id, _ := docker("image", "inspect", "-f", "{{.Id}}", tag)
		compose := filepath.Join(t.TempDir(), "compose.yaml")
		write(t, compose, strings.Replace(web(port, version), "${IMG_A}", tag, 1))
		out := srv.admin(t, "release", "create", "-f", compose, "--fleet", "lab", "--app", "app", "--version", version, "--json")
		var rel struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &rel); err != nil || rel.ID == "" {
			t.Fatalf("release create --json: %v\n%s", err, out)
		}
		if out, err := docker("rmi", tag); err != nil {
			t.Fatal(err, out)
		}
		return rel.ID, strings.TrimSpace(id)
	}
	assign := func(id string) {
		srv.admin(t, "release", "assign", id, "--fleet", "lab", "--all")
	}
	running := func(id string) bool {
		srv.alive(t)
		a, ok := robot.State(t).Apps["app"]
		return ok && a.FleetRelease == id && a.Phase == release.PhaseIdle
	}

	// Uncut: what fetching a fresh image of this size costs on the link.
	var costs cutCosts
	rel1, _ := upload("1")
	held := settledBytes(pieces)
	link.Reset(t) // every connection anew: their counters start at 0
	start := time.Now()
	assign(rel1)
	var crossed int64
	for i := 0; !running(rel1); i++ {
		if time.Since(start) > 3*time.Minute {
			t.Fatalf("release 1 not running after %s: %+v", time.Since(start), robot.State(t).Apps["app"])
		}
		crossed = max(crossed, link.Received(t, false))
		time.Sleep(20 * time.Millisecond)
	}
	costs.calibrate(t, crossed, settledBytes(pieces)-held)
	t.Logf("uncut fetch of %d MiB, loaded and switched: %s", size>>20, time.Since(start).Round(time.Millisecond))

	// Cut: another fresh image of the same size.
	rel2, img2 := upload("2")
	held = settledBytes(pieces)
	link.Reset(t)
	start = time.Now()
	assign(rel2)
	made := 0
	for made < cuts {
		runHeld := dirBytes(pieces)
		left := min(max(crossed-(runHeld-held), 1<<20), 4<<20)
		offset := rng.Int64N(left)
		finished := false
		for i := 0; ; i++ {
			if i%25 == 0 && running(rel2) {
				finished = true
				break
			}
			if time.Since(start) > 10*time.Minute {
				t.Fatalf("release 2 not running after %s and %d cuts", time.Since(start), made)
			}
			if link.Received(t, false) >= offset {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		if finished {
			t.Logf("cut %d: the device had the release before the offset (%d bytes)", made+1, offset)
			break
		}
		link.Up(t, false)
		got := link.Received(t, false)
		// What came across is read on: the connections break 300 ms
		// later, as a broken one hands over what it had.
		time.Sleep(300 * time.Millisecond)
		link.Reset(t)
		link.Up(t, true)
		made++
		costs.add(t, got, settledBytes(pieces)-runHeld)
		t.Logf("cut %d at %d KiB into try %d", made, offset>>10, made)
	}
	robot.Await(t, "app", 5*time.Minute, "on release 2 after the cuts", func(a release.AppState) bool {
		return a.FleetRelease == rel2 && a.Phase == release.PhaseIdle
	})
	robot.AwaitHealthy(t, "app")
	if got, _ := Get("http://127.0.0.1:" + port + "/"); got != "version=2\n" {
		t.Fatalf("release 2 answers %q", got)
	}
	if _, err := docker("image", "inspect", img2); err != nil {
		t.Fatalf("image %s not in the engine after the cuts", img2)
	}
	log, _ := os.ReadFile(filepath.Join(filepath.Dir(robot.StateDir), "berthd.log"))
	t.Logf("%d cuts in %s; the agent tried again %d times", made, time.Since(start).Round(time.Millisecond), bytes.Count(log, []byte("app not switched yet")))
	costs.check(t)
}

// tlsServer is a `berth server` serving HTTPS with a self-signed
// certificate on addr (the link's address in the host's namespace), which
// clients pin by its fingerprint.
type tlsServer struct {
	url, fingerprint, token, dir string
	bin                          string
	secrets                      []string
	done                         chan struct{} // closed when it exits
	log                          string
}

// alive fails the test if the server has exited (nothing here stops it
// before cleanup).
func (s *tlsServer) alive(t *testing.T) {
	t.Helper()
	select {
	case <-s.done:
		b, _ := os.ReadFile(s.log)
		t.Fatalf("berth server exited during the test:\n%s", lastLines(string(b), 5))
	default:
	}
}

var fingerprintLine = regexp.MustCompile(`TLS certificate fingerprint: (sha256:[0-9a-f]+)`)

func newTLSServer(t *testing.T, env *Env, host string) *tlsServer {
	t.Helper()
	dir := t.TempDir()
	s := &tlsServer{url: "https://" + host + ":" + FreePort(t), dir: dir, bin: filepath.Join(env.Bin, "berth")}
	logf, err := os.Create(filepath.Join(dir, "server.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(s.bin, "server", "--data-dir", filepath.Join(dir, "data"), "--listen", strings.TrimPrefix(s.url, "https://"), "--tls-self-signed")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.done, s.log = done, logf.Name()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		b, _ := os.ReadFile(logf.Name())
		noSecrets(t, "berth server's log", b, s.secrets...)
		if t.Failed() {
			t.Logf("berth server log:\n%s", b)
		}
		logf.Close()
	})
	c := http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := c.Get(s.url + "/v1/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case <-done:
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("berth server exited at start:\n%s", b)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("berth server did not answer on %s", s.url)
		}
	}
	b, _ := os.ReadFile(logf.Name())
	m := fingerprintLine.FindSubmatch(b)
	tok, err := os.ReadFile(filepath.Join(dir, "data", "admin.token"))
	if m == nil || err != nil {
		t.Fatalf("no fingerprint or admin token: %v\n%s", err, b)
	}
	s.fingerprint, s.token = string(m[1]), strings.TrimSpace(string(tok))
	s.secrets = append(s.secrets, s.token)
	return s
}

// admin runs a berth command against the server as its admin, from the
// host (not over the link), and fails the test if it fails.
func (s *tlsServer) admin(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.bin, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGQUIT) } // its goroutines, if it hangs
	cmd.Env = append(os.Environ(), "BERTH_SERVER="+s.url, "BERTH_TOKEN="+s.token, "BERTH_TLS_FINGERPRINT="+s.fingerprint, "HOME="+s.dir, "BERTH_CACHE="+filepath.Join(s.dir, "cache"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("berth %s: %v after %s\n%s", strings.Join(args, " "), err, time.Since(start).Round(time.Millisecond), out.String())
	}
	t.Logf("berth %s: %s", args[0]+" "+args[1], time.Since(start).Round(time.Millisecond))
	return out.String()
}

// envInNetNS is env whose berthd runs inside the network namespace netns
// (through nsenter; the engine's and its own sockets are files, reached
// from any namespace).
func envInNetNS(t *testing.T, env *Env, netns string) *Env {
	t.Helper()
	dir := t.TempDir()
	script := "#!/bin/sh\nexec nsenter --net=/var/run/netns/" + netns + " " + filepath.Join(env.Bin, "berthd") + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(dir, "berthd"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(env.Bin, "berth"), filepath.Join(dir, "berth")); err != nil {
		t.Fatal(err)
	}
	e := *env
	e.Bin = dir
	return &e
}

// payloadImage builds an image with size random bytes at path on top of
// test image "a", leaves it in the engine and returns its tag (removed at
// cleanup).
func payloadImage(t *testing.T, env *Env, size int, path string) string {
	t.Helper()
	dir := t.TempDir()
	payload := make([]byte, size)
	rand.Read(payload)
	write(t, filepath.Join(dir, "payload"), string(payload))
	write(t, filepath.Join(dir, "Dockerfile"), "FROM "+env.Images["a"]+"\nCOPY payload "+path+"\n")
	tag := "berthtest/big:" + randomID()
	if out, err := docker("build", "-q", "-t", tag, dir); err != nil {
		t.Fatal(err, out)
	}
	id, _ := docker("image", "inspect", "-f", "{{.Id}}", tag)
	t.Cleanup(func() { docker("rmi", "-f", strings.TrimSpace(id)) })
	return tag
}
