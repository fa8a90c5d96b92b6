// Command fleet benchmarks the fleet server under many devices: it builds
// ./cmd/berth, runs `berth server` as a separate process over SQLite in a
// temporary directory and/or PostgreSQL (a throwaway internal/pgtest
// cluster), and runs N simulated agents in this process that speak the
// device protocol over real loopback HTTP, as berthd's fleet mode does:
// register, long-poll the target with an ETag, report state every
// -report (jittered), and take a new target by reporting its release as
// running after a short delay.
//
// It measures registration, full target fetches during steady state, how
// long it takes every long poll to wake after a release is assigned to all
// devices, state reports, and the server's memory and CPU. Results: a
// markdown report on stdout and in bench/fleet/results-<date>.{md,json}.
//
//	go run ./bench/fleet                                   # 10,000 devices, both databases
//	go run ./bench/fleet -devices 200 -duration 30s        # a one-minute check
//	go run ./bench/fleet -db sqlite -profile /tmp/prof     # with the server's CPU profiles
//
// Run it from the repository root. Everything it starts (the server, the
// PostgreSQL cluster) and the temporary directories are removed at the
// end, also on failure or Ctrl-C.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	var o options
	flag.IntVar(&o.devices, "devices", 10000, "simulated devices")
	flag.StringVar(&o.db, "db", "both", "sqlite, postgres or both")
	flag.DurationVar(&o.report, "report", 60*time.Second, "each device reports its state this often (±20% jitter)")
	flag.DurationVar(&o.duration, "duration", 3*time.Minute, "steady state measured between registration and the release")
	flag.DurationVar(&o.wait, "wait", 30*time.Second, "long poll wait the devices ask for (berthd's default poll interval)")
	flag.DurationVar(&o.settle, "settle", time.Second, "a device woken by a release reports it this long after (plus up to -settle-jitter), as berthd lets a switch's events settle for a second before it reports")
	flag.DurationVar(&o.settleJitter, "settle-jitter", 500*time.Millisecond, "see -settle; runs before 2026-12-01 03:30 used -settle 100ms -settle-jitter 400ms")
	flag.IntVar(&o.fetchRate, "fetch-rate", 20, "full target fetches per second sampled during steady state")
	flag.StringVar(&o.out, "out", "bench/fleet", "directory for results-<date>.{md,json}; empty: stdout only")
	flag.StringVar(&o.profile, "profile", "", "directory for the server's CPU profiles of steady state and of the wake, its heap after steady state and its log (<db>-steady.pprof, <db>-wake.pprof, <db>-heap.pprof, <db>-server.log); empty: none")
	flag.Parse()
	if o.db != "sqlite" && o.db != "postgres" && o.db != "both" {
		fmt.Fprintln(os.Stderr, "fleet: -db is sqlite, postgres or both")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleet:", err)
		os.Exit(1)
	}
}

type options struct {
	devices   int
	db        string
	report    time.Duration
	duration  time.Duration
	wait      time.Duration
	fetchRate int
	// A woken device reports the new release settle + up to settleJitter
	// after it was woken.
	settle, settleJitter time.Duration
	out                  string
	profile              string
}

func run(ctx context.Context, o options) error {
	if err := raiseFileLimit(); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "berth-fleetbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	logf("building ./cmd/berth")
	bin, err := buildBerth(ctx, tmp)
	if err != nil {
		return err
	}
	res := &Results{
		Started: time.Now().UTC(),
		Options: Opts{Devices: o.devices, Report: o.report.String(), Duration: o.duration.String(), Wait: o.wait.String(), FetchRate: o.fetchRate,
			Settle: o.settle.String(), SettleJitter: o.settleJitter.String()},
		Machine: machine(),
	}
	var dbs []string
	if o.db == "both" {
		dbs = []string{"sqlite", "postgres"}
	} else {
		dbs = []string{o.db}
	}
	for _, db := range dbs {
		r, err := runOne(ctx, o, bin, tmp, db)
		if err != nil {
			return fmt.Errorf("%s: %w", db, err)
		}
		res.Runs = append(res.Runs, r)
	}
	res.Finished = time.Now().UTC()
	res.Machine.LoadEnd = loadavg()
	md := res.Markdown()
	fmt.Print(md)
	if o.out != "" {
		base := fmt.Sprintf("%s/results-%s", strings.TrimSuffix(o.out, "/"), res.Started.Format("2006-01-02-1504"))
		if err := res.write(base); err != nil {
			return err
		}
		logf("wrote %s.md and %s.json", base, base)
	}
	return nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().UTC().Format("15:04:05")}, args...)...)
}

// raiseFileLimit lets this process and the server it starts hold what
// 10,000 devices need: a long poll each, a second connection while one
// reports, and the server's side of both — up to 20,000 each. The hard
// limit is raised too where that is allowed (it is not on these machines:
// 20,000 stays, and a run in which many reports are open beside the polls
// can see "too many open files", counted as network errors of the polls).
func raiseFileLimit() error {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return err
	}
	want := uint64(1 << 18)
	if l.Max < want {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}); err == nil {
			return nil
		}
	}
	l.Cur = l.Max
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
}
