package reconcile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/berth-robotics/berth/internal/release"
)

// Engine is the part of engine.Client that Apply uses.
type Engine interface {
	Containers(ctx context.Context, app string) ([]release.Container, error)
	Inspect(ctx context.Context, id string) (release.Container, error)
	Create(ctx context.Context, rel *release.Release, service, lockDir string) (string, error)
	Start(ctx context.Context, id string) error
	Stop(ctx context.Context, id string, grace time.Duration) error
	Remove(ctx context.Context, id string) error
	ImageID(ctx context.Context, ref string) (string, error)
	EnsureNetwork(ctx context.Context, app, name string, n release.Network) error
	EnsureVolume(ctx context.Context, app, name string, v release.Volume) error
	RemoveNetworks(ctx context.Context, app string, keep map[string]bool) error
	Logs(ctx context.Context, id string, follow bool, tail string, stdout, stderr io.Writer) error
}

// Locker waits until an app may switch: its update locks are free and a
// maintenance window is open. The returned func releases what it took.
type Locker interface {
	Acquire(ctx context.Context, app string, waiting func(holder string)) (unlock func(), err error)
}

// Journal records, durably, the step about to run.
type Journal interface {
	Record(ctx context.Context, e Entry) error
}

// Entry is one journal record: which operation of which app is at which step.
type Entry struct {
	App   string    `json:"app"`
	Op    string    `json:"op"` // switch, rollback
	From  string    `json:"from,omitempty"`
	To    string    `json:"to,omitempty"`
	Index int       `json:"index"`
	Step  Step      `json:"step"`
	Time  time.Time `json:"time"`
}

// Runner runs plans against an engine.
type Runner struct {
	Engine Engine
	Locker Locker
	// LockDir returns the app's lock directory on the host.
	LockDir func(app string) string
	// Settle is how long a service without healthcheck must run without a
	// restart to count as up.
	Settle time.Duration
	// Deadline bounds verify, depends_on waits and hand-overs.
	Deadline time.Duration
	Poll     time.Duration
	Now      func() time.Time
	Sleep    func(ctx context.Context, d time.Duration) error
}

// Failure says why a switch did not go through.
type Failure struct {
	Service string
	Reason  string
	Logs    string // the last lines the failing container wrote
}

func (f *Failure) Error() string {
	s := f.Reason
	if f.Service != "" {
		s = "service " + f.Service + ": " + s
	}
	if f.Logs != "" {
		s += "\n  last log lines:\n    " + strings.ReplaceAll(strings.TrimRight(f.Logs, "\n"), "\n", "\n    ")
	}
	return s
}

// CleanupError is a failure to remove what the target no longer uses. It
// comes after verification: the target runs, and what is left over is
// removed at the next commit. It never warrants a rollback.
type CleanupError struct{ Err error }

func (e *CleanupError) Error() string {
	return "cleaning up after the switch: " + e.Err.Error() + " (the release runs; leftovers are removed at the next switch)"
}

func (e *CleanupError) Unwrap() error { return e.Err }

// Progress receives each step as it starts (msg empty) and notes while it waits.
type Progress func(i int, s Step, msg string)

// Apply runs steps for app toward target, recording a journal entry before
// each. op and from are written to the journal so a restart knows what to undo.
func (r *Runner) Apply(ctx context.Context, op string, from, target *release.Release, steps []Step, j Journal, progress Progress) (err error) {
	app := target.App
	var unlock func()
	defer func() {
		if unlock != nil {
			unlock()
		}
	}()
	entry := Entry{App: app, Op: op, To: target.ID}
	if from != nil {
		entry.From = from.ID
	}
	for i, s := range steps {
		entry.Index, entry.Step, entry.Time = i, s, r.Now()
		if err := j.Record(ctx, entry); err != nil {
			return fmt.Errorf("journal: %w", err)
		}
		if progress != nil {
			progress(i, s, "")
		}
		note := func(msg string) {
			if progress != nil {
				progress(i, s, msg)
			}
		}
		if s.Kind == KindLock {
			u, err := r.Locker.Acquire(ctx, app, note)
			if err != nil {
				return err
			}
			unlock = u
			continue
		}
		if err := r.run(ctx, target, s, note); err != nil {
			return err
		}
	}
	return nil
}

func (r *Runner) run(ctx context.Context, target *release.Release, s Step, note func(string)) error {
	e := r.Engine
	app := target.App
	switch s.Kind {
	case KindEnsureVolume:
		return e.EnsureVolume(ctx, app, s.Name, target.Spec.Volumes[s.Name])
	case KindEnsureNetwork:
		return e.EnsureNetwork(ctx, app, s.Name, target.Spec.Networks[s.Name])
	case KindFetch:
		want := target.Spec.Services[s.Service].ImageID
		id, err := e.ImageID(ctx, s.Image)
		if err != nil {
			return &Failure{Service: s.Service, Reason: fmt.Sprintf("image %s is not on this engine: %v (push it first: berth push, or docker load)", s.Image, err)}
		}
		if want != "" && id != want {
			if _, err := e.ImageID(ctx, want); err != nil {
				return &Failure{Service: s.Service, Reason: fmt.Sprintf("image %s is now %s, not the pinned %s, and the pinned image is gone", s.Image, release.ShortID(id), release.ShortID(want))}
			}
		}
		return nil
	case KindStop:
		grace := time.Duration(0)
		if svc, ok := target.Spec.Services[s.Service]; ok {
			grace = svc.StopGracePeriod.D()
		}
		return e.Stop(ctx, s.Container, grace)
	case KindRemove:
		return e.Remove(ctx, s.Container)
	case KindStart:
		if target.Spec.Services[s.Service].Strategy() == release.StrategyHandOver {
			_ = os.Remove(filepath.Join(r.LockDir(app), release.HandoverFile(s.Service, target.Spec.Services[s.Service].Hash())))
		}
		id, err := e.Create(ctx, target, s.Service, r.LockDir(app))
		if err != nil {
			return &Failure{Service: s.Service, Reason: err.Error()}
		}
		c, err := e.Inspect(ctx, id)
		if err != nil {
			return err
		}
		if c.Running() {
			return nil
		}
		err = e.Start(ctx, id)
		if errors.Is(err, release.ErrConflict) {
			// The engine holds a stale task for the container and will not
			// start it (after it crashed mid-stop): make the container
			// again. Named volumes keep the data; only the container's own
			// writable layer goes, which berth never promised to keep.
			note(fmt.Sprintf("the engine cannot start the %s container it has (%v); re-creating it", s.Service, err))
			if rerr := e.Remove(ctx, id); rerr != nil {
				return &Failure{Service: s.Service, Reason: startHint(err) + "; removing it to re-create it failed too: " + rerr.Error()}
			}
			if id, err = e.Create(ctx, target, s.Service, r.LockDir(app)); err != nil {
				return &Failure{Service: s.Service, Reason: err.Error()}
			}
			err = e.Start(ctx, id)
		}
		if err != nil {
			return &Failure{Service: s.Service, Reason: startHint(err), Logs: r.tail(ctx, id)}
		}
		return nil
	case KindWait:
		return r.waitFor(ctx, target, s.Service, s.Condition, note)
	case KindHandover:
		return r.handover(ctx, target, s.Service, note)
	case KindVerify:
		return r.verify(ctx, target, note)
	case KindCommit:
		if err := r.commit(ctx, target); err != nil {
			return &CleanupError{Err: err}
		}
		return nil
	}
	return fmt.Errorf("unknown step kind %q", s.Kind)
}

func startHint(err error) string {
	msg := err.Error()
	if strings.Contains(msg, "port is already allocated") || strings.Contains(msg, "address already in use") {
		return "cannot start: a host port it publishes is taken by another process or container (" + msg + ")"
	}
	return "cannot start: " + msg
}

// current finds the target's container of a service.
func (r *Runner) current(ctx context.Context, target *release.Release, service string) (release.Container, error) {
	cs, err := r.Engine.Containers(ctx, target.App)
	if err != nil {
		return release.Container{}, err
	}
	return find(cs, target, service)
}

// find picks the target's container of a service from a listing.
func find(cs []release.Container, target *release.Release, service string) (release.Container, error) {
	hash := target.Spec.Services[service].Hash()
	for _, c := range cs {
		if c.Service == service && c.SpecHash == hash {
			return c, nil
		}
	}
	return release.Container{}, &Failure{Service: service, Reason: "its container is gone"}
}

// check says whether a service meets cond now (ok), can never meet it (err),
// or may still (neither).
func (r *Runner) check(ctx context.Context, target *release.Release, service, cond string, restarts0 map[string]int, cs []release.Container) (bool, error) {
	c, err := find(cs, target, service)
	if err != nil {
		return false, err
	}
	fail := func(reason string) (bool, error) {
		return false, &Failure{Service: service, Reason: reason, Logs: r.tail(ctx, c.ID)}
	}
	switch {
	case cond == release.ConditionCompletedSuccessfully:
		if c.State == "exited" || c.State == "dead" {
			if c.ExitCode == 0 {
				return true, nil
			}
			return fail(fmt.Sprintf("exited with code %d; services waiting for it to complete cannot start", c.ExitCode))
		}
		return false, nil
	case c.State == "exited" || c.State == "dead":
		if c.ExitCode == 0 {
			return fail("exited (code 0) right after it started; if it is a one-shot job, make a service depend on it with condition service_completed_successfully")
		}
		return fail(fmt.Sprintf("exited with code %d", c.ExitCode))
	case c.Health != release.HealthNone: // a healthcheck from the file or the image
		switch c.Health {
		case release.HealthHealthy:
			return true, nil
		case release.HealthUnhealthy:
			reason := "healthcheck reports unhealthy"
			if c.HealthLog != "" {
				reason += ": " + c.HealthLog
			}
			return fail(reason)
		}
		return false, nil
	case cond == release.ConditionHealthy:
		return fail("has no healthcheck (neither in the Compose file nor in its image) for service_healthy to wait for")
	default:
		if restarts0 != nil {
			if n, ok := restarts0[service]; !ok {
				restarts0[service] = c.Restarts
			} else if c.Restarts > n {
				return fail(fmt.Sprintf("restarted %d times while being verified", c.Restarts-n))
			}
		}
		if c.State == "restarting" {
			return fail("is crash-looping (restarting)")
		}
		if !c.Running() {
			return false, nil
		}
		if cond == release.ConditionStarted || cond == "" && restarts0 == nil {
			return true, nil
		}
		return r.Now().Sub(c.StartedAt) >= r.Settle, nil
	}
}

func (r *Runner) waitFor(ctx context.Context, target *release.Release, service, cond string, note func(string)) error {
	deadline := r.Now().Add(r.Deadline)
	note(fmt.Sprintf("waiting for %s to be %s", service, strings.TrimPrefix(cond, "service_")))
	for {
		cs, err := r.Engine.Containers(ctx, target.App)
		if err != nil {
			return err
		}
		ok, err := r.check(ctx, target, service, cond, nil, cs)
		if err != nil || ok {
			return err
		}
		if r.Now().After(deadline) {
			c, _ := r.current(ctx, target, service)
			return &Failure{Service: service, Reason: fmt.Sprintf("not %s within %s (state %s, health %s)", strings.TrimPrefix(cond, "service_"), r.Deadline, c.State, c.Health), Logs: r.tail(ctx, c.ID)}
		}
		if err := r.Sleep(ctx, r.Poll); err != nil {
			return err
		}
	}
}

func (r *Runner) handover(ctx context.Context, target *release.Release, service string, note func(string)) error {
	svc := target.Spec.Services[service]
	timeout := svc.HandoverTimeout()
	deadline := r.Now().Add(timeout)
	name := release.HandoverFile(service, svc.Hash())
	file := filepath.Join(r.LockDir(target.App), name)
	note(fmt.Sprintf("old and new %s both run; waiting up to %s for the new one to become healthy or create /run/berth/%s ($BERTH_HANDOVER_FILE)", service, timeout, name))
	for {
		if _, err := os.Stat(file); err == nil {
			return nil
		}
		cs, err := r.Engine.Containers(ctx, target.App)
		if err != nil {
			return err
		}
		c, err := find(cs, target, service)
		if err != nil {
			return err
		}
		if !c.Running() {
			return &Failure{Service: service, Reason: fmt.Sprintf("new container stopped during hand-over (exit code %d)", c.ExitCode), Logs: r.tail(ctx, c.ID)}
		}
		if c.Health != release.HealthNone {
			if ok, err := r.check(ctx, target, service, release.ConditionHealthy, nil, cs); err != nil || ok {
				return err
			}
		}
		if r.Now().After(deadline) {
			return &Failure{Service: service, Reason: fmt.Sprintf("hand-over: the new container gave no readiness signal within %s (label %s)", timeout, release.LabelHandoverTimeout)}
		}
		if err := r.Sleep(ctx, r.Poll); err != nil {
			return err
		}
	}
}

// verify waits until every service of target is up: healthy where it has a
// healthcheck, else running with no restart for Settle; one-shot services
// exited 0. Any service that can no longer get there fails it at once.
func (r *Runner) verify(ctx context.Context, target *release.Release, note func(string)) error {
	deadline := r.Now().Add(r.Deadline)
	waits := waitedOn(target)
	restarts0 := map[string]int{}
	names := sortedKeys(target.Spec.Services)
	note(fmt.Sprintf("verifying %d services (settle %s, deadline %s)", len(names), r.Settle, r.Deadline))
	for {
		cs, err := r.Engine.Containers(ctx, target.App)
		if err != nil {
			return err
		}
		var pending []string
		for _, svc := range names {
			cond := ""
			if waits[svc] == release.ConditionCompletedSuccessfully {
				cond = release.ConditionCompletedSuccessfully
			}
			ok, err := r.check(ctx, target, svc, cond, restarts0, cs)
			if err != nil {
				return err
			}
			if !ok {
				pending = append(pending, svc)
			}
		}
		if len(pending) == 0 {
			return nil
		}
		if r.Now().After(deadline) {
			sort.Strings(pending)
			f := &Failure{Service: pending[0], Reason: fmt.Sprintf("not healthy within %s", r.Deadline)}
			if c, err := r.current(ctx, target, pending[0]); err == nil {
				f.Reason = fmt.Sprintf("not healthy within %s (state %s, health %s)", r.Deadline, c.State, c.Health)
				if c.HealthLog != "" {
					f.Reason += ": " + c.HealthLog
				}
				f.Logs = r.tail(ctx, c.ID)
			}
			return f
		}
		if err := r.Sleep(ctx, r.Poll); err != nil {
			return err
		}
	}
}

// commit removes the app's containers and networks that target does not use.
func (r *Runner) commit(ctx context.Context, target *release.Release) error {
	cs, err := r.Engine.Containers(ctx, target.App)
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range cs {
		if s, ok := target.Spec.Services[c.Service]; ok && s.Hash() == c.SpecHash {
			continue
		}
		if err := r.Engine.Remove(ctx, c.ID); err != nil {
			errs = append(errs, err)
		}
	}
	keep := map[string]bool{}
	if len(target.Spec.Services) > 0 {
		for _, n := range NetworksUsed(target) {
			keep[n] = true
		}
	}
	if err := r.Engine.RemoveNetworks(ctx, target.App, keep); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// tail returns the last lines a container wrote, for error reports.
func (r *Runner) tail(ctx context.Context, id string) string {
	if id == "" {
		return ""
	}
	var b bytes.Buffer
	tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := r.Engine.Logs(tctx, id, false, "10", &b, &b); err != nil {
		return ""
	}
	const max = 2000
	if b.Len() > max {
		return "…" + b.String()[b.Len()-max:]
	}
	return b.String()
}
