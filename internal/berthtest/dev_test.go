package berthtest

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer for a process's output read while it runs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestDev: berth dev on a project with a built service (a healthcheck) and
// one without (verified by the dev settle time, said in the output). A
// saved change rebuilds and switches; a change that does not build leaves
// the device on the last good release and dev goes on; a change whose
// release fails its health gate rolls back on the device; Ctrl-C leaves the
// last good release running.
func TestDev(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	robot := env.NewDevice(t)
	port := FreePort(t)
	dir := t.TempDir()
	app := "dev" + randomID()[:6]
	write(t, filepath.Join(dir, "compose.yaml"), `
services:
  web:
    build:
      context: ./web
      args: {IMG: "${IMG_A}"}
    ports: ["127.0.0.1:`+port+`:8080"]
    healthcheck:
      test: ["CMD", "/app", "-check"]
      interval: 1s
      timeout: 2s
      retries: 2
  worker:
    build:
      context: ./worker
      args: {IMG: "${IMG_A}"}
    environment: {PORT: "8081"}
`)
	dockerfile := func(svc, version string, extra ...string) {
		write(t, filepath.Join(dir, svc, "Dockerfile"), "ARG IMG\nFROM ${IMG}\nLABEL berth.test=dev-"+app+"\nENV VERSION="+version+"\n"+strings.Join(extra, "\n")+"\n")
	}
	os.MkdirAll(filepath.Join(dir, "web"), 0o755)
	os.MkdirAll(filepath.Join(dir, "worker"), 0o755)
	dockerfile("web", "1")
	dockerfile("worker", "1")
	t.Cleanup(func() {
		robot.Berth(t, "rm", "--app", app)
		// The images built, and what a failed build left (children first).
		for range 3 {
			out, _ := docker("images", "-a", "-q", "--filter", "label=berth.test=dev-"+app)
			if strings.TrimSpace(out) == "" {
				break
			}
			docker(append([]string{"rmi", "-f"}, strings.Fields(out)...)...)
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(env.Bin, "berth"), "dev", "-f", filepath.Join(dir, "compose.yaml"), "--app", app, "--to", robot.Target(), "--builder", "classic")
	cmd.Env = append(os.Environ(), "IMG_A="+env.Images["a"], "BERTH_CACHE="+t.TempDir(), "BERTH_PUSH_PORT="+FreePort(t))
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("berth dev's output:\n%s", out.String())
		}
	}()
	serves := func(want string) {
		t.Helper()
		for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
			if got, _ := Get("http://127.0.0.1:" + port + "/"); got == "version="+want+"\n" {
				return
			}
			select {
			case err := <-done:
				t.Fatalf("berth dev ended: %v", err)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("the robot never served version %s", want)
			}
		}
	}
	waitFor := func(s string, n int) {
		t.Helper()
		for deadline := time.Now().Add(3 * time.Minute); strings.Count(out.String(), s) < n; time.Sleep(200 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("berth dev never printed %q %d times", s, n)
			}
		}
	}
	serves("1")
	waitFor("watching", 1)
	Contains(t, out.String(), "must run 2s without restarting (dev mode")

	// A saved change: web only is rebuilt and switched.
	dockerfile("web", "2")
	serves("2")
	waitFor("is running", 2)
	if !strings.Contains(out.String(), "changed: building web\n") {
		t.Errorf("the change rebuilt more than web:\n%s", out.String())
	}
	// A change that does not build: the robot keeps version 2.
	dockerfile("web", "3", "RUN false")
	waitFor("fix and save again", 1)
	serves("2")
	// A change whose release is unhealthy: rolled back on the robot.
	dockerfile("web", "4", "ENV UNHEALTHY=1")
	waitFor("was not committed", 1)
	serves("2")
	// Fixed: on it goes.
	dockerfile("web", "5")
	serves("5")
	waitFor("is running", 3)

	// Ctrl-C: dev ends, the robot keeps version 5.
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("berth dev after Ctrl-C: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("berth dev did not stop on Ctrl-C")
	}
	serves("5")
	if a := robot.App(t, app); a.Phase != "idle" {
		t.Errorf("after Ctrl-C the app is %s", a.Phase)
	}
}
