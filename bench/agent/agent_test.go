package agent_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/berthtest"
	"github.com/berth-robotics/berth/internal/compose"
	"github.com/berth-robotics/berth/internal/localapi"
	"github.com/berth-robotics/berth/internal/release"
)

// TestMain removes the harness's images and binaries at the end. This file
// has benchmarks only, so plain `go test ./...` times nothing; run them with
//
//	go test ./bench/... -run '^$' -bench . -benchtime 5x -count 1   (make bench)
func TestMain(m *testing.M) {
	code := m.Run()
	berthtest.Teardown()
	os.Exit(code)
}

// webNet is how the app's web service is reached from the benchmark.
type webNet string

const (
	// publishedPort: web sits on the app's bridge network and publishes
	// 127.0.0.1:port:8080, the usual Compose setup. Two containers cannot
	// publish one host port at once, so hand-over cannot use it.
	publishedPort webNet = "published-port"
	// hostNetwork: web joins the host's network and listens on one of two
	// ports, alternating between releases, so the old and the new container
	// can run side by side; a probe counts the service up when either port
	// answers (roughly what one port shared with SO_REUSEPORT would give).
	hostNetwork webNet = "host-network"
)

// threeServices is the benchmarks' app: db (healthcheck, named volume),
// worker (no healthcheck: verified by the settle time; waits for db healthy;
// gives its hand-over signal 200ms after it starts) and web (healthcheck,
// reachable from the host), all with one update strategy. Under hand-over,
// db and web hand over once healthy. version is 1 or 2; switching between them changes every
// service's environment, so all three are replaced. The images are in the
// engine already: every strategy's "download" is a lookup.
func threeServices(env *berthtest.Env, strategy string, net webNet, ports [2]string, version int) string {
	port, reach := "8080", fmt.Sprintf(`ports: ["127.0.0.1:%s:8080"]`, ports[0])
	if net == hostNetwork {
		port, reach = ports[version%2], "network_mode: host"
	}
	return fmt.Sprintf(`
services:
  db:
    image: %[1]s
    environment: {VERSION: "%[3]d", SERVICE: db, DATA_DIR: /data}
    volumes: [dbdata:/data]
    labels: {berth.update.strategy: %[2]s}
    healthcheck: {test: ["CMD", "/app", "-check"], interval: 1s, timeout: 2s, retries: 3}
  worker:
    image: %[4]s
    command: ["-handover-after", "200ms"]
    environment: {VERSION: "%[3]d", SERVICE: worker}
    labels: {berth.update.strategy: %[2]s}
    depends_on:
      db: {condition: service_healthy}
  web:
    image: %[1]s
    environment: {VERSION: "%[3]d", SERVICE: web, PORT: "%[5]s"}
    labels: {berth.update.strategy: %[2]s}
    %[6]s
    healthcheck: {test: ["CMD", "/app", "-check"], interval: 1s, timeout: 2s, retries: 3}
    depends_on: [db]
volumes:
  dbdata: {}
`, env.Images["a"], strategy, version, env.Images["b"], port, reach)
}

// webURLs are the URLs at which the web service answers, old or new.
func webURLs(net webNet, ports [2]string) []string {
	if net == hostNetwork {
		return []string{"http://127.0.0.1:" + ports[0] + "/", "http://127.0.0.1:" + ports[1] + "/"}
	}
	return []string{"http://127.0.0.1:" + ports[0] + "/"}
}

func writeFile(b *testing.B, name, content string) string {
	b.Helper()
	f := filepath.Join(b.TempDir(), name)
	if err := os.WriteFile(f, []byte(content), 0o644); err != nil {
		b.Fatal(err)
	}
	return f
}

// deploy runs `berth deploy` of file as version and times the command.
func deploy(b *testing.B, robot *berthtest.Device, file string, version int) (string, time.Duration, error) {
	b.Helper()
	start := time.Now()
	out, err := robot.Berth(b, "deploy", "-f", file, "--app", "app", "--version", strconv.Itoa(version))
	return out, time.Since(start), err
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func mean(ds []time.Duration) time.Duration {
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(len(ds))
}

// median is the middle value (the mean of the two middle ones for an even
// count): on a shared machine one slow run moves the mean, not the median.
func median(ds []time.Duration) time.Duration {
	s := slices.Sorted(slices.Values(ds))
	return (s[(len(s)-1)/2] + s[len(s)/2]) / 2
}

// BenchmarkNoChangeRedeploy deploys the same Compose file again: the agent
// finds nothing to do. berth-deploy is the whole command (goal: at most 1 s);
// the other sub-benchmarks time its parts, to show where the time goes.
func BenchmarkNoChangeRedeploy(b *testing.B) {
	env := berthtest.NewEnv(b)
	robot := env.NewDevice(b)
	port := berthtest.FreePort(b)
	file := writeFile(b, "compose.yaml", threeServices(env, release.StrategyDownloadThenKill, publishedPort, [2]string{port, port}, 1))
	if out, _, err := deploy(b, robot, file, 1); err != nil {
		b.Fatalf("first deploy: %v\n%s", err, out)
	}
	robot.AwaitHealthy(b, "app")

	b.Run("berth-deploy", func(b *testing.B) {
		var took []time.Duration
		for b.Loop() {
			out, d, err := deploy(b, robot, file, 1)
			if err != nil || !strings.Contains(out, "nothing to do") {
				b.Fatalf("redeploy: %v\n%s", err, out)
			}
			took = append(took, d)
		}
		b.ReportMetric(ms(mean(took)), "ms/op")
		b.ReportMetric(ms(median(took)), "p50-ms")
		b.ReportMetric(ms(slices.Max(took)), "max-ms")
	})
	// The CLI's process start alone: exec, Go runtime and package init.
	b.Run("berth-version", func(b *testing.B) {
		for b.Loop() {
			if out, err := exec.Command(filepath.Join(env.BinDir(), "berth"), "--version").CombinedOutput(); err != nil {
				b.Fatalf("berth --version: %v\n%s", err, out)
			}
		}
	})
	// The CLI up to the agent: process start, a cold Compose load, a failed dial.
	b.Run("berth-deploy-no-agent", func(b *testing.B) {
		none := "unix://" + filepath.Join(b.TempDir(), "none.sock")
		for b.Loop() {
			out, err := exec.Command(filepath.Join(env.BinDir(), "berth"), "deploy", "-f", file, "--app", "app", "--version", "1", "--to", none).CombinedOutput()
			if err == nil || !strings.Contains(string(out), "none.sock") {
				b.Fatalf("deploy to no agent: %v\n%s", err, out)
			}
		}
	})
	// Loading the Compose file, in this process (warm: after the first load).
	var spec *release.Spec
	b.Run("compose-load", func(b *testing.B) {
		for b.Loop() {
			var err error
			if _, spec, err = compose.Load(context.Background(), []string{file}, compose.Options{ProjectName: "app"}); err != nil {
				b.Fatal(err)
			}
		}
	})
	// The agent's side: the deploy request over its socket, in this process.
	b.Run("agent-deploy", func(b *testing.B) {
		if spec == nil {
			b.Skip("needs compose-load")
		}
		cl := robot.Client()
		defer cl.Close()
		for b.Loop() {
			resp, err := cl.Deploy(context.Background(), "app", localapi.DeployRequest{Version: "1", Spec: *spec})
			if err != nil || !resp.NoChange {
				b.Fatalf("deploy request: %v, %+v", err, resp)
			}
		}
	})
}

// BenchmarkSwitch switches the three-service app between two releases, every
// service with the same update strategy, and reports per switch (mean, and
// p50 for the median):
//   - switch-ms: `berth deploy` from start to exit (committed); it includes
//     the harness policy's settle time (1s) and the 1s healthcheck interval;
//   - downtime-ms: the longest run of failed probes of the web service,
//     probed every 10ms (0: no probe failed); max-downtime-ms is the worst;
//   - step-*-ms: where the switch time goes, from the agent's event times.
//
// The default-policy case runs the agent with its shipped defaults (settle
// 10s) instead of the harness's policy (settle 1s).
func BenchmarkSwitch(b *testing.B) {
	env := berthtest.NewEnv(b)
	for _, c := range []struct {
		strategy      string
		net           webNet
		defaultPolicy bool
	}{
		{release.StrategyDownloadThenKill, publishedPort, false},
		{release.StrategyKillThenDownload, publishedPort, false},
		{release.StrategyDeleteThenDownload, publishedPort, false},
		{release.StrategyDownloadThenKill, hostNetwork, false},
		{release.StrategyKillThenDownload, hostNetwork, false},
		{release.StrategyDeleteThenDownload, hostNetwork, false},
		{release.StrategyHandOver, hostNetwork, false},
		{release.StrategyDownloadThenKill, publishedPort, true},
	} {
		name := c.strategy + "/" + string(c.net)
		if c.defaultPolicy {
			name += "/default-policy"
		}
		b.Run(name, func(b *testing.B) { benchSwitch(b, env, c.strategy, c.net, c.defaultPolicy) })
	}
}

func benchSwitch(b *testing.B, env *berthtest.Env, strategy string, net webNet, defaultPolicy bool) {
	robot := env.NewDevice(b)
	if defaultPolicy {
		// The harness writes its short-timed policy before it starts berthd;
		// an empty policy file means the defaults.
		robot.Kill(b)
		if err := os.WriteFile(filepath.Join(robot.StateDir, "config.json"), []byte("{}"), 0o600); err != nil {
			b.Fatal(err)
		}
		robot.Start(b)
	}
	ports := [2]string{berthtest.FreePort(b), berthtest.FreePort(b)}
	files := map[int]string{}
	for _, v := range []int{1, 2} {
		files[v] = writeFile(b, fmt.Sprintf("v%d.yaml", v), threeServices(env, strategy, net, ports, v))
	}
	if out, _, err := deploy(b, robot, files[1], 1); err != nil {
		b.Fatalf("first deploy: %v\n%s", err, out)
	}
	robot.AwaitHealthy(b, "app")
	cl := robot.Client()
	defer cl.Close()
	urls := webURLs(net, ports)

	var switches, downs []time.Duration
	var client time.Duration
	steps := map[string]time.Duration{}
	var lastOut, lastDown string
	version := 1
	for b.Loop() {
		version = 3 - version
		seq := lastSeq(b, cl)
		p := startProbe(b, urls)
		out, took, err := deploy(b, robot, files[version], version)
		end := time.Now()
		time.Sleep(200 * time.Millisecond) // a gap still open at exit counts until it closes
		o := p.stop()
		down := o.length()
		if err != nil {
			b.Fatalf("switch to %d: %v\n%s", version, err, out)
		}
		if o.open {
			b.Errorf("switch to %d: web still down 200ms after the deploy committed", version)
		}
		if down == 0 && strategy != release.StrategyHandOver {
			b.Errorf("switch to %d: no probe failed, yet %s stops web before its successor starts", version, strategy)
		}
		start := end.Add(-took)
		if down > 0 {
			lastDown = fmt.Sprintf("web was down from %.2fs to %.2fs", o.from.Sub(start).Seconds(), o.to.Sub(start).Seconds())
		} else {
			lastDown = "no probe of web failed"
		}
		switches = append(switches, took)
		downs = append(downs, down)
		evs := eventsSince(b, cl, seq)
		for k, d := range stepTimes(evs) {
			steps[k] += d
		}
		if len(evs) > 0 {
			client += evs[0].Time.Sub(start) + end.Sub(evs[len(evs)-1].Time)
		}
		lastOut = out
	}
	b.Logf("switch times %v, downtimes %v", switches, downs)
	b.Logf("last switch, as berth deploy printed it (%s):\n%s", lastDown, lastOut)
	n := float64(b.N)
	b.ReportMetric(0, "ns/op") // the loop also waits and probes; switch-ms is the figure
	b.ReportMetric(ms(mean(switches)), "switch-ms/op")
	b.ReportMetric(ms(median(switches)), "p50-switch-ms")
	b.ReportMetric(ms(mean(downs)), "downtime-ms/op")
	b.ReportMetric(ms(median(downs)), "p50-downtime-ms")
	b.ReportMetric(ms(slices.Max(downs)), "max-downtime-ms")
	b.ReportMetric(ms(client)/n, "step-client-ms/op")
	for _, k := range []string{"stop", "start", "wait", "handover", "verify", "commit", "other"} {
		b.ReportMetric(ms(steps[k])/n, "step-"+k+"-ms/op")
	}
}

// prober starts a GET of the web service every 10ms, each on a fresh
// connection and without waiting for the ones in flight, so one slow request
// does not hide the others; a request that fails or takes more than 500ms
// counts as a failed probe. The service is up when one of its URLs answers 200.
type prober struct {
	stopped chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	samples []sample
}

type sample struct {
	at time.Time
	ok bool
}

// startProbe waits until the service answers, then probes it in the background.
func startProbe(b *testing.B, urls []string) *prober {
	b.Helper()
	c := &http.Client{Timeout: 500 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(10 * time.Second)
	for !up(c, urls) {
		if time.Now().After(deadline) {
			b.Fatalf("web does not answer at %v before the switch", urls)
		}
		time.Sleep(50 * time.Millisecond)
	}
	p := &prober{stopped: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		var wg sync.WaitGroup
		defer wg.Wait()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			wg.Go(func() {
				at := time.Now()
				ok := up(c, urls)
				p.mu.Lock()
				p.samples = append(p.samples, sample{at, ok})
				p.mu.Unlock()
			})
			select {
			case <-p.stopped:
				return
			case <-tick.C:
			}
		}
	}()
	return p
}

func up(c *http.Client, urls []string) bool {
	for _, u := range urls {
		resp, err := c.Get(u)
		if err != nil {
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return true
		}
	}
	return false
}

// outage is the longest run of failed probes: from the first failed probe
// to the next good one (open: there was none).
type outage struct {
	from, to time.Time
	open     bool
}

func (o outage) length() time.Duration { return o.to.Sub(o.from) }

// stop ends the probe and returns its longest outage (zero: none).
func (p *prober) stop() outage {
	close(p.stopped)
	<-p.done // the requests in flight finish
	slices.SortFunc(p.samples, func(a, b sample) int { return a.at.Compare(b.at) })
	var longest outage
	var from time.Time
	for _, s := range p.samples {
		switch {
		case !s.ok && from.IsZero():
			from = s.at
		case s.ok && !from.IsZero():
			if s.at.Sub(from) > longest.length() {
				longest = outage{from: from, to: s.at}
			}
			from = time.Time{}
		}
	}
	if last := p.samples[len(p.samples)-1]; !from.IsZero() && last.at.Sub(from) > longest.length() {
		longest = outage{from: from, to: last.at, open: true}
	}
	return longest
}

// lastSeq is the sequence number of the app's newest event.
func lastSeq(b *testing.B, cl *localapi.Client) uint64 {
	b.Helper()
	var seq uint64
	if err := cl.Events(context.Background(), "app", 0, false, func(e localapi.Event) bool {
		seq = e.Seq
		return true
	}); err != nil {
		b.Fatal(err)
	}
	return seq
}

func eventsSince(b *testing.B, cl *localapi.Client, seq uint64) []localapi.Event {
	b.Helper()
	var evs []localapi.Event
	if err := cl.Events(context.Background(), "app", seq, false, func(e localapi.Event) bool {
		evs = append(evs, e)
		return true
	}); err != nil {
		b.Fatal(err)
	}
	return evs
}

// stepTimes splits one switch's events into time per kind of step: the time
// from an event to the next goes to the step that event belongs to (the
// agent emits "step i/n: <kind> …" as a step starts, then notes while it
// waits). Stops and removals count as stop; preflight, volumes, networks,
// image lookups and the lock as other.
func stepTimes(evs []localapi.Event) map[string]time.Duration {
	group := map[string]string{
		"stop": "stop", "remove": "stop", "remove-image": "stop",
		"start": "start", "wait": "wait", "handover": "handover", "verify": "verify", "commit": "commit",
	}
	out := map[string]time.Duration{}
	kind := "other"
	for i, e := range evs {
		if rest, ok := strings.CutPrefix(e.Message, "step "); ok {
			if _, s, ok := strings.Cut(rest, ": "); ok && s != "" {
				kind = group[strings.Fields(s)[0]]
				if kind == "" {
					kind = "other"
				}
			}
		}
		if i+1 < len(evs) {
			out[kind] += evs[i+1].Time.Sub(e.Time)
		}
	}
	return out
}

// BenchmarkIdleRSS reads berthd's memory from /proc after it deployed the
// three-service app and sat idle for 5s (goal: at most 20 MB), and the size
// of the binary the harness built (go build, CGO_ENABLED=0, not stripped).
func BenchmarkIdleRSS(b *testing.B) {
	env := berthtest.NewEnv(b)
	robot := env.NewDevice(b)
	fresh := procStatus(b, robot.PID())
	port := berthtest.FreePort(b)
	file := writeFile(b, "compose.yaml", threeServices(env, release.StrategyDownloadThenKill, publishedPort, [2]string{port, port}, 1))
	if out, _, err := deploy(b, robot, file, 1); err != nil {
		b.Fatalf("deploy: %v\n%s", err, out)
	}
	robot.AwaitHealthy(b, "app")
	time.Sleep(5 * time.Second)
	var st map[string]float64
	for b.Loop() {
		st = procStatus(b, robot.PID())
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(fresh["VmRSS"], "fresh-rss-MiB")
	b.ReportMetric(st["VmRSS"], "rss-MiB")
	b.ReportMetric(st["RssAnon"], "anon-MiB")
	b.ReportMetric(st["VmHWM"], "hwm-MiB")
	fi, err := os.Stat(filepath.Join(env.BinDir(), "berthd"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(fi.Size())/(1<<20), "bin-MiB")
}

// procStatus returns the kB fields of /proc/<pid>/status, in MiB.
func procStatus(b *testing.B, pid int) map[string]float64 {
	b.Helper()
	if pid == 0 {
		b.Fatal("berthd is not running")
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || !strings.HasSuffix(v, " kB") {
			continue
		}
		n, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(v, " kB")), 64)
		if err == nil {
			out[k] = n / 1024
		}
	}
	if err := sc.Err(); err != nil {
		b.Fatal(err)
	}
	return out
}

// BenchmarkBinarySize builds berthd for each target robots run, as the
// harness does (MiB) and stripped as `make cross` does (-ldflags="-s -w",
// stripped-MiB). A build that takes more than 2 minutes is skipped.
func BenchmarkBinarySize(b *testing.B) {
	root, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		b.Fatal(err)
	}
	dir := filepath.Dir(strings.TrimSpace(string(root)))
	for _, t := range []struct{ name, goarch, goarm string }{
		{"linux-amd64", "amd64", ""},
		{"linux-arm64", "arm64", ""},
		{"linux-armv7", "arm", "7"},
	} {
		b.Run(t.name, func(b *testing.B) {
			out := b.TempDir()
			size := func(name string, args ...string) float64 {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				bin := filepath.Join(out, name)
				cmd := exec.CommandContext(ctx, "go", append(append([]string{"build", "-o", bin}, args...), "./cmd/berthd")...)
				cmd.Dir = dir
				cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+t.goarch, "GOARM="+t.goarm)
				if msg, err := cmd.CombinedOutput(); err != nil {
					if ctx.Err() != nil {
						b.Skipf("build for %s takes more than 2 minutes here", t.name)
					}
					b.Fatalf("build berthd for %s: %v\n%s", t.name, err, msg)
				}
				fi, err := os.Stat(bin)
				if err != nil {
					b.Fatal(err)
				}
				return float64(fi.Size()) / (1 << 20)
			}
			plain := size("berthd")
			stripped := size("berthd-stripped", "-ldflags=-s -w")
			for b.Loop() {
				// The builds above are the work; sizes do not vary per run.
			}
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(plain, "MiB")
			b.ReportMetric(stripped, "stripped-MiB")
		})
	}
}
