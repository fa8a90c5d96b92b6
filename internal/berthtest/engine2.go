package berthtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/engine"
)

// Engine2 is a Docker Engine of the test's own: a second dockerd with its
// own data root, exec root, containerd and socket, in a network namespace
// of its own (its bridges and addresses never meet the shared engine's). The
// fault tests restart it, fill its disk, and cut its links; nothing else on
// the machine notices.
type Engine2 struct {
	Host    string // unix://… for DOCKER_HOST or berthd --docker-host
	NetNS   string // the network namespace's name (ip netns)
	Root    string // --data-root
	dir     string
	cmd     *exec.Cmd
	done    chan struct{}
	logPath string
}

// NewEngine2 starts a second dockerd whose data root is dataRoot ("" for a
// temporary directory) and loads the shared test images into it. Cleanup
// removes everything it ran and the namespace, even when the test fails.
func (e *Env) NewEngine2(t testing.TB, dataRoot string) *Engine2 {
	t.Helper()
	requireRoot(t)
	if _, err := exec.LookPath("dockerd"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("dockerd is needed for the second-engine fault tests")
		}
		t.Skip("no dockerd")
	}
	dir, err := os.MkdirTemp("", "bt-engine2-")
	if err != nil {
		t.Fatal(err)
	}
	if dataRoot == "" {
		dataRoot = filepath.Join(dir, "data")
	}
	g := &Engine2{Root: dataRoot, dir: dir, NetNS: "bt-" + randomID(), logPath: filepath.Join(dir, "dockerd.log")}
	g.Host = "unix://" + filepath.Join(dir, "docker.sock")
	if out, err := exec.Command("ip", "netns", "add", g.NetNS).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	exec.Command("ip", "-n", g.NetNS, "link", "set", "lo", "up").Run()
	t.Cleanup(func() {
		g.stop(t)
		// Whatever the engine left mounted under its roots.
		for _, root := range []string{filepath.Join(dir, "exec"), dataRoot} {
			if out, _ := exec.Command("findmnt", "-rn", "-o", "TARGET").Output(); len(out) > 0 {
				for _, m := range strings.Fields(string(out)) {
					if m == root || strings.HasPrefix(m, root+"/") {
						exec.Command("umount", "-l", m).Run()
					}
				}
			}
		}
		exec.Command("ip", "netns", "del", g.NetNS).Run()
		if t.Failed() {
			b, _ := os.ReadFile(g.logPath)
			t.Logf("second dockerd's log (tail):\n%s", lastLines(string(b), 30))
		}
		os.RemoveAll(dir)
		os.RemoveAll(dataRoot)
	})
	g.Start(t)
	// The test images, from the shared engine.
	for _, tag := range e.Images {
		c := fmt.Sprintf("docker save %s | docker -H %s load -q", tag, g.Host)
		if out, err := exec.Command("sh", "-c", c).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", c, err, out)
		}
	}
	return g
}

// Start starts dockerd (again) and waits until it answers. As systemd's
// Restart= would, it tries again when dockerd gives up at start (after a
// crash, on a loaded machine, it can time out waiting for its containerd).
func (g *Engine2) Start(t testing.TB) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		err := g.start(t)
		if err == nil {
			return
		}
		if attempt == 3 {
			t.Fatal(err)
		}
		t.Logf("the second dockerd, attempt %d: %v; starting it again", attempt, err)
	}
}

func (g *Engine2) start(t testing.TB) error {
	t.Helper()
	logf, err := os.OpenFile(g.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	// Its own (empty) configuration: the machine's daemon.json is the
	// shared engine's.
	config := filepath.Join(g.dir, "daemon.json")
	if err := os.WriteFile(config, []byte("{}\n"), 0o600); err != nil {
		return err
	}
	g.cmd = exec.Command("nsenter", "--net=/var/run/netns/"+g.NetNS, "dockerd", "--config-file", config,
		"--data-root", g.Root, "--exec-root", filepath.Join(g.dir, "exec"),
		"-H", g.Host, "--pidfile", filepath.Join(g.dir, "docker.pid"),
		"--containerd-namespace", g.NetNS, "--containerd-plugins-namespace", g.NetNS+"-plugins",
		"--storage-driver", "vfs", "--iptables=false", "--ip-masq=false", "--bridge=none")
	g.cmd.Stdout, g.cmd.Stderr = logf, logf
	if err := g.cmd.Start(); err != nil {
		return err
	}
	g.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(g.cmd, g.done)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := engine.New(ctx, g.Host, "berthtest-probe")
		cancel()
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-g.done:
			g.cmd = nil
			return fmt.Errorf("it exited at start: %s", g.errors())
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("it did not answer on %s: %s", g.Host, g.errors())
}

// errors is the last error lines of dockerd's log.
func (g *Engine2) errors() string {
	b, _ := os.ReadFile(g.logPath)
	var errs []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "level=error") || strings.Contains(l, "level=fatal") || strings.HasPrefix(l, "failed") {
			errs = append(errs, l)
		}
	}
	if len(errs) > 5 {
		errs = errs[len(errs)-5:]
	}
	return strings.Join(errs, "\n")
}

// Stop stops dockerd: SIGTERM (it stops its containers, as a service
// restart does) or SIGKILL (a crash: containers and containerd run on).
func (g *Engine2) Stop(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if g.cmd == nil {
		return
	}
	// nsenter execs dockerd: the process is dockerd itself.
	_ = g.cmd.Process.Signal(sig)
	select {
	case <-g.done:
	case <-time.After(60 * time.Second):
		_ = g.cmd.Process.Kill()
		<-g.done
	}
	g.cmd = nil
}

// stop removes every container of the engine (it is the test's own), then
// ends dockerd and the containerd it supervises.
func (g *Engine2) stop(t testing.TB) {
	if g.cmd == nil {
		// Killed by the test: its containers still run.
		if err := g.start(t); err != nil {
			t.Logf("the second dockerd, started again to clean up: %v", err)
		}
	}
	c := fmt.Sprintf("docker -H %s ps -aq | xargs -r docker -H %s rm -f", g.Host, g.Host)
	if out, err := exec.Command("sh", "-c", c).CombinedOutput(); err != nil {
		t.Errorf("remove the second engine's containers: %v\n%s", err, out)
	}
	g.Stop(t, syscall.SIGTERM)
	// Should the engine not have come back, its containers' shims (in its
	// own containerd namespace) and their processes run on: end them.
	// Shims exit a moment after their task is deleted: give them that.
	var out []byte
	var err error
	for i := 0; i < 50; i++ {
		if out, err = exec.Command("pgrep", "-f", "containerd-shim.* -namespace "+g.NetNS+" ").Output(); err != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err == nil {
		for _, f := range strings.Fields(string(out)) {
			pid, _ := strconv.Atoi(f)
			if kids, err := exec.Command("pgrep", "-P", f).Output(); err == nil {
				for _, k := range strings.Fields(string(kids)) {
					if kp, err := strconv.Atoi(k); err == nil {
						syscall.Kill(kp, syscall.SIGKILL)
					}
				}
			}
			if pid > 1 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		t.Logf("the second engine left %d container shims running 5 s after its containers were removed and it stopped; killed them", len(strings.Fields(string(out))))
	}
	if b, err := os.ReadFile(filepath.Join(g.dir, "exec", "containerd", "containerd.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
			if p, err := os.FindProcess(pid); err == nil && processIsContainerd(pid) {
				_ = p.Signal(syscall.SIGTERM)
				for i := 0; i < 50 && processIsContainerd(pid); i++ {
					time.Sleep(100 * time.Millisecond)
				}
				if processIsContainerd(pid) {
					_ = p.Kill()
				}
			}
		}
	}
}

func processIsContainerd(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && strings.Contains(string(b), "containerd")
}
