package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/berth-robotics/berth/internal/transfer"
)

var methods = []string{"registry", "save", "berth"}

var methodTitle = map[string]string{
	"registry": "registry over an SSH tunnel",
	"save":     "docker save | gzip | ssh docker load",
	"berth":    "berth",
}

// measurement is one method's run of one scenario over one link.
type measurement struct {
	Link     string `json:"link"`
	Scenario string `json:"scenario"`
	Method   string `json:"method"`
	// Kind: "measured"; "unshaped" (a slow-link S0 run over the plain veth: bytes exact,
	// time not over the slow link); "estimated" (not run: bytes from the loopback run).
	Kind      string  `json:"kind"`
	WireBytes int64   `json:"wire_bytes"` // tx+rx at the host's veth
	WireTx    int64   `json:"wire_tx"`
	WireRx    int64   `json:"wire_rx"`
	Seconds   float64 `json:"seconds"` // command to new release (or container) healthy
	// EstSeconds: for unshaped/estimated slow-link runs, a lower bound: wire bytes at the link rate.
	EstSeconds float64            `json:"est_seconds,omitempty"`
	Phases     map[string]float64 `json:"phases"`
	PhaseWire  map[string]int64   `json:"phase_wire_bytes,omitempty"`
	Berth      *berthSummary      `json:"berth,omitempty"`
	Note       string             `json:"note,omitempty"`
}

// berthSummary is what berth itself reported: push --json and deploy --json.
type berthSummary struct {
	Push   json.RawMessage `json:"push"`
	Deploy json.RawMessage `json:"deploy"`
	// The transfer's summaries, added up.
	transfer.Summary
	// deploy's own time, the whole command (transfer, switch, health,
	// commit): the switch is what follows the transfer's DoneSeconds.
	DeploySeconds float64 `json:"deploy_seconds"`
	// With -progress: push's progress lines, timestamped from the command's
	// start (the summary is then parsed from its text, rounded).
	Progress []string `json:"progress,omitempty"`
}

// runLink runs every scenario over one link on a fresh robot.
func runLink(ctx context.Context, cfg *config, link, work, bin string, im *images, res *results) ([]measurement, error) {
	dir := filepath.Join(work, "robot-"+link)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	r := &robot{dir: dir, bin: bin, storage: cfg.storage, cache: filepath.Join(dir, "laptop-cache"), pushPort: cfg.pushPort}
	addCleanup("tear the robot down ("+link+")", r.down)
	logf("== %s link: starting the robot (netns %s, %s ↔ %s)", link, netnsName, hostIP, robotIP)
	if err := r.up(ctx); err != nil {
		return nil, err
	}
	logf("robot up: dockerd %s, sshd %s:22, berthd %s, registry 127.0.0.1:%d (tunnelled)", r.dockerSock, robotIP, r.berthdSock, r.regPort)
	defer func() {
		logf("tearing the %s robot down", link)
		r.down()
		quietRemoveRegistryTags(r)
	}()

	var out []measurement
	for k, sc := range scenarioNames {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		if !cfg.measure[sc] {
			logf("-- %s %s: setup only (not measured)", link, sc)
			if err := r.shape(ctx, false, cfg.rateMbit); err != nil {
				return out, err
			}
			if _, err := registryRun(ctx, r, im, k, true); err != nil {
				return out, err
			}
			if _, err := berthRun(ctx, r, im, k, false); err != nil {
				return out, err
			}
			continue
		}
		for _, m := range methods {
			kind := "measured"
			if link == "slow" && sc == "S0" && !(cfg.slowS0 == "all" || cfg.slowS0 == m) {
				kind = "unshaped"
				if m == "save" {
					kind = "estimated"
				}
			}
			if err := r.shape(ctx, link == "slow" && kind == "measured", cfg.rateMbit); err != nil {
				return out, err
			}
			var ms *measurement
			var err error
			logf("-- %s %s %s (%s)", link, sc, m, kind)
			if kind == "estimated" {
				ms = estimateFromLoopback(res, out, sc, m)
			} else {
				if err := checkAbsent(ctx, r, im.ids[k]); err != nil {
					return out, err
				}
				switch m {
				case "registry":
					ms, err = registryRun(ctx, r, im, k, false)
				case "save":
					ms, err = saveRun(ctx, r, im, k, cfg.gzipLevel)
				case "berth":
					ms, err = berthRun(ctx, r, im, k, cfg.progress)
				}
				if err != nil {
					return out, fmt.Errorf("%s %s: %w", sc, m, err)
				}
			}
			ms.Link, ms.Scenario, ms.Method, ms.Kind = link, sc, m, kind
			if kind != "measured" {
				ms.EstSeconds = float64(ms.WireBytes) * 8 / (float64(cfg.rateMbit) * 1e6)
			}
			logf("   %s %s %s: %s on the wire, %.1fs %v", link, sc, m, human(ms.WireBytes), ms.Seconds, fmtPhases(ms.Phases))
			out = append(out, *ms)
		}
	}
	if cfg.dev > 0 {
		if err := r.shape(ctx, link == "slow", cfg.rateMbit); err != nil {
			return out, err
		}
		logf("-- %s berth dev on examples/robot, %d one-line changes", link, cfg.dev)
		d, err := devBench(ctx, cfg, r, link, cfg.dev)
		if err != nil {
			logf("   berth dev: %v", err)
			d = &devResult{Link: link, Note: err.Error()}
		}
		res.Dev = append(res.Dev, d)
	}
	return out, r.shape(ctx, false, cfg.rateMbit)
}

// estimateFromLoopback: the slow link's S0 for a method not run: its bytes are those of the
// loopback run (the same image, the same empty robot).
func estimateFromLoopback(res *results, cur []measurement, sc, m string) *measurement {
	for _, x := range append(append([]measurement{}, res.Runs...), cur...) {
		if x.Link == "loopback" && x.Scenario == sc && x.Method == m && x.Kind == "measured" {
			return &measurement{WireBytes: x.WireBytes, WireTx: x.WireTx, WireRx: x.WireRx, Phases: map[string]float64{},
				Note: "not run over the slow link; bytes from the loopback run"}
		}
	}
	return &measurement{Phases: map[string]float64{}, Note: "not run (no loopback run to take the bytes from)"}
}

// checkAbsent makes sure the robot's engine does not have the scenario's image yet.
func checkAbsent(ctx context.Context, r *robot, id string) error {
	if _, err := r.docker(ctx, "image", "inspect", id); err == nil {
		return fmt.Errorf("the robot's engine has image %s before the run: the reset between methods failed", id[:19])
	}
	return nil
}

// meter measures wire bytes and time of phases.
type meter struct {
	t0, last   time.Time
	tx0, rx0   int64
	ptx, prx   int64
	phases     map[string]float64
	phaseBytes map[string]int64
}

func newMeter() *meter {
	tx, rx := wire()
	now := time.Now()
	return &meter{t0: now, last: now, tx0: tx, rx0: rx, ptx: tx, prx: rx, phases: map[string]float64{}, phaseBytes: map[string]int64{}}
}

func (m *meter) phase(name string) {
	now := time.Now()
	tx, rx := wire()
	m.phases[name] = now.Sub(m.last).Seconds()
	m.phaseBytes[name] = tx - m.ptx + rx - m.prx
	m.last, m.ptx, m.prx = now, tx, rx
}

func (m *meter) result() *measurement {
	tx, rx := wire()
	return &measurement{WireTx: tx - m.tx0, WireRx: rx - m.rx0, WireBytes: tx - m.tx0 + rx - m.rx0,
		Seconds: m.last.Sub(m.t0).Seconds(), Phases: m.phases, PhaseWire: m.phaseBytes}
}

// registryRun: docker push through the tunnel, docker pull on the robot, the
// container started and healthy. pushOnly is the setup of an unmeasured scenario.
func registryRun(ctx context.Context, r *robot, im *images, k int, pushOnly bool) (*measurement, error) {
	ref := fmt.Sprintf("127.0.0.1:%d/%s", r.regPort, im.tags[k])
	if _, err := run(ctx, "docker", "tag", im.tags[k], ref); err != nil {
		return nil, err
	}
	m := newMeter()
	if _, err := run(ctx, "docker", "push", "-q", ref); err != nil {
		return nil, err
	}
	m.phase("push")
	if pushOnly {
		return m.result(), nil
	}
	if _, err := r.docker(ctx, "pull", "-q", ref); err != nil {
		return nil, err
	}
	m.phase("pull")
	if err := startHealthy(ctx, r, ref, "registry"); err != nil {
		return nil, err
	}
	m.phase("start")
	res := m.result()
	return res, resetRobot(ctx, r, ref, im.ids[k])
}

// saveRun: docker save | gzip | ssh docker load, the container started and healthy.
func saveRun(ctx context.Context, r *robot, im *images, k int, level int) (*measurement, error) {
	ssh := strings.Join(r.ssh(), " ")
	pipeline := fmt.Sprintf("set -o pipefail; docker save %s | gzip -%d | %s docker -H unix://%s load -q", im.tags[k], level, ssh, r.dockerSock)
	m := newMeter()
	if _, err := run(ctx, "bash", "-c", pipeline); err != nil {
		return nil, err
	}
	m.phase("save_gzip_ssh_load")
	if err := startHealthy(ctx, r, im.tags[k], "save"); err != nil {
		return nil, err
	}
	m.phase("start")
	res := m.result()
	return res, resetRobot(ctx, r, im.tags[k], im.ids[k])
}

// startHealthy starts the image on the robot the way berth's release runs it
// (host network, the image's healthcheck, which is the one in berth's
// Compose file; another port) and waits until healthy. (docker run
// --health-cmd would need a shell, which a FROM scratch image lacks.)
func startHealthy(ctx context.Context, r *robot, ref, method string) error {
	name := "lanbench-" + method
	if _, err := r.docker(ctx, "run", "-d", "--name", name, "--network", "host", "-e", "PORT=18081", ref); err != nil {
		return err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, err := r.docker(ctx, "inspect", "-f", "{{.State.Status}} {{.State.Health.Status}}", name)
		if err != nil {
			return err
		}
		if s := strings.TrimSpace(out); s == "running healthy" {
			return nil
		} else if !strings.HasPrefix(s, "running") || time.Now().After(deadline) {
			logs, _ := r.docker(ctx, "logs", "--tail", "20", name)
			return fmt.Errorf("container %s: %s: %s", name, s, logs)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// resetRobot removes a baseline's container and image from the robot's
// engine, so that the next method starts from the same state.
func resetRobot(ctx context.Context, r *robot, ref, id string) error {
	out, err := r.docker(ctx, "ps", "-aq", "--filter", "name=lanbench-")
	if err != nil {
		return err
	}
	if ids := strings.Fields(out); len(ids) > 0 {
		if _, err := r.docker(ctx, append([]string{"rm", "-f"}, ids...)...); err != nil {
			return err
		}
	}
	if _, err := r.docker(ctx, "rmi", ref); err != nil {
		return err
	}
	return checkAbsent(ctx, r, id)
}

const composeFile = `name: lanapp
services:
  app:
    image: %s
    network_mode: host
    environment:
      PORT: "18080"
    healthcheck:
      test: ["CMD", "/app", "-check"]
      interval: 1s
      timeout: 2s
      retries: 3
`

// berthRun: berth deploy, which sends the image (streamed from the
// laptop's engine) and returns once the release is committed and healthy.
// With -progress: berth push without --json (its progress lines kept),
// then berth deploy, as before issue 14.
func berthRun(ctx context.Context, r *robot, im *images, k int, progress bool) (*measurement, error) {
	dir := filepath.Join(r.dir, "compose")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	file := filepath.Join(dir, "compose.yaml")
	if err := os.WriteFile(file, []byte(fmt.Sprintf(composeFile, im.tags[k])), 0o644); err != nil {
		return nil, err
	}
	env := r.berthEnv()
	berth := filepath.Join(r.bin, "berth")
	m := newMeter()
	s := &berthSummary{}
	if progress {
		lines, err := pushWithProgress(ctx, dir, env, berth, r.target(), im.tags[k])
		if err != nil {
			return nil, err
		}
		s.Progress = lines
		if err := parseDone(lines, s); err != nil {
			return nil, err
		}
		m.phase("push")
	}
	deploy, err := runIn(ctx, dir, env, berth, "deploy", "-f", file, "--json", "--version", scenarioNames[k], "--to", r.target())
	if err != nil {
		return nil, err
	}
	m.phase("deploy")
	res := m.result()
	s.Deploy = json.RawMessage(strings.TrimSpace(deploy))
	var dr struct {
		Result   string  `json:"result"`
		Error    string  `json:"error"`
		Seconds  float64 `json:"seconds"`
		Transfer []struct {
			Skipped string
			Summary *transfer.Summary
		} `json:"transfer"`
	}
	if err := json.Unmarshal([]byte(deploy), &dr); err != nil {
		return nil, fmt.Errorf("berth deploy --json: %w: %s", err, deploy)
	}
	if dr.Result != "idle" {
		return nil, fmt.Errorf("berth deploy: %s: %s", dr.Result, dr.Error)
	}
	if !progress {
		for _, p := range dr.Transfer {
			if p.Summary == nil {
				return nil, fmt.Errorf("berth deploy sent no image (%s): the robot had it already?", p.Skipped)
			}
			s.Summary.Add(p.Summary)
		}
		if len(dr.Transfer) == 0 {
			return nil, fmt.Errorf("berth deploy sent no image: %s", deploy)
		}
	}
	s.DeploySeconds = dr.Seconds
	res.Berth = s
	return res, nil
}

func quietRemoveRegistryTags(r *robot) {
	if r.regPort == 0 {
		return
	}
	out, _ := run(context.Background(), "docker", "images", "--format", "{{.Repository}}:{{.Tag}}", fmt.Sprintf("127.0.0.1:%d/%s", r.regPort, imageRepo))
	if refs := strings.Fields(out); len(refs) > 0 {
		quiet("docker", append([]string{"rmi"}, refs...)...)
	}
}

func fmtPhases(p map[string]float64) string {
	var s []string
	for _, k := range []string{"push", "pull", "save_gzip_ssh_load", "deploy", "start"} {
		if v, ok := p[k]; ok {
			s = append(s, fmt.Sprintf("%s %.1fs", k, v))
		}
	}
	return strings.Join(s, ", ")
}

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// pushWithProgress runs berth push without --json, its progress lines
// (stderr) timestamped as they come.
func pushWithProgress(ctx context.Context, dir string, env []string, berth, target, ref string) ([]string, error) {
	cmd := command(ctx, env, berth, "push", "--to", target, ref)
	cmd.Dir = dir
	pipe, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	var stdout strings.Builder
	cmd.Stdout = &stdout
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	var lines []string
	sc := bufio.NewScanner(pipe)
	for sc.Scan() {
		lines = append(lines, fmt.Sprintf("%7.2fs %s", time.Since(t0).Seconds(), sc.Text()))
	}
	if err := cmd.Wait(); err != nil {
		return lines, fmt.Errorf("berth push: %w: %s", err, strings.Join(lines, "\n"))
	}
	return lines, nil
}

var doneRe = regexp.MustCompile(`done: \d+ images, (\d+) of (\d+) layers needed; (.+?) changed, (.+?) sent; (.+?) loaded; export ([\d.]+)s, read ([\d.]+)s, send ([\d.]+)s, load ([\d.]+)s`)

// parseDone reads push's closing line (sizes rounded to 0.1 KiB/MiB).
func parseDone(lines []string, s *berthSummary) error {
	for _, l := range lines {
		m := doneRe.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		s.LayersNeeded, _ = strconv.Atoi(m[1])
		s.Layers, _ = strconv.Atoi(m[2])
		s.BytesChanged, s.BytesSent, s.BytesLoaded = parseSize(m[3]), parseSize(m[4]), parseSize(m[5])
		s.SaveSeconds, _ = strconv.ParseFloat(m[6], 64)
		s.ReadSeconds, _ = strconv.ParseFloat(m[7], 64)
		s.SendSeconds, _ = strconv.ParseFloat(m[8], 64)
		s.LoadSeconds, _ = strconv.ParseFloat(m[9], 64)
		return nil
	}
	return fmt.Errorf("berth push printed no summary line: %s", strings.Join(lines, "\n"))
}

func parseSize(s string) int64 {
	var v float64
	var unit string
	if _, err := fmt.Sscanf(s, "%g %s", &v, &unit); err != nil {
		return -1
	}
	switch unit {
	case "MiB":
		v *= 1 << 20
	case "KiB":
		v *= 1 << 10
	}
	return int64(v)
}
