package server_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/server"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/store"
)

// This file is the harness of the rollout tests: a fleet server whose
// replicas can be restarted or doubled over one store, a clock that runs
// and jumps, and simulated devices that speak the device protocol as
// berthd's fleet mode does (register, long-poll the target, PUT state)
// and switch releases in no time, healthily or not, as told.

// jumpClock runs with the wall clock, plus whatever it was moved on by:
// rate limits see time pass, stage timeouts can be reached at once.
type jumpClock struct{ offset atomic.Int64 }

func (c *jumpClock) Now() time.Time       { return time.Now().Add(time.Duration(c.offset.Load())).UTC() }
func (c *jumpClock) Jump(d time.Duration) { c.offset.Add(int64(d)) }

// tick is how often the rollout engines look (StateInterval) in tests.
const tick = 20 * time.Millisecond

// replica is one server process: a store handle, a Server and its Run.
type replica struct {
	st   *store.DB
	srv  *server.Server
	stop func() // ends Run (answering long polls) and closes the store
}

// swap serves whichever replica is current: a restart keeps the URL.
type swap struct{ h atomic.Pointer[http.Handler] }

func (s *swap) ServeHTTP(w http.ResponseWriter, r *http.Request) { (*s.h.Load()).ServeHTTP(w, r) }

// fleetEnv is an env (main_test.go) whose server is a replica that can be
// restarted, and which can start more replicas over the same database.
type fleetEnv struct {
	*env
	b     backend
	clock *jumpClock
	cur   *replica
	front *swap
}

func newFleetEnv(t *testing.T, b backend) *fleetEnv {
	t.Helper()
	e := &env{t: t, logs: &logBuffer{}}
	e.dsn, e.dir = b.db(t)
	fe := &fleetEnv{env: e, b: b, clock: &jumpClock{}, front: &swap{}}
	fe.cur = fe.startReplica()
	path, err := server.Bootstrap(ctx, fe.cur.st, e.dir, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tok, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	e.adminToken = strings.TrimSpace(string(tok))
	e.secret(e.adminToken)
	fe.serve(fe.cur)
	hs := httptest.NewServer(fe.front)
	e.URL = hs.URL
	e.admin = e.client(e.adminToken)
	t.Cleanup(func() {
		hs.Close()
		fe.cur.stop()
		if t.Failed() {
			t.Logf("server log:\n%s", e.logs.String())
		}
	})
	return fe
}

// startReplica opens the store anew and runs a Server over it.
func (fe *fleetEnv) startReplica() *replica {
	t := fe.t
	t.Helper()
	st, err := store.Open(ctx, fe.dsn, fe.dir)
	if err != nil {
		t.Fatal(err)
	}
	st.Now = fe.clock.Now
	opts := server.Options{
		Logger:        slog.New(slog.NewTextHandler(fe.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:           fe.clock.Now,
		StateInterval: tick,
	}
	if st.Backend() == "postgres" {
		opts.ListenDSN = fe.dsn
	}
	r := &replica{st: st, srv: server.New(st, opts)}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.srv.Run(runCtx)
	}()
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			cancel()
			<-done
			st.Close()
		})
	}
	return r
}

// serve makes r the replica behind the env's URL.
func (fe *fleetEnv) serve(r *replica) {
	h := r.srv.Handler()
	fe.front.h.Store(&h)
	fe.st, fe.srv = r.st, r.srv
}

// restart stops the server and starts a new one over the same database,
// at the same URL: what a deploy of the server, or a crash, does.
func (fe *fleetEnv) restart() {
	fe.t.Helper()
	old := fe.cur
	old.stop()
	fe.cur = fe.startReplica()
	fe.serve(fe.cur)
}

// secondReplica starts another replica over the same database with a URL
// of its own.
func (fe *fleetEnv) secondReplica() string {
	fe.t.Helper()
	r := fe.startReplica()
	hs := httptest.NewServer(r.srv.Handler())
	fe.t.Cleanup(func() {
		hs.Close()
		r.stop()
	})
	return hs.URL
}

// simMode is how a simulated device takes a new release.
type simMode int32

const (
	simHealthy simMode = iota // switches and reports it running, healthy
	simFailing                // tries, rolls back, reports fleet_failed with a reason
	simHolding                // takes the target but does not act on it (yet)
	simOffline                // neither polls nor reports
)

// sim is a simulated device.
type sim struct {
	t    *testing.T
	Name string
	ID   string
	cl   *serverapi.Client
	mode atomic.Int32

	mu    sync.Mutex
	want  map[string]string // app → release, from the last target
	state release.CurrentState
}

// sims registers devices with a fleet's key and runs each until the test
// ends; urls, if given, spread them over replicas (device i talks to
// urls[i % len(urls)]).
func (fe *fleetEnv) sims(key string, names []string, urls ...string) []*sim {
	fe.t.Helper()
	if len(urls) == 0 {
		urls = []string{fe.URL}
	}
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	fe.t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	var out []*sim
	for i, name := range names {
		d, _, token := fe.device(key, name)
		cl, err := serverapi.New(urls[i%len(urls)], serverapi.Options{Token: token})
		if err != nil {
			fe.t.Fatal(err)
		}
		fe.t.Cleanup(cl.Close)
		s := &sim{t: fe.t, Name: name, ID: d.ID, cl: cl, want: map[string]string{},
			state: release.CurrentState{Agent: release.AgentInfo{Name: name, Version: "sim"}, Apps: map[string]release.AppState{}}}
		wg.Go(func() { s.run(runCtx) })
		out = append(out, s)
	}
	return out
}

func (s *sim) setMode(m simMode) { s.mode.Store(int32(m)) }

// run polls the target and converges on it, until ctx ends. A server
// restarting or shutting down answers 304 or refuses: it asks again.
func (s *sim) run(ctx context.Context) {
	var known int64
	for ctx.Err() == nil {
		if simMode(s.mode.Load()) == simOffline {
			sleep(ctx, tick)
			continue
		}
		t, changed, err := s.cl.Target(ctx, known, 300*time.Millisecond)
		if err != nil {
			sleep(ctx, tick)
			continue
		}
		if changed {
			known = t.Version
			want := map[string]string{}
			for app, r := range t.Apps {
				want[app] = r.ID
			}
			s.mu.Lock()
			s.want = want
			s.mu.Unlock()
		}
		s.converge(ctx)
	}
}

// converge switches the apps whose target differs from what runs, as its
// mode says, and reports each change.
func (s *sim) converge(ctx context.Context) {
	mode := simMode(s.mode.Load())
	if mode == simHolding || mode == simOffline {
		return
	}
	s.mu.Lock()
	var todo []string
	for app, id := range s.want {
		a := s.state.Apps[app]
		if a.FleetRelease != id && a.FleetFailed != id {
			todo = append(todo, app)
		}
	}
	var gone []string
	for app := range s.state.Apps {
		if _, ok := s.want[app]; !ok {
			gone = append(gone, app)
		}
	}
	s.mu.Unlock()
	for _, app := range gone {
		s.update(ctx, func(cs *release.CurrentState) { delete(cs.Apps, app) })
	}
	for _, app := range todo {
		s.mu.Lock()
		id := s.want[app]
		s.mu.Unlock()
		// In progress first, as an agent reports while it downloads.
		s.update(ctx, func(cs *release.CurrentState) {
			a := cs.Apps[app]
			a.Phase, a.Target, a.Error = release.PhaseDownloading, id, ""
			cs.Apps[app] = a
		})
		s.update(ctx, func(cs *release.CurrentState) {
			a := cs.Apps[app]
			a.Target = ""
			if mode == simFailing {
				a.Phase, a.FleetFailed, a.Error = release.PhaseRolledBack, id, "service nav: unhealthy after 30s (exit 3); rolled back"
			} else {
				a.Phase, a.FleetRelease, a.FleetFailed, a.Error, a.Release = release.PhaseIdle, id, "", "", id
			}
			cs.Apps[app] = a
		})
	}
}

// update changes the state and reports it, retrying while the server
// says it is too soon.
func (s *sim) update(ctx context.Context, fn func(*release.CurrentState)) {
	s.mu.Lock()
	fn(&s.state)
	s.state.Reported = time.Now().UTC()
	cs := s.state
	cs.Apps = map[string]release.AppState{}
	for k, v := range s.state.Apps {
		cs.Apps[k] = v
	}
	s.mu.Unlock()
	for ctx.Err() == nil {
		_, err := s.cl.ReportState(ctx, cs)
		var ae *serverapi.Error
		if err == nil || (errors.As(err, &ae) && ae.Status != http.StatusTooManyRequests && ae.Status < 500) {
			if err != nil {
				s.t.Errorf("%s: report: %v", s.Name, err)
			}
			return
		}
		sleep(ctx, tick/2)
	}
}

// runs says which fleet release the device reports for app.
func (s *sim) runs(app string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state.Apps[app].FleetRelease
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// waitFor polls cond until it holds, or fails the test after 15s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
