package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// devRun is one one-line change that berth dev deployed: from the save to
// the new release committed (healthy) on the robot, and its split.
type devRun struct {
	Seconds       float64 `json:"seconds"`        // save → release committed
	DetectSeconds float64 `json:"detect_seconds"` // save → berth dev sees it (polling, quiet time)
	BuildSeconds  float64 `json:"build_seconds"`
	PushSeconds   float64 `json:"push_seconds"`   // the images sent (streamed push)
	SwitchSeconds float64 `json:"switch_seconds"` // switch, health gate, commit
	WireBytes     int64   `json:"wire_bytes"`
}

// devResult is berth dev's figures on one link.
type devResult struct {
	Link   string   `json:"link"`
	Runs   []devRun `json:"runs"`
	Median devRun   `json:"median"`
	Setup  float64  `json:"setup_seconds"` // the first build and deploy
	Note   string   `json:"note,omitempty"`
}

var builtRe = regexp.MustCompile(`built in ([\d.]+)s, sent and switched`)

// devBench runs berth dev on a copy of examples/robot against the robot
// and saves n one-line changes to a Go service (the sensor's start-up log
// line), one after the other, each once the last is running.
func devBench(ctx context.Context, cfg *config, r *robot, link string, n int) (*devResult, error) {
	dir := filepath.Join(r.dir, "robot-example")
	if _, err := run(ctx, "cp", "-a", filepath.Join(cfg.repoRoot, "examples", "robot"), dir); err != nil {
		return nil, err
	}
	// A git repository of its own, so the version (git describe) is the
	// same for every change (-dirty).
	for _, c := range [][]string{{"init", "-q"}, {"add", "."}, {"-c", "user.name=bench", "-c", "user.email=bench@example.com", "commit", "-q", "-m", "example"}} {
		if _, err := runIn(ctx, dir, nil, "git", c...); err != nil {
			return nil, err
		}
	}
	src := filepath.Join(dir, "sensor", "main.go")
	code, err := os.ReadFile(src)
	if err != nil {
		return nil, err
	}
	const line = `log.Printf("sensor %s %s: %.0f Hz, calibration offset %.3f m", name, version, rate, cal.OffsetM)`
	if !strings.Contains(string(code), line) {
		return nil, fmt.Errorf("%s: the line the benchmark edits is not there any more", src)
	}
	cmd := command(ctx, append(r.berthEnv(), "ROBOT_UI_PORT=18090"), filepath.Join(r.bin, "berth"), "dev", "-f", filepath.Join(dir, "compose.yaml"), "--app", "robotdev", "--local-go-image", "--to", r.target())
	cmd.Dir = dir
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() {
		_ = syscall.Kill(cmd.Process.Pid, syscall.SIGINT)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
		_, _ = runIn(context.Background(), dir, r.berthEnv(), filepath.Join(r.bin, "berth"), "rm", "--app", "robotdev", "--to", r.target())
		// The images berth dev built on the laptop's engine (berth-local/golang,
		// made once, stays: other runs and berth quickstart use it).
		out, _ := run(context.Background(), "docker", "images", "--format", "{{.Repository}}:{{.Tag}}")
		for _, ref := range strings.Fields(out) {
			if strings.HasPrefix(ref, "robotdev-") {
				quiet("docker", "rmi", "-f", ref)
			}
		}
	}()
	type stamped struct {
		at   time.Time
		text string
	}
	var mu sync.Mutex
	var lines []stamped
	logPath := filepath.Join(r.dir, "berth-dev-"+link+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	go func() {
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			mu.Lock()
			lines = append(lines, stamped{time.Now(), sc.Text()})
			fmt.Fprintf(logFile, "%8.2fs %s\n", time.Since(t0).Seconds(), sc.Text())
			mu.Unlock()
		}
	}()
	// wait returns the first line after from containing s.
	wait := func(from int, s string, timeout time.Duration) (int, stamped, error) {
		deadline := time.Now().Add(timeout)
		for {
			mu.Lock()
			for i := from; i < len(lines); i++ {
				if strings.Contains(lines[i].text, s) {
					l := lines[i]
					mu.Unlock()
					return i, l, nil
				}
			}
			mu.Unlock()
			if time.Now().After(deadline) {
				return 0, stamped{}, fmt.Errorf("berth dev never printed %q (its output: %s)", s, logPath)
			}
			select {
			case <-ctx.Done():
				return 0, stamped{}, ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	at, _, err := wait(0, "watching", 15*time.Minute)
	if err != nil {
		return nil, err
	}
	res := &devResult{Link: link, Setup: time.Since(t0).Seconds()}
	logf("   %s berth dev: first build and deploy of examples/robot in %.1fs", link, res.Setup)
	for i := 1; i <= n; i++ {
		time.Sleep(time.Second) // the loop is watching again, its logs followed
		edited := strings.Replace(string(code), line, strings.Replace(line, "sensor %s", fmt.Sprintf("sensor (edit %d) %%s", i), 1), 1)
		m := newMeter()
		saved := time.Now()
		if err := os.WriteFile(src, []byte(edited), 0o644); err != nil {
			return nil, err
		}
		var start, sw, done stamped
		var bi int
		if bi, start, err = wait(at, "changed: building", 3*time.Minute); err != nil {
			return nil, err
		}
		if _, sw, err = wait(bi, "switching robotdev", 5*time.Minute); err != nil {
			return nil, err
		}
		var di int
		if di, done, err = wait(bi, "is running (release", 5*time.Minute); err != nil {
			return nil, err
		}
		_, b, err := wait(bi, "sent and switched in", time.Minute)
		if err != nil {
			return nil, err
		}
		at = di + 1
		m.phase("dev")
		built := 0.0
		if mm := builtRe.FindStringSubmatch(b.text); mm != nil {
			built, _ = strconv.ParseFloat(mm[1], 64)
		}
		d := devRun{Seconds: done.at.Sub(saved).Seconds(), DetectSeconds: start.at.Sub(saved).Seconds(), BuildSeconds: built,
			SwitchSeconds: done.at.Sub(sw.at).Seconds(), WireBytes: m.result().WireBytes}
		d.PushSeconds = sw.at.Sub(start.at).Seconds() - built
		res.Runs = append(res.Runs, d)
		logf("   %s berth dev change %d: %.1fs (detect %.1f, build %.1f, push %.1f, switch %.1f), %s on the wire", link, i, d.Seconds, d.DetectSeconds, d.BuildSeconds, d.PushSeconds, d.SwitchSeconds, human(d.WireBytes))
	}
	res.Median = medianRun(res.Runs)
	return res, nil
}

// medianRun is the run of median total time.
func medianRun(rs []devRun) devRun {
	if len(rs) == 0 {
		return devRun{}
	}
	s := append([]devRun(nil), rs...)
	sort.Slice(s, func(i, j int) bool { return s[i].Seconds < s[j].Seconds })
	return s[len(s)/2]
}
