package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/berth-robotics/berth/internal/pgtest"
)

// buildBerth builds ./cmd/berth into dir.
func buildBerth(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "berth")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/berth")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/berth (run from the repository root): %v\n%s", err, out)
	}
	return bin, nil
}

// serverProc is a running `berth server`.
type serverProc struct {
	cmd   *exec.Cmd
	exit  chan struct{}
	URL   string
	Token string // the bootstrap admin token
	log   string
	pprof string // the profiler's address, if asked for
}

// startServer runs `berth server` on a free loopback port with its data
// in dataDir and, if dsn is set, its database in PostgreSQL.
func startServer(ctx context.Context, bin, dataDir, dsn string, profile bool) (*serverProc, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dataDir, "..", filepath.Base(dataDir)+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	args := []string{"server", "--data-dir", dataDir, "--listen", addr}
	if dsn != "" {
		args = append(args, "--db", dsn)
	}
	pprofAddr := ""
	if profile {
		if pprofAddr, err = freeAddr(); err != nil {
			return nil, err
		}
		args = append(args, "--pprof", pprofAddr)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stderr = logFile
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	// Its own process group: a Ctrl-C reaches us, and we stop it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start berth server: %w", err)
	}
	s := &serverProc{cmd: cmd, exit: make(chan struct{}), log: logPath, pprof: pprofAddr}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if u, ok := strings.CutPrefix(sc.Text(), "berth server: listening on "); ok {
				select {
				case ready <- u:
				default:
				}
			}
		}
	}()
	go func() { cmd.Wait(); close(s.exit) }()
	select {
	case s.URL = <-ready:
	case <-s.exit:
		b, _ := os.ReadFile(logPath)
		return nil, fmt.Errorf("berth server exited while starting:\n%s", b)
	case <-time.After(60 * time.Second):
		s.stop()
		return nil, errors.New("berth server did not say it listens within 60s")
	case <-ctx.Done():
		s.stop()
		return nil, ctx.Err()
	}
	tok, err := os.ReadFile(filepath.Join(dataDir, "admin.token"))
	if err != nil {
		s.stop()
		return nil, err
	}
	s.Token = strings.TrimSpace(string(tok))
	return s, nil
}

// stop shuts the server down (SIGTERM, then SIGKILL after 15s).
func (s *serverProc) stop() {
	if s == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exit:
	case <-time.After(15 * time.Second):
		s.cmd.Process.Kill()
		<-s.exit
	}
}

func (s *serverProc) pid() int { return s.cmd.Process.Pid }

// logTail is the last n lines of the server's log.
func (s *serverProc) logTail(n int) string {
	b, err := os.ReadFile(s.log)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// freeAddr is a loopback address with a port free a moment ago.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// heapProfile saves the server's heap profile (in use now) into path.
func (s *serverProc) heapProfile(path string) {
	if s.pprof == "" {
		return
	}
	resp, err := http.Get("http://" + s.pprof + "/debug/pprof/heap")
	if err != nil {
		logf("heap profile: %v", err)
		return
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil {
		err = os.WriteFile(path, b, 0o644)
	}
	if err != nil {
		logf("heap profile: %v", err)
		return
	}
	logf("wrote %s", path)
}

// cpuProfile saves the server's CPU profile over the next d into path, in
// the background; wait returns once it is written (or failed, said on
// stderr). Without a profiler it does nothing.
func (s *serverProc) cpuProfile(d time.Duration, path string) (wait func()) {
	if s.pprof == "" {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", s.pprof, max(1, int(d.Seconds())))
		resp, err := http.Get(url)
		if err != nil {
			logf("profile: %v", err)
			return
		}
		defer resp.Body.Close()
		f, err := os.Create(path)
		if err != nil {
			logf("profile: %v", err)
			return
		}
		defer f.Close()
		if _, err := io.Copy(f, resp.Body); err != nil {
			logf("profile: %v", err)
			return
		}
		logf("wrote %s", path)
	}()
	return func() { <-done }
}

// newPostgres starts a throwaway PostgreSQL cluster and makes a database.
func newPostgres(ctx context.Context) (*pgtest.Cluster, string, error) {
	pg := &pgtest.Cluster{}
	dsn, err := pg.CreateDatabase(ctx, "fleetbench")
	if err != nil {
		pg.Close()
		return nil, "", err
	}
	return pg, dsn, nil
}

// ProcStat is what /proc says about a process (and, for PostgreSQL, its
// children: one backend per connection).
type ProcStat struct {
	CPU   float64 `json:"cpu_seconds"` // user+system since start
	RSS   int64   `json:"rss_bytes"`   // VmRSS
	HWM   int64   `json:"hwm_bytes"`   // VmHWM: peak RSS
	PSS   int64   `json:"pss_bytes"`   // proportional: shared pages split among their users
	Procs int     `json:"procs"`
}

const clockTicks = 100 // USER_HZ on Linux

// procStat reads pid's CPU time and memory; with children, it adds those
// of pid's children (their RSS summed counts shared memory more than once).
func procStat(pid int, children bool) ProcStat {
	var st ProcStat
	pids := []int{pid}
	if children {
		pids = append(pids, childrenOf(pid)...)
	}
	for _, p := range pids {
		cpu, ok := cpuOf(p)
		if !ok {
			continue
		}
		st.Procs++
		st.CPU += cpu
		rss, hwm := memOf(p)
		st.RSS += rss
		st.HWM += hwm
		st.PSS += pssOf(p)
	}
	return st
}

func cpuOf(pid int) (float64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// Fields after the command name, which is in parentheses.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 13 {
		return 0, false
	}
	ut, _ := strconv.ParseFloat(f[11], 64) // utime: field 14
	stt, _ := strconv.ParseFloat(f[12], 64)
	return (ut + stt) / clockTicks, true
}

func memOf(pid int) (rss, hwm int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			rss = n << 10
		case "VmHWM":
			hwm = n << 10
		}
	}
	return rss, hwm
}

func pssOf(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Pss:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n << 10
		}
	}
	return 0
}

func childrenOf(pid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(b), ')')
		f := strings.Fields(string(b[i+2:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, p)
		}
	}
	return out
}

// selfCPU is this process's CPU time: the simulated devices' cost.
func selfCPU() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// Machine describes where the run happened.
type Machine struct {
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model"`
	MemTotal  string `json:"mem_total"`
	Kernel    string `json:"kernel"`
	Go        string `json:"go"`
	Commit    string `json:"commit"`
	LoadStart string `json:"load_start"`
	LoadEnd   string `json:"load_end"`
	NoFile    uint64 `json:"nofile_limit"`
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), LoadStart: loadavg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		m.MemTotal = strings.Join(strings.Fields(line)[1:], " ")
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if out, err := exec.Command("git", "describe", "--always", "--dirty").Output(); err == nil {
		m.Commit = strings.TrimSpace(string(out))
	}
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil {
		m.NoFile = l.Cur
	}
	return m
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
