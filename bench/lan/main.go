// Command lan is berth's LAN transfer benchmark (issue 3, "Benchmark (bench/lan …)").
//
// Run it from the repository root, as root, on a machine with a Docker Engine:
//
//	go run ./bench/lan                       # everything: both links, S0–S3 (about 35–40 min here)
//	go run ./bench/lan -links loopback       # only the plain veth (about 18 min, 7 of them building images)
//	go run ./bench/lan -scenarios S1,S2      # measure only these (S0 etc. still run, unmeasured, as setup)
//	go run ./bench/lan -slow-s0 berth        # on the slow link, time S0 for berth only (saves ~4 min; the
//	                                         # others' S0 bytes are measured unshaped, their time estimated)
//	go run ./bench/lan -progress             # berth push without --json: its progress lines, timestamped
//	go run ./bench/lan -small                # a ~35 MB image: a quick check that everything works (2 min)
//
// It needs ip, tc, nsenter, dockerd, sshd (openssh-server), ssh, gzip and docker-registry (apt-get
// install docker-registry). What it does:
//
//   - A "robot": the network namespace berthlan joined to the host by the veth pair blan-h
//     (10.200.0.1) / blan-r (10.200.0.2). In it, started with nsenter: a second dockerd (own
//     config file, data-root, exec-root, pidfile and unix socket; --iptables=false --bridge=none),
//     OpenSSH's sshd on 10.200.0.2:22 (own host key, a test key), berthd against that dockerd, and
//     Debian's docker-registry (distribution 2.8) on the namespace's 127.0.0.1, reached from the
//     host through an `ssh -N -L` tunnel.
//   - A robot-like image built on the host engine FROM scratch from files of this machine: layer 1
//     system libraries (/usr/lib/x86_64-linux-gnu), layer 2 a language runtime and packages (the Go
//     tree, Python's libraries, Go module sources; ≥ 400 MB), layer 3 a compiled app (a static Go
//     HTTP server with a -check healthcheck, built from source the benchmark writes).
//   - Scenarios: S0 first deploy; S1 one line of the app changed and rebuilt; S2 one .go file in
//     the Go tree (layer 2) edited, layers 2 and 3 rebuilt; S3 one small file of layer 1 changed,
//     layers 2 and 3 rebuilt with new mtimes and identical contents.
//   - Methods, each from the same robot state (the previous scenario's image in the robot's engine):
//     registry (docker push through the tunnel + docker pull on the robot + container healthy),
//     save (docker save | gzip | ssh docker load + container healthy), berth (berth push --json,
//     then berth deploy --json; the deploy returns once the release is committed and healthy).
//     The registry and save runs go first and their image is removed from the robot's engine after
//     each (the layers the previous image shares stay); berth goes last and leaves the new release
//     running, which is the next scenario's start. The registry keeps its storage and berth its
//     content stores (robot and laptop cache) across scenarios, as their users would.
//   - Bytes on the wire: tx+rx counters of blan-h around each run (Ethernet frames: SSH, TCP, IP
//     and protocol overhead included).
//   - Links: "loopback" (the plain veth) and "slow" (tbf 20 Mbit/s on both ends of the veth; this
//     kernel has no netem, so no 20 ms delay). The slow link starts from a fresh robot and a fresh
//     laptop cache.
//
// Everything it creates is removed at the end, also on failure or Ctrl-C. Results: a markdown
// report on stdout and in bench/lan/results-<date>.md, raw figures in bench/lan/results-<date>.json.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

type config struct {
	links     []string
	measure   map[string]bool
	slowS0    string
	small     bool
	outDir    string
	binDir    string
	rateMbit  int
	storage   string
	repoRoot  string
	gzipLevel int
	progress  bool
	pushPort  int
	dev       int
}

var scenarioNames = []string{"S0", "S1", "S2", "S3"}

func main() {
	var cfg config
	links := flag.String("links", "loopback,slow", "links to run: loopback, slow")
	scen := flag.String("scenarios", "S0,S1,S2,S3", "scenarios to measure (earlier ones still run as unmeasured setup)")
	meth := flag.String("methods", strings.Join(methods, ","), "methods to measure: registry, save, berth (berth always runs: it leaves the next scenario's state)")
	flag.BoolVar(&cfg.progress, "progress", false, "run berth push without --json and keep its progress lines, timestamped (to see where its time goes; the summary is then rounded)")
	flag.StringVar(&cfg.slowS0, "slow-s0", "all", "methods whose S0 is timed over the slow link: berth, all or none (others: bytes measured unshaped, time estimated)")
	flag.BoolVar(&cfg.small, "small", false, "a small image (~60 MB): check that everything works")
	flag.StringVar(&cfg.outDir, "out", "bench/lan", "where results-<date>.{json,md} go")
	flag.StringVar(&cfg.binDir, "bin", "", "directory with prebuilt berth and berthd (default: go build ./cmd/...)")
	flag.IntVar(&cfg.rateMbit, "rate", 20, "slow link rate, Mbit/s (tbf)")
	flag.StringVar(&cfg.storage, "storage-driver", "overlay2", "the robot dockerd's storage driver")
	flag.IntVar(&cfg.gzipLevel, "gzip", 6, "gzip level of the docker save method (6 is gzip's default)")
	flag.IntVar(&cfg.pushPort, "push-port", 0, "port of berth's loopback endpoint the laptop's engine pushes to (default: a free one, the same for the whole run)")
	flag.IntVar(&cfg.dev, "dev", 5, "one-line changes berth dev deploys to examples/robot on each link (0: none)")
	flag.Parse()
	cfg.links = strings.Split(*links, ",")
	for _, l := range cfg.links {
		if l != "loopback" && l != "slow" {
			fatalf("unknown link %q", l)
		}
	}
	cfg.measure = map[string]bool{}
	for _, s := range strings.Split(*scen, ",") {
		s = strings.ToUpper(strings.TrimSpace(s))
		if s != "S0" && s != "S1" && s != "S2" && s != "S3" {
			fatalf("unknown scenario %q", s)
		}
		cfg.measure[s] = true
	}
	var ms []string
	for _, m := range strings.Split(*meth, ",") {
		if m != "registry" && m != "save" && m != "berth" {
			fatalf("unknown method %q", m)
		}
		if m != "berth" {
			ms = append(ms, m)
		}
	}
	methods = append(ms, "berth")
	if cfg.slowS0 != "berth" && cfg.slowS0 != "all" && cfg.slowS0 != "none" {
		fatalf("-slow-s0: berth, all or none")
	}
	if os.Geteuid() != 0 {
		fatalf("run as root (network namespaces, a second dockerd)")
	}
	root, err := os.Getwd()
	if err != nil {
		fatalf("%v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		fatalf("run from the repository root (go run ./bench/lan)")
	}
	cfg.repoRoot = root
	if cfg.pushPort == 0 {
		p, err := freePort()
		if err != nil {
			fatalf("%v", err)
		}
		cfg.pushPort = p
	}
	if !filepath.IsAbs(cfg.outDir) {
		cfg.outDir = filepath.Join(root, cfg.outDir)
	}

	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		logf("caught %v: stopping, then cleaning up (further signals are ignored until clean)", s)
		cancel()
		for s := range sigs {
			logf("caught %v again: still cleaning up", s)
		}
	}()

	code := 0
	func() {
		defer func() {
			if p := recover(); p != nil {
				logf("panic: %v", p)
				code = 2
			}
			runCleanups()
		}()
		if err := benchmark(ctx, &cfg); err != nil {
			logf("FAILED: %v", err)
			code = 1
		}
	}()
	if ctx.Err() != nil && code == 0 {
		code = 130
	}
	os.Exit(code)
}

func benchmark(ctx context.Context, cfg *config) error {
	if err := checkTools(); err != nil {
		return err
	}
	work, err := os.MkdirTemp("/tmp", "berthlan-")
	if err != nil {
		return err
	}
	addCleanup("remove "+work, func() { unmountUnder(work); os.RemoveAll(work) })
	logf("work directory %s", work)

	bin := cfg.binDir
	if bin == "" {
		bin = filepath.Join(work, "bin")
		for _, c := range []string{"berth", "berthd"} {
			if _, err := runIn(ctx, cfg.repoRoot, []string{"CGO_ENABLED=0"}, "go", "build", "-o", filepath.Join(bin, c), "./cmd/"+c); err != nil {
				return fmt.Errorf("build %s from the working tree: %w", c, err)
			}
		}
	}
	res := &results{
		Started: time.Now().UTC(),
		Machine: machineInfo(ctx, cfg),
		Config: map[string]any{
			"links": cfg.links, "slow_s0": cfg.slowS0, "small": cfg.small, "rate_mbit": cfg.rateMbit, "progress": cfg.progress,
			"robot_storage_driver": cfg.storage, "gzip_level": cfg.gzipLevel, "measured": keys(cfg.measure),
		},
	}
	t0 := time.Now()
	imgs, err := buildImages(ctx, cfg, filepath.Join(work, "build"))
	if err != nil {
		return err
	}
	res.BuildSeconds = time.Since(t0).Seconds()
	res.Images = imgs.stats
	logf("analysing the images (what really changed between scenarios)")
	if err := analyse(ctx, imgs); err != nil {
		return err
	}
	res.Images = imgs.stats
	for _, link := range cfg.links {
		if err := ctx.Err(); err != nil {
			return err
		}
		runs, err := runLink(ctx, cfg, link, work, bin, imgs, res)
		res.Runs = append(res.Runs, runs...)
		if err == nil && ctx.Err() == nil {
			_ = writeResults(cfg, res) // each link's figures as soon as it is done
		}
		if err != nil {
			if ctx.Err() == nil {
				_ = writeResults(cfg, res) // what was measured until the failure
			}
			return fmt.Errorf("%s link: %w", link, err)
		}
	}
	res.Finished = time.Now().UTC()
	return writeResults(cfg, res)
}

func checkTools() error {
	var missing []string
	for _, t := range []string{"ip", "tc", "nsenter", "dockerd", "docker", "ssh", "ssh-keygen", "gzip", "go"} {
		if _, err := lookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if _, err := os.Stat("/usr/sbin/sshd"); err != nil {
		missing = append(missing, "sshd (apt-get install openssh-server)")
	}
	if _, err := lookPath("docker-registry"); err != nil {
		missing = append(missing, "docker-registry (apt-get install docker-registry)")
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing: %s", strings.Join(missing, ", "))
	}
	return nil
}

func keys(m map[string]bool) []string {
	var out []string
	for _, s := range scenarioNames {
		if m[s] {
			out = append(out, s)
		}
	}
	return out
}
