package reconcile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/release"
)

// fakeEngine is an engine at the edge: containers in a map, changed by the
// test's tick function each time the runner sleeps.
type fakeEngine struct {
	containers map[string]*release.Container
	calls      []string
	now        func() time.Time
	stale      map[string]bool // containers the engine holds a stale task for
}

func (f *fakeEngine) Containers(_ context.Context, app string) ([]release.Container, error) {
	var out []release.Container
	for _, c := range f.containers {
		out = append(out, *c)
	}
	return out, nil
}
func (f *fakeEngine) Inspect(_ context.Context, id string) (release.Container, error) {
	if c, ok := f.containers[id]; ok {
		return *c, nil
	}
	return release.Container{}, release.ErrNotFound
}
func (f *fakeEngine) Create(_ context.Context, rel *release.Release, service, _ string) (string, error) {
	f.calls = append(f.calls, "create "+service)
	id := service + "-" + rel.Version
	if _, ok := f.containers[id]; !ok {
		f.containers[id] = &release.Container{ID: id, Service: service, SpecHash: rel.Spec.Services[service].Hash(), Release: rel.ID, State: "created", Health: release.HealthNone}
	}
	return id, nil
}
func (f *fakeEngine) Start(_ context.Context, id string) error {
	f.calls = append(f.calls, "start "+id)
	if f.stale[id] {
		return fmt.Errorf("start container %s: task %s: already exists: %w", id, id, release.ErrConflict)
	}
	f.containers[id].State = "running"
	f.containers[id].StartedAt = f.now()
	return nil
}
func (f *fakeEngine) Stop(_ context.Context, id string, _ time.Duration) error {
	f.calls = append(f.calls, "stop "+id)
	f.containers[id].State = "exited"
	return nil
}
func (f *fakeEngine) Remove(_ context.Context, id string) error {
	f.calls = append(f.calls, "remove "+id)
	delete(f.containers, id)
	delete(f.stale, id)
	return nil
}
func (f *fakeEngine) ImageID(_ context.Context, ref string) (string, error) {
	return "sha256:" + ref, nil
}
func (f *fakeEngine) RemoveImage(context.Context, string) error { return nil }
func (f *fakeEngine) EnsureNetwork(context.Context, string, string, release.Network) error {
	return nil
}
func (f *fakeEngine) EnsureVolume(context.Context, string, string, release.Volume) error { return nil }
func (f *fakeEngine) RemoveNetworks(context.Context, string, map[string]bool) error      { return nil }
func (f *fakeEngine) Logs(_ context.Context, id string, _ bool, _ string, w, _ io.Writer) error {
	_, err := io.WriteString(w, "log of "+id+"\n")
	return err
}

type nopLocker struct{ held, released int }

func (l *nopLocker) Acquire(context.Context, string, func(string)) (func(), error) {
	l.held++
	return func() { l.released++ }, nil
}

type memJournal struct{ entries []Entry }

func (j *memJournal) Record(_ context.Context, e Entry) error {
	j.entries = append(j.entries, e)
	return nil
}

// newRunner returns a runner on a fake clock; tick runs at every sleep.
func newRunner(f *fakeEngine, tick func(now time.Time)) (*Runner, *nopLocker) {
	now := time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
	l := &nopLocker{}
	return &Runner{
		Engine: f, Locker: l, LockDir: func(string) string { return "/nonexistent" },
		Settle: 10 * time.Second, Deadline: time.Minute, Poll: time.Second,
		Now: func() time.Time { return now },
		Sleep: func(_ context.Context, d time.Duration) error {
			now = now.Add(d)
			if tick != nil {
				tick(now)
			}
			return nil
		},
	}, l
}

func single(version string, hc *release.Healthcheck) *release.Release {
	r := &release.Release{App: "a", Version: version, Spec: release.Spec{Services: map[string]release.Service{
		"web": {Image: "web", ImageID: "sha256:web", Environment: map[string]string{"V": version}, Healthcheck: hc},
	}}}
	r.Seal()
	return r
}

func TestApplyVerify(t *testing.T) {
	hc := &release.Healthcheck{Test: []string{"CMD", "/app", "-check"}}
	for _, tc := range []struct {
		name    string
		hc      *release.Healthcheck
		tick    func(c *release.Container, now, started time.Time)
		wantErr string
		minWait time.Duration
	}{
		{name: "settles", minWait: 10 * time.Second},
		{name: "restarts", tick: func(c *release.Container, now, started time.Time) {
			if now.Sub(started) > 3*time.Second {
				c.Restarts = 1
				c.StartedAt = now
			}
		}, wantErr: "restarted 1 times"},
		{name: "exits", tick: func(c *release.Container, now, started time.Time) {
			c.State, c.ExitCode = "exited", 2
		}, wantErr: "exited with code 2"},
		{name: "healthy", hc: hc, tick: func(c *release.Container, now, started time.Time) {
			c.Health = release.HealthStarting
			if now.Sub(started) > 4*time.Second {
				c.Health = release.HealthHealthy
			}
		}, minWait: 4 * time.Second},
		{name: "unhealthy", hc: hc, tick: func(c *release.Container, now, started time.Time) {
			c.Health, c.HealthLog = release.HealthUnhealthy, "probe failed: 503"
		}, wantErr: "unhealthy: probe failed: 503"},
		{name: "never-healthy", hc: hc, tick: func(c *release.Container, now, started time.Time) {
			c.Health = release.HealthStarting
		}, wantErr: "not healthy within 1m0s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v1, v2 := single("1", tc.hc), single("2", tc.hc)
			f := &fakeEngine{containers: map[string]*release.Container{
				"web-1": {ID: "web-1", Service: "web", SpecHash: v1.Spec.Services["web"].Hash(), State: "running", Health: release.HealthNone},
			}}
			r, l := newRunner(f, func(now time.Time) {
				if c := f.containers["web-2"]; c != nil && c.State != "exited" && tc.tick != nil {
					tc.tick(c, now, c.StartedAt)
				}
			})
			f.now = r.Now
			begin := r.Now()
			steps, err := Plan(v2, []release.Container{*f.containers["web-1"]})
			if err != nil {
				t.Fatal(err)
			}
			j := &memJournal{}
			err = r.Apply(context.Background(), "switch", v1, v2, steps, j, nil)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Apply: %v", err)
				}
				if waited := r.Now().Sub(begin); waited < tc.minWait {
					t.Errorf("verified after %s, want at least %s", waited, tc.minWait)
				}
				if _, ok := f.containers["web-1"]; ok {
					t.Error("commit left the old container")
				}
			} else {
				var fl *Failure
				if !errors.As(err, &fl) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Apply error = %v, want a Failure with %q", err, tc.wantErr)
				}
				if !strings.Contains(fl.Logs, "log of web-2") {
					t.Errorf("failure lacks the container's last log lines: %q", fl.Logs)
				}
				if f.containers["web-1"] == nil || f.containers["web-1"].State != "exited" {
					t.Error("old container must be kept (stopped) for the rollback")
				}
			}
			if len(j.entries) == 0 || j.entries[0].Step.Kind != steps[0].Kind {
				t.Fatalf("journal: %+v", j.entries)
			}
			for i, e := range j.entries {
				if e.Index != i || e.Step != steps[i] || e.From != v1.ID || e.To != v2.ID {
					t.Errorf("journal entry %d = %+v", i, e)
				}
			}
			if l.held != 1 || l.released != 1 {
				t.Errorf("lock held %d released %d times", l.held, l.released)
			}
		})
	}
}

// TestStartRecreatesAStaleContainer: after the engine crashed while stopping
// a container, it may refuse to start it again ("task … already exists").
// Starting it — as a rollback does for the old release — removes it and
// creates it again from the release instead of failing the app.
func TestStartRecreatesAStaleContainer(t *testing.T) {
	v1 := single("1", nil)
	f := &fakeEngine{
		containers: map[string]*release.Container{
			"web-1": {ID: "web-1", Service: "web", SpecHash: v1.Spec.Services["web"].Hash(), Release: v1.ID, State: "exited", Health: release.HealthNone},
		},
		stale: map[string]bool{"web-1": true},
	}
	r, _ := newRunner(f, nil)
	f.now = r.Now
	steps, err := Plan(v1, []release.Container{*f.containers["web-1"]})
	if err != nil {
		t.Fatal(err)
	}
	var notes []string
	if err := r.Apply(context.Background(), "rollback", v1, v1, steps, &memJournal{}, func(_ int, _ Step, msg string) { notes = append(notes, msg) }); err != nil {
		t.Fatalf("Apply: %v (calls %v)", err, f.calls)
	}
	if c := f.containers["web-1"]; c == nil || c.State != "running" {
		t.Fatalf("web-1 not running again: %+v (calls %v)", c, f.calls)
	}
	want := "start web-1 remove web-1 create web start web-1"
	if got := strings.Join(f.calls, " "); !strings.Contains(got, want) {
		t.Errorf("calls %q, want them to contain %q", got, want)
	}
	if !strings.Contains(strings.Join(notes, "\n"), "re-creating it") {
		t.Errorf("nothing said about re-creating it: %q", notes)
	}
}
