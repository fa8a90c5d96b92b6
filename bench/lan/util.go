package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

var started = time.Now()

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%7.1fs] %s\n", time.Since(started).Seconds(), fmt.Sprintf(format, args...))
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench/lan: "+format+"\n", args...)
	os.Exit(2)
}

// Cleanups run last-in first-out when the benchmark ends, however it ends.
var (
	cleanupMu sync.Mutex
	cleanups  []cleanup
)

type cleanup struct {
	name string
	fn   func()
}

func addCleanup(name string, fn func()) {
	cleanupMu.Lock()
	defer cleanupMu.Unlock()
	cleanups = append(cleanups, cleanup{name, fn})
}

func runCleanups() {
	cleanupMu.Lock()
	cs := cleanups
	cleanups = nil
	cleanupMu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		logf("cleanup: %s", cs[i].name)
		func() {
			defer func() {
				if p := recover(); p != nil {
					logf("cleanup %s: panic %v", cs[i].name, p)
				}
			}()
			cs[i].fn()
		}()
	}
}

func lookPath(name string) (string, error) { return exec.LookPath(name) }

// command makes a command in its own process group, killed as a group when
// ctx ends (a pipeline under bash goes with it).
func command(ctx context.Context, env []string, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	return cmd
}

// run runs a command and returns its stdout; the error carries stderr.
func run(ctx context.Context, name string, args ...string) (string, error) {
	return runIn(ctx, "", nil, name, args...)
}

func runIn(ctx context.Context, dir string, env []string, name string, args ...string) (string, error) {
	cmd := command(ctx, env, name, args...)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(abbrev(args), " "), err, tail(errb.String()+out.String(), 1500))
	}
	return out.String(), nil
}

// quiet runs a command whose failure does not matter (cleanup).
func quiet(name string, args ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, _ = run(ctx, name, args...)
}

func abbrev(args []string) []string {
	if len(args) <= 12 {
		return args
	}
	return append(append([]string{}, args[:10]...), fmt.Sprintf("…(%d more)", len(args)-10))
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// proc is a long-running child (dockerd, sshd, berthd, the registry, the tunnel).
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

func startProc(name, logPath string, args ...string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	// Its own process group: a Ctrl-C in the terminal reaches only us, and we stop it in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() { _ = cmd.Wait(); f.Close(); close(p.done) }()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop signals the process and waits; after grace, the whole group is killed.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) {
	if p == nil || p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	logf("%s did not stop in %s: killing it", p.name, grace)
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
}

func (p *proc) logTail() string {
	b, _ := os.ReadFile(p.log)
	return tail(string(b), 2000)
}

// waitFor polls ok until it succeeds, the process dies, or the timeout.
func waitFor(ctx context.Context, what string, p *proc, timeout time.Duration, ok func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := ok()
		if err == nil {
			return nil
		}
		if p != nil && p.exited() {
			return fmt.Errorf("%s: %s exited: %s", what, p.name, p.logTail())
		}
		if time.Now().After(deadline) {
			msg := ""
			if p != nil {
				msg = ": " + p.logTail()
			}
			return fmt.Errorf("%s: not ready after %s: %v%s", what, timeout, err, msg)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// unmountUnder lazily unmounts everything mounted below dir, deepest first.
func unmountUnder(dir string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) > 4 {
			mp := strings.ReplaceAll(fs[4], `\040`, " ")
			if mp == dir || strings.HasPrefix(mp, dir+"/") {
				points = append(points, mp)
			}
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	for _, mp := range points {
		if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			logf("umount %s: %v", mp, err)
		}
	}
}

// pidsMentioning lists processes whose command line contains s (stray
// containerd shims of the robot's engine, for instance).
func pidsMentioning(s string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	self := os.Getpid()
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && bytes.Contains(b, []byte(s)) {
			out = append(out, pid)
		}
	}
	return out
}

func machineInfo(ctx context.Context, cfg *config) map[string]string {
	m := map[string]string{"go": runtime.Version(), "cpus": fmt.Sprint(runtime.NumCPU())}
	if out, err := run(ctx, "uname", "-r"); err == nil {
		m["kernel"] = strings.TrimSpace(out)
	}
	if out, err := run(ctx, "docker", "version", "--format", "{{.Server.Version}} (API {{.Server.APIVersion}})"); err == nil {
		m["docker"] = strings.TrimSpace(out)
	}
	if out, err := run(ctx, "docker", "info", "--format", "{{.Driver}}"); err == nil {
		m["host_storage_driver"] = strings.TrimSpace(out)
	}
	if out, err := runIn(ctx, cfg.repoRoot, nil, "git", "describe", "--tags", "--dirty", "--always"); err == nil {
		m["tree"] = strings.TrimSpace(out)
	}
	if out, err := run(ctx, "dpkg-query", "-W", "-f", "${Version}", "docker-registry"); err == nil {
		m["docker_registry"] = out
	}
	if out, err := exec.CommandContext(ctx, "ssh", "-V").CombinedOutput(); err == nil {
		m["openssh"] = strings.TrimSpace(string(out))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				m["cpu"] = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	return m
}
