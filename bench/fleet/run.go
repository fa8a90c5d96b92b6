package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"time"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
)

// Run is one database's figures.
type Run struct {
	DB string `json:"db"`

	Register     Lat     `json:"register"`
	RegisterSecs float64 `json:"register_seconds"` // all devices, 32 at a time
	// Converge: from assigning the first release to all devices until
	// every one reported it running.
	ConvergeSecs float64 `json:"converge_seconds"`

	SteadySecs float64 `json:"steady_seconds"`
	Fetch      Lat     `json:"target_fetch"`  // full GET, no If-None-Match
	Report     Lat     `json:"state_report"`  // periodic reports
	ReportRate float64 `json:"reports_per_s"` // periodic reports per second
	// Periodic reports sent whole and as merge patches, and their mean
	// body size.
	ReportsWhole   int64          `json:"reports_whole"`
	ReportsPatched int64          `json:"reports_patched"`
	ReportBytes    float64        `json:"report_mean_bytes"`
	Polls          int64          `json:"long_polls"` // long polls answered (304 at the end of the wait)
	PollRate       float64        `json:"long_polls_per_s"`
	PollErrors     int64          `json:"poll_errors"` // over the whole run
	PollErrorKinds map[string]int `json:"poll_error_kinds,omitempty"`
	SteadyServer   ProcDelta      `json:"steady_server"`
	SteadyDB       ProcDelta      `json:"steady_db,omitempty"`
	SteadyClient   float64        `json:"steady_client_cpu_seconds"`

	// Wake: assigning the second release to all devices (one request) and
	// every long poll answering with it.
	AssignSecs float64 `json:"assign_seconds"`
	Wake       Lat     `json:"wake"` // per device, from before the assign request
	WakeAll    float64 `json:"wake_all_seconds"`
	Woken      int     `json:"woken"`
	// CPU from just before the assign request until every device was
	// woken: the server's, PostgreSQL's, the simulated devices'. Less
	// sensitive to other load on the machine than the wake-up's time.
	WakeServer ProcDelta `json:"wake_server"`
	WakeDB     ProcDelta `json:"wake_db,omitempty"`
	WakeClient float64   `json:"wake_client_cpu_seconds"`
	Apply      Lat       `json:"apply_report"` // the reports of the new release, all in a burst
	ApplySecs  float64   `json:"apply_seconds"`

	Server   ProcStat `json:"server_end"` // whole run: CPU, RSS, peak RSS
	DBProcs  ProcStat `json:"db_end"`     // PostgreSQL: postmaster and backends
	ServerAt ProcStat `json:"server_after_register"`
}

// ProcDelta is CPU used over an interval, and memory at its end.
type ProcDelta struct {
	CPU float64 `json:"cpu_seconds"`
	RSS int64   `json:"rss_bytes"`
}

func delta(a, b ProcStat) ProcDelta { return ProcDelta{CPU: b.CPU - a.CPU, RSS: b.RSS} }

// runOne runs the whole benchmark against one database.
func runOne(ctx context.Context, o options, bin, tmp, db string) (r Run, err error) {
	r.DB = db
	dsn := ""
	dbPID := 0
	if db == "postgres" {
		logf("%s: starting PostgreSQL", db)
		pg, d, err := newPostgres(ctx)
		if err != nil {
			return r, err
		}
		defer pg.Close()
		dsn, dbPID = d, pg.PID()
	}
	logf("%s: starting berth server", db)
	srv, err := startServer(ctx, bin, filepath.Join(tmp, "server-"+db), dsn, o.profile != "")
	if err != nil {
		return r, err
	}
	defer srv.stop()
	if o.profile != "" {
		// Stopped first (defers run last-in first-out), then its log kept.
		defer func() {
			if b, err := os.ReadFile(srv.log); err == nil {
				os.WriteFile(filepath.Join(o.profile, db+"-server.log"), b, 0o644)
			}
		}()
		defer srv.stop()
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\nthe server's log ends:\n%s", err, srv.logTail(20))
		}
	}()
	dbStat := func() ProcStat {
		if dbPID == 0 {
			return ProcStat{}
		}
		return procStat(dbPID, true)
	}

	tr := newTransport(o.devices)
	defer tr.CloseIdleConnections()
	admin, err := serverapi.New(srv.URL, serverapi.Options{Token: srv.Token, Transport: tr})
	if err != nil {
		return r, err
	}
	fk, err := admin.CreateFleet(ctx, "bench")
	if err != nil {
		return r, fmt.Errorf("create fleet: %w", err)
	}
	var rels []*serverapi.Release
	for _, v := range []string{"1.0.0", "1.1.0"} {
		rel, _, err := admin.CreateRelease(ctx, "bench", serverapi.CreateReleaseRequest{
			App: app, Version: v, Content: serverapi.ContentExternal,
			Spec: release.Spec{Services: map[string]release.Service{
				"planner": {Image: "registry.example/nav/planner:" + v, Environment: map[string]string{"LOG": "info"}},
				"lidar":   {Image: "registry.example/nav/lidar:" + v},
			}},
		})
		if err != nil {
			return r, fmt.Errorf("create release %s: %w", v, err)
		}
		rels = append(rels, rel)
	}

	f := &fleetSim{o: o, tr: tr, url: srv.URL}
	logf("%s: registering %d devices", db, o.devices)
	r.Register, err = func() (Lat, error) {
		l, took, err := f.register(ctx, fk.ProvisioningKey, o.devices, 32)
		r.RegisterSecs = took.Seconds()
		return l, err
	}()
	if err != nil {
		return r, err
	}
	r.ServerAt = procStat(srv.pid(), false)
	logf("%s: registered in %.1fs; first release to all", db, r.RegisterSecs)

	devCtx, stopDevs := context.WithCancel(ctx)
	waitDevs := f.run(devCtx)
	defer func() {
		stopDevs()
		waitDevs()
	}()
	// The first release: everyone takes it and reports it.
	start := time.Now()
	if err := f.assign(ctx, admin, rels[0].ID); err != nil {
		return r, err
	}
	if err := f.awaitApplied(ctx, 2*time.Minute+2*o.wait); err != nil {
		return r, fmt.Errorf("first release: %w", err)
	}
	r.ConvergeSecs = time.Since(start).Seconds()
	logf("%s: all devices run the first release after %.1fs; steady state for %s", db, r.ConvergeSecs, o.duration)

	// Steady state.
	f.reports.reset()
	f.fetches.reset()
	f.sentWhole.Store(0)
	f.sentPatched.Store(0)
	f.sentBytes.Store(0)
	s0, d0, c0 := procStat(srv.pid(), false), dbStat(), selfCPU()
	t0 := time.Now()
	f.active.Store(true)
	profiled := srv.cpuProfile(o.duration-time.Second, filepath.Join(o.profile, db+"-steady.pprof"))
	sctx, cancel := context.WithTimeout(ctx, o.duration)
	f.sampleFetches(sctx, o.fetchRate)
	cancel()
	f.active.Store(false)
	r.SteadySecs = time.Since(t0).Seconds()
	profiled()
	srv.heapProfile(filepath.Join(o.profile, db+"-heap.pprof"))
	s1, d1, c1 := procStat(srv.pid(), false), dbStat(), selfCPU()
	if err := ctx.Err(); err != nil {
		return r, err
	}
	r.SteadyServer, r.SteadyDB, r.SteadyClient = delta(s0, s1), delta(d0, d1), c1-c0
	r.Fetch, r.Report = f.fetches.lat(), f.reports.lat()
	r.ReportRate = float64(r.Report.N) / r.SteadySecs
	r.ReportsWhole, r.ReportsPatched = f.sentWhole.Load(), f.sentPatched.Load()
	if n := r.ReportsWhole + r.ReportsPatched; n > 0 {
		r.ReportBytes = float64(f.sentBytes.Load()) / float64(n)
	}
	pe := f.pollErr.lat()
	r.Polls, r.PollErrors, r.PollErrorKinds = f.polls.Load(), int64(pe.Errors), pe.Kinds
	r.PollRate = float64(r.Polls) / r.SteadySecs

	// The second release: how soon every long poll brings it.
	logf("%s: second release to all", db)
	f.applied.Store(0)
	f.applies.reset()
	round := &wakeRound{release: rels[1].ID, done: make(chan struct{})}
	round.left.Store(int64(o.devices))
	profiled = srv.cpuProfile(10*time.Second, filepath.Join(o.profile, db+"-wake.pprof"))
	defer profiled()
	defer selfProfile(o.profile, filepath.Join(o.profile, db+"-devices-wake.pprof"), 10*time.Second)()
	ws0, wd0, wc0 := procStat(srv.pid(), false), dbStat(), selfCPU()
	round.t0 = time.Now()
	f.round.Store(round)
	if err := f.assign(ctx, admin, rels[1].ID); err != nil {
		return r, err
	}
	r.AssignSecs = time.Since(round.t0).Seconds()
	select {
	case <-round.done:
	case <-time.After(time.Minute + o.wait):
	case <-ctx.Done():
		return r, ctx.Err()
	}
	ws1, wd1, wc1 := procStat(srv.pid(), false), dbStat(), selfCPU()
	r.WakeServer, r.WakeDB, r.WakeClient = delta(ws0, ws1), delta(wd0, wd1), wc1-wc0
	r.Wake = round.woke.lat()
	r.Woken = r.Wake.N
	r.WakeAll = r.Wake.Max / 1000
	if err := f.awaitApplied(ctx, 2*time.Minute); err != nil {
		return r, fmt.Errorf("second release: %w", err)
	}
	r.ApplySecs = time.Since(round.t0).Seconds()
	r.Apply = f.applies.lat()
	r.Server, r.DBProcs = procStat(srv.pid(), false), dbStat()
	logf("%s: woken %d/%d, the last after %.2fs; server RSS %.0f MiB, peak %.0f MiB", db, r.Woken, o.devices, r.WakeAll,
		float64(r.Server.RSS)/(1<<20), float64(r.Server.HWM)/(1<<20))
	return r, nil
}

// assign makes id every device's target.
func (f *fleetSim) assign(ctx context.Context, admin *serverapi.Client, id string) error {
	f.want.Store(&id)
	if _, err := admin.Assign(ctx, "bench", id, serverapi.AssignRequest{All: true}); err != nil {
		return fmt.Errorf("assign %s: %w", id, err)
	}
	return nil
}

// awaitApplied waits until every device reported the wanted release.
func (f *fleetSim) awaitApplied(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for f.applied.Load() < int64(len(f.devs)) {
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d devices reported the release within %s", f.applied.Load(), len(f.devs), limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// selfProfile saves this process's CPU profile (the simulated devices')
// over the next d into path when dir is set; the returned func waits for it.
func selfProfile(dir, path string, d time.Duration) func() {
	if dir == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		logf("devices' profile: %v", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		logf("devices' profile: %v", err)
		return func() {}
	}
	t := time.AfterFunc(d, pprof.StopCPUProfile)
	return func() {
		if t.Stop() {
			pprof.StopCPUProfile()
		}
		f.Close()
	}
}
