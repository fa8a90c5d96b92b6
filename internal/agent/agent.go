// Package agent is berthd, the device agent: it switches each app's Compose
// release on the local Docker Engine safely (journaled, health-gated, rolled
// back on failure), honours update locks and maintenance windows, recovers
// from a crash at any step, and serves the local API on a unix socket.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/engine"
	"github.com/berth-robotics/berth/internal/localapi"
	"github.com/berth-robotics/berth/internal/reconcile"
	"github.com/berth-robotics/berth/internal/release"
)

// Agent reconciles apps on one engine.
type Agent struct {
	cfg     Config
	eng     *engine.Client
	log     *slog.Logger
	store   store
	content *content.Store
	events  *eventLog
	windows []window
	now     func() time.Time

	mu       sync.Mutex
	gcMu     sync.Mutex     // one content collection at a time
	fleet    *fleet         // fleet mode, or nil
	ops      map[string]*op // app → running operation
	lockWait map[string]release.LockInfo
	opSeq    uint64
	// journalWrites counts journal entries, for BERTH_TEST_HANG_AT_JOURNAL.
	journalWrites int
	wg            sync.WaitGroup
	ctx           context.Context // the agent's lifetime; operations run under it
}

// op is one running deploy, rollback or removal.
type op struct {
	id      uint64
	kind    string
	release string
	version string
	phase   release.Phase
	// origin: the fleet release this op switches to (fleet mode), or the
	// LAN override it makes on a fleet device.
	origin origin
}

// origin says where an operation comes from, for the fleet bookkeeping:
// the fleet release it switches to with the generation of its assignment,
// or the LAN override it makes on a fleet device. A switch under way keeps
// it in its app record (appRecord.TargetOrigin) for a restart to read.
type origin struct {
	Fleet      string            `json:"fleet,omitempty"`
	Generation int64             `json:"generation,omitempty"`
	Override   *release.Override `json:"override,omitempty"`
	// settle is a deploy's own settle time (berth dev), else the policy's;
	// not kept: a switch resumed after a restart verifies by the policy.
	settle time.Duration
}

// of names a release for people: its fleet release ID on a fleet device.
func (o origin) of(deviceID string) string {
	if o.Fleet != "" {
		return o.Fleet
	}
	return deviceID
}

// New prepares an agent. Call Run to recover and serve.
func New(cfg Config, eng *engine.Client, log *slog.Logger) (*Agent, error) {
	if err := cfg.LoadPolicy(); err != nil {
		return nil, err
	}
	ws, err := parseWindows(cfg.MaintenanceWindows)
	if err != nil {
		return nil, err
	}
	cs, err := content.Open(filepath.Join(cfg.StateDir, "content"))
	if err != nil {
		return nil, err
	}
	a := &Agent{
		cfg: cfg, eng: eng, log: log, store: store{dir: cfg.StateDir}, content: cs,
		events: newEventLog(), windows: ws, now: time.Now,
		ops: map[string]*op{}, lockWait: map[string]release.LockInfo{},
	}
	if cfg.Fleet != nil {
		a.fleet = &fleet{}
	}
	return a, nil
}

func (a *Agent) sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (a *Agent) emit(e localapi.Event) localapi.Event {
	if e.Done && e.Op != 0 {
		a.mu.Lock()
		if o := a.ops[e.App]; o != nil && o.id == e.Op {
			delete(a.ops, e.App)
		}
		a.mu.Unlock()
	}
	e = a.events.add(e)
	attrs := []any{"app", e.App}
	if e.Release != "" {
		attrs = append(attrs, "release", release.ShortID(e.Release))
	}
	if e.Error != "" {
		attrs = append(attrs, "error", e.Error)
		a.log.Warn(e.Message, attrs...)
	} else {
		a.log.Info(e.Message, attrs...)
	}
	return e
}

func (a *Agent) setLockWait(app, holder string, since time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if holder == "" {
		delete(a.lockWait, app)
		return
	}
	s := since.UTC()
	a.lockWait[app] = release.LockInfo{Holder: holder, Since: &s}
}

// runner builds the reconcile runner for one operation.
func (a *Agent) runner(force bool, lockTimeout time.Duration) *reconcile.Runner {
	if lockTimeout <= 0 {
		lockTimeout = a.cfg.LockTimeout.D()
	}
	return &reconcile.Runner{
		Engine:   a.eng,
		Locker:   &opLocker{a: a, force: force, timeout: lockTimeout},
		LockDir:  a.store.lockDir,
		Settle:   a.cfg.Settle.D(),
		Deadline: a.cfg.VerifyTimeout.D(),
		Poll:     250 * time.Millisecond,
		Now:      a.now,
		Sleep:    a.sleep,
	}
}

// journal writes reconcile entries to apps/<app>/journal.json.
type journal struct {
	a *Agent
}

func (j journal) Record(ctx context.Context, e reconcile.Entry) error {
	if err := writeJSON(filepath.Join(j.a.store.appDir(e.App), "journal.json"), e); err != nil {
		return err
	}
	j.a.testHang()
	return nil
}

// begin marks app busy with a new operation, or says who is busy with it.
func (a *Agent) begin(app, kind, rel, version string) (*op, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if o := a.ops[app]; o != nil {
		return nil, fmt.Errorf("app %s is busy: %s of release %s (%s) is under way; wait for it (berth status) and try again: %w", app, o.kind, release.ShortID(o.release), o.phase, release.ErrConflict)
	}
	a.opSeq++
	o := &op{id: a.opSeq, kind: kind, release: rel, version: version, phase: release.PhasePreflight}
	a.ops[app] = o
	return o, nil
}

// busy reports whether an operation on app is under way.
func (a *Agent) busy(app string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ops[app] != nil
}

// end ends operation o on app, if it is still the one under way (emit ends
// it as soon as its last event goes out, so that a client that saw the
// result can start the next operation at once).
func (a *Agent) end(app string, o *op) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ops[app] == o {
		delete(a.ops, app)
	}
}

func (a *Agent) setPhase(app string, p release.Phase) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if o := a.ops[app]; o != nil {
		o.phase = p
	}
}

// Deploy pins the request's images, checks it, and starts the switch in the
// background. Errors found before anything changes come back at once.
func (a *Agent) Deploy(ctx context.Context, app string, req localapi.DeployRequest) (*localapi.OpResponse, error) {
	return a.deploy(ctx, app, req, a.lanOrigin(app, req.By, req.OverrideTTL.D()))
}

func (a *Agent) deploy(ctx context.Context, app string, req localapi.DeployRequest, orig origin) (*localapi.OpResponse, error) {
	files, err := a.bindFiles(&req.Spec, req.Files)
	if err != nil {
		return nil, err
	}
	rel, err := a.pin(ctx, app, req)
	if err != nil {
		return nil, err
	}
	orig.settle = req.Settle.D()
	if err := a.writeFiles(app, files); err != nil {
		return nil, err
	}
	return a.start(app, "deploy", rel, req.Force, req.LockTimeout.D(), orig)
}

// pin makes the release a deploy request asks for: validated, its images
// resolved to the engine's image IDs, sealed.
func (a *Agent) pin(ctx context.Context, app string, req localapi.DeployRequest) (*release.Release, error) {
	rel := &release.Release{App: app, Version: req.Version, Created: a.now().UTC(), Spec: req.Spec}
	if rel.Version == "" {
		rel.Version = "unversioned"
	}
	if err := rel.Validate(); err != nil {
		return nil, fmt.Errorf("release refused, nothing changed: %w", err)
	}
	if _, err := a.resolveImages(ctx, &rel.Spec, false); err != nil {
		return nil, err
	}
	if err := rel.Spec.Bind(); err != nil {
		return nil, err
	}
	rel.Seal()
	return rel, nil
}

// Rollback switches app back to a kept release: the one before the current,
// or id.
func (a *Agent) Rollback(ctx context.Context, app string, req localapi.RollbackRequest) (*localapi.OpResponse, error) {
	rec, err := a.store.record(app)
	if err != nil {
		return nil, err
	}
	id := req.Release
	if id == "" {
		for _, k := range rec.Kept {
			if k != rec.Current {
				id = k
				break
			}
		}
		if id == "" {
			return nil, fmt.Errorf("app %s has no earlier release kept on this device to roll back to (berth releases lists them): %w", app, release.ErrNotFound)
		}
	} else {
		id = a.resolveKept(rec, id)
	}
	rel, err := a.store.release(app, id)
	if err != nil {
		return nil, err
	}
	for name, s := range rel.Spec.Services {
		if _, err := a.eng.ImageID(ctx, s.ImageID); err != nil {
			return nil, fmt.Errorf("release %s: image of service %s (%s) is no longer on the engine; push it again: %w", release.ShortID(id), name, s.Image, release.ErrNotFound)
		}
	}
	return a.start(app, "rollback", rel, req.Force, 0, a.lanOrigin(app, "", 0))
}

// resolveKept expands a short release ID to a kept one.
func (a *Agent) resolveKept(rec appRecord, id string) string {
	for _, k := range rec.Kept {
		if k == id || strings.HasPrefix(strings.TrimPrefix(k, "sha256:"), strings.TrimPrefix(id, "sha256:")) {
			return k
		}
	}
	return id
}

func (a *Agent) start(app, kind string, rel *release.Release, force bool, lockTimeout time.Duration, orig origin) (*localapi.OpResponse, error) {
	if err := a.preflightDisk(); err != nil {
		return nil, err
	}
	if err := a.preflightEngine(a.ctx, rel); err != nil {
		return nil, err
	}
	if err := a.checkFiles(rel); err != nil {
		return nil, err
	}
	o, err := a.begin(app, kind, rel.ID, rel.Version)
	if err != nil {
		return nil, err
	}
	o.origin = orig
	resp := &localapi.OpResponse{Op: o.id, Release: rel.ID, Version: rel.Version, Seq: a.events.last()}
	fail := func(err error) (*localapi.OpResponse, error) {
		a.end(app, o)
		return nil, err
	}
	rec, err := a.store.record(app)
	if err != nil {
		return fail(err)
	}
	observed, err := a.eng.Containers(a.ctx, app)
	if err != nil {
		return fail(err)
	}
	steps, err := reconcile.Plan(rel, observed)
	if err != nil {
		return fail(fmt.Errorf("release refused, nothing changed: %w", err))
	}
	if err := a.store.saveRelease(rel); err != nil {
		return fail(err)
	}
	if steps == nil && rec.Current == rel.ID {
		if rec.FleetRelease != orig.Fleet || rec.Override != orig.Override || rec.Generation != orig.Generation {
			rec.FleetRelease, rec.Override, rec.Generation = orig.Fleet, orig.Override, orig.Generation
			if err := a.store.saveRecord(app, rec); err != nil {
				return fail(err)
			}
		}
		a.end(app, o)
		resp.NoChange = true
		a.emit(localapi.Event{Op: o.id, App: app, Release: rel.ID, Phase: release.PhaseIdle, Message: "release " + release.ShortID(rel.ID) + " already runs; nothing to do", Done: true})
		return resp, nil
	}
	from, err := a.store.release(app, rec.Current)
	if err != nil {
		return fail(fmt.Errorf("the record of the running release %s is unreadable (%v), so a failed switch could not go back to it; nothing changed; berth rm --app %s and deploy again, or restore %s: %w", release.ShortID(rec.Current), err, app, a.store.appDir(app), release.ErrConflict))
	}
	rec.Target = rel.ID
	rec.TargetOrigin = &orig
	rec.Phase = release.PhasePreflight
	if err := a.store.saveRecord(app, rec); err != nil {
		return fail(err)
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer a.end(app, o)
		a.runSwitch(o, from, rel, steps, force, lockTimeout)
	}()
	return resp, nil
}

// runSwitch runs a switch plan; on failure it rolls back to from.
func (a *Agent) runSwitch(o *op, from, rel *release.Release, steps []reconcile.Step, force bool, lockTimeout time.Duration) {
	ctx := a.ctx
	app := rel.App
	a.emit(localapi.Event{Op: o.id, App: app, Release: rel.ID, Phase: release.PhasePreflight,
		Message: fmt.Sprintf("%s %s (release %s): %d steps", o.kind, rel.Version, release.ShortID(rel.ID), len(steps))})
	progress := func(i int, s reconcile.Step, msg string) {
		a.setPhase(app, s.Phase())
		if msg == "" {
			msg = fmt.Sprintf("step %d/%d: %s", i+1, len(steps), s)
		}
		a.emit(localapi.Event{Op: o.id, App: app, Release: rel.ID, Phase: s.Phase(), Message: msg})
	}
	r := a.runner(force, lockTimeout)
	if o.origin.settle > 0 {
		r.Settle = o.origin.settle // a dev loop's shorter settle
	}
	err := r.Apply(ctx, "switch", from, rel, steps, journal{a}, progress)
	if ctx.Err() != nil {
		return // shutting down: the journal stays, the next start finishes the job
	}
	var cleanup *reconcile.CleanupError
	if err == nil || errors.As(err, &cleanup) {
		a.committed(o, rel, err)
		return
	}
	a.rollBack(o, from, rel, err, false)
}

// committed records rel as app's current release; warning is a cleanup
// error that came after verification, if any.
func (a *Agent) committed(o *op, rel *release.Release, warning error) {
	app := rel.App
	rec, _ := a.store.record(app)
	rec.Current = rel.ID
	rec.Target = rel.ID
	rec.Phase = release.PhaseIdle
	rec.Error = ""
	if warning != nil {
		rec.Error = warning.Error()
	}
	delete(rec.Failed, rel.ID)
	rec.FleetRelease, rec.Override, rec.Generation = o.origin.Fleet, o.origin.Override, o.origin.Generation
	if o.origin.Fleet != "" {
		rec.clearFleetVerdict()
	}
	rec.TargetOrigin, rec.Interrupted = nil, nil
	kept := []string{rel.ID}
	for _, k := range rec.Kept {
		if k != rel.ID {
			kept = append(kept, k)
		}
	}
	for len(kept) > a.cfg.Retain {
		drop := kept[len(kept)-1]
		kept = kept[:len(kept)-1]
		if err := a.store.dropRelease(app, drop); err != nil {
			a.log.Warn("drop old release record", "app", app, "release", release.ShortID(drop), "error", err)
		}
		delete(rec.Failed, drop)
	}
	rec.Kept = kept
	a.gcFiles(app, kept)
	if err := a.store.saveRecord(app, rec); err != nil {
		a.emit(localapi.Event{Op: o.id, App: app, Release: rel.ID, Phase: release.PhaseFailed, Message: "could not record the committed release", Error: err.Error(), Done: true})
		return
	}
	if err := a.store.clearJournal(app); err != nil {
		a.log.Warn("clear journal", "app", app, "error", err)
	}
	a.emit(localapi.Event{Op: o.id, App: app, Release: rel.ID, Phase: release.PhaseIdle, Message: fmt.Sprintf("release %s (%s) committed", release.ShortID(rel.ID), rel.Version), Done: true})
	a.collectContent(a.ctx)
}

// rollBack brings app back to from after a failed switch to failed.
// interrupted says the switch was cut short by a berthd restart: not the
// release's fault, so it is not recorded as failed (unless that keeps
// happening: maxInterrupted).
func (a *Agent) rollBack(o *op, from, failed *release.Release, cause error, interrupted bool) {
	app := failed.App
	reason := cause.Error()
	locked := errors.Is(cause, release.ErrLocked)
	name := release.ShortID(o.origin.of(failed.ID))
	if from != nil && from.ID == failed.ID {
		// A redeploy of the running release to repair it: there is nothing
		// older to go back to, and the release itself is not to blame.
		rec, _ := a.store.record(app)
		rec.Phase, rec.Error = release.PhaseFailed, fmt.Sprintf("repair of release %s (%s) failed: %s", name, failed.Version, reason)
		rec.TargetOrigin = nil
		a.saveThenClear(app, rec, true)
		a.emit(localapi.Event{Op: o.id, App: app, Release: failed.ID, Phase: rec.Phase, Message: rec.Error, Error: reason, Done: true})
		return
	}
	a.setPhase(app, release.PhaseRollingBack)
	to := "no release (first deploy)"
	if from != nil {
		to = "release " + release.ShortID(from.ID) + " (" + from.Version + ")"
	}
	a.emit(localapi.Event{Op: o.id, App: app, Release: failed.ID, Phase: release.PhaseRollingBack, Message: "switch failed; rolling back to " + to, Error: reason})
	var err error
	for attempt, wait := range rollbackWaits {
		if a.sleep(a.ctx, wait) != nil {
			return // shutting down: the journal stays, the next start finishes the rollback
		}
		if err = a.restore(a.ctx, app, from, failed.ID, nil); err == nil {
			break
		}
		if a.ctx.Err() != nil {
			return
		}
		a.emit(localapi.Event{Op: o.id, App: app, Release: failed.ID, Phase: release.PhaseRollingBack, Message: fmt.Sprintf("rollback attempt %d failed; retrying", attempt+1), Error: err.Error()})
	}
	rec, _ := a.store.record(app)
	rec.Target = failed.ID
	if interrupted {
		if rec.Interrupted == nil {
			rec.Interrupted = map[string]int{}
		}
		rec.Interrupted[failed.ID]++
		if rec.Interrupted[failed.ID] >= maxInterrupted {
			reason = fmt.Sprintf("%s; berthd stopped during %d switches to this release in a row, so it is not tried again on its own (see berthd's log)", reason, rec.Interrupted[failed.ID])
			interrupted = false
		}
	}
	if err != nil {
		rec.Phase = release.PhaseFailed
		rec.Error = fmt.Sprintf("switch to %s failed: %s; then the rollback to %s failed too: %v; the app may run a mix of releases; berthd retries at its next start; see berth status, and try berth rollback --app %s", name, reason, to, err, app)
	} else {
		rec.Phase = release.PhaseRolledBack
		rec.Error = fmt.Sprintf("release %s (%s) was rolled back: %s", name, failed.Version, reason)
		if locked {
			rec.Error = reason
		}
		if from == nil {
			rec.Phase = release.PhaseFailed
			rec.Error = fmt.Sprintf("release %s (%s) failed and was removed (there was no earlier release): %s", name, failed.Version, reason)
		}
	}
	if !locked && !interrupted {
		if rec.Failed == nil {
			rec.Failed = map[string]string{}
		}
		rec.Failed[failed.ID] = reason
		if o.origin.Fleet != "" {
			rec.clearFleetVerdict()
			rec.FleetFailed, rec.FleetReason, rec.FleetGeneration = o.origin.Fleet, rec.Error, o.origin.Generation
		}
	}
	rec.TargetOrigin = nil
	a.saveThenClear(app, rec, err == nil)
	a.emit(localapi.Event{Op: o.id, App: app, Release: failed.ID, Phase: rec.Phase, Message: rec.Error, Error: reason, Done: true})
}

// rollbackWaits are the pauses before each attempt of a rollback.
var rollbackWaits = []time.Duration{0, 2 * time.Second, 5 * time.Second, 15 * time.Second}

// maxInterrupted is how many switches to one release a berthd restart may
// cut short before the release counts as failed (it may be what brings
// berthd down: a load that exhausts the device, say).
const maxInterrupted = 3

// saveThenClear saves the app record and then, if done, clears the journal:
// in that order, so a crash between the two replays the journal rather than
// losing the outcome.
func (a *Agent) saveThenClear(app string, rec appRecord, done bool) {
	if err := a.store.saveRecord(app, rec); err != nil {
		a.log.Error("save app record", "app", app, "error", err)
		return
	}
	if done {
		if err := a.store.clearJournal(app); err != nil {
			a.log.Warn("clear journal", "app", app, "error", err)
		}
	}
}

// restore runs a rollback plan to target (nil: no containers at all). The
// journal names failedID as the release being undone. A cleanup error at the
// end does not make the rollback fail.
func (a *Agent) restore(ctx context.Context, app string, target *release.Release, failedID string, progress reconcile.Progress) error {
	observed, err := a.eng.Containers(ctx, app)
	if err != nil {
		return err
	}
	steps, err := reconcile.PlanRollback(target, observed)
	if err != nil {
		return err
	}
	applyTo := target
	if applyTo == nil {
		applyTo = &release.Release{App: app}
	}
	var undone *release.Release
	if failedID != "" {
		undone = &release.Release{App: app, ID: failedID}
	}
	err = a.runner(true, 0).Apply(ctx, "rollback", undone, applyTo, steps, journal{a}, progress)
	var cleanup *reconcile.CleanupError
	if errors.As(err, &cleanup) {
		a.log.Warn("rollback done, cleanup incomplete", "app", app, "error", err)
		err = nil
	}
	if err != nil || target == nil {
		return err
	}
	// What the plan took for running may have stopped since it looked (a
	// stop the engine was still carrying out): a rollback is done only
	// when the release it restores runs.
	observed, err = a.eng.Containers(ctx, app)
	if err != nil {
		return err
	}
	return reconcile.Restored(target, observed)
}

// Recover finishes or undoes what a previous run left half done, app by app:
// a switch is rolled back to the release before it, an interrupted rollback
// or removal is completed.
func (a *Agent) Recover(ctx context.Context) error {
	apps, err := a.store.apps()
	if err != nil {
		return err
	}
	var errs []error
	for _, app := range apps {
		j, err := a.store.journal(app)
		if err == nil && j == nil {
			// No journal: a phase not at rest means berthd stopped after
			// accepting a deploy and before its first step.
			if rec, err := a.store.record(app); err == nil && !rec.Phase.AtRest() {
				rec.Phase = release.PhaseFailed
				rec.Error = fmt.Sprintf("berthd stopped before the switch to %s began; nothing changed; deploy again", release.ShortID(rec.Target))
				if rec.Current != "" {
					rec.Phase = release.PhaseIdle
				}
				a.saveThenClear(app, rec, false)
			}
			continue
		}
		if err == nil {
			err = a.recoverApp(ctx, app, j)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("app %s: %w", app, err))
			if rec, rerr := a.store.record(app); rerr == nil {
				rec.Phase = release.PhaseFailed
				rec.Error = fmt.Sprintf("recovery after a restart failed: %v; the app may run a mix of releases; see berth status, then berth rollback --app %s or deploy again", err, app)
				a.saveThenClear(app, rec, false)
			}
		}
	}
	return errors.Join(errs...)
}

func (a *Agent) recoverApp(ctx context.Context, app string, j *reconcile.Entry) error {
	rec, err := a.store.record(app)
	if err != nil {
		return err
	}
	o := &op{kind: "recovery"}
	a.finishInFlight(ctx, app, j)
	switch {
	case j.Op == "switch" && j.Step.Kind == reconcile.KindCommit:
		// The new release had passed verification: finish the commit.
		rel, err := a.store.release(app, j.To)
		if err != nil {
			return err
		}
		if err := a.runner(true, 0).Apply(ctx, "switch", nil, rel, []reconcile.Step{{Kind: reconcile.KindCommit}}, journal{a}, nil); err != nil {
			return err
		}
		if rec.TargetOrigin != nil && rec.Target == j.To {
			o.origin = *rec.TargetOrigin
		}
		a.emit(localapi.Event{App: app, Release: rel.ID, Phase: release.PhaseIdle, Message: "berthd restarted during the commit of " + release.ShortID(rel.ID) + "; finished it"})
		a.committed(o, rel, nil)
		return nil
	case j.Op == "switch":
		from, err := a.store.release(app, j.From)
		if err != nil {
			return err
		}
		to, _ := a.store.release(app, j.To)
		if to == nil {
			to = &release.Release{App: app, ID: j.To}
		}
		if rec.TargetOrigin != nil && rec.Target == j.To {
			o.origin = *rec.TargetOrigin
		}
		again := "deploy again to retry"
		if o.origin.Fleet != "" {
			again = "the fleet agent tries it again"
		}
		cause := fmt.Errorf("berthd stopped during the switch (at step %d: %s); %s", j.Index+1, j.Step, again)
		a.rollBack(o, from, to, cause, true)
		return nil
	case j.Op == "rollback":
		var target *release.Release
		if j.To != "" {
			if target, err = a.store.release(app, j.To); err != nil {
				return err
			}
		}
		if err := a.restore(ctx, app, target, j.From, nil); err != nil {
			return err
		}
		msg := "berthd restarted during a rollback; finished it"
		rec.Phase = release.PhaseRolledBack
		if target == nil {
			rec.Phase = release.PhaseFailed
		}
		if j.From != "" {
			if rec.Failed == nil {
				rec.Failed = map[string]string{}
			}
			if rec.Failed[j.From] == "" {
				rec.Failed[j.From] = "rolled back (berthd restarted during the rollback, which it then finished)"
			}
			rec.Error = fmt.Sprintf("release %s was rolled back: %s", release.ShortID(j.From), rec.Failed[j.From])
		}
		a.emit(localapi.Event{App: app, Phase: rec.Phase, Message: msg})
		a.saveThenClear(app, rec, true)
		return nil
	case j.Op == "remove":
		_, err := a.remove(ctx, app, false)
		return err
	}
	return fmt.Errorf("journal names unknown operation %q", j.Op)
}

// finishInFlight waits for the engine to finish the step the journal names,
// if the engine may still be at it without berthd. Only a stop lasts: the
// engine goes on stopping a container whose stop berthd asked for before
// it died, for up to its grace period, and then kills it. Planned before
// then, a rollback would count that container as running and leave it to
// die. So the stop is asked for again, which returns once the container is
// down; the plan then starts it again.
func (a *Agent) finishInFlight(ctx context.Context, app string, j *reconcile.Entry) {
	if j.Step.Kind != reconcile.KindStop || j.Step.Container == "" {
		return
	}
	grace := time.Duration(0) // the container's own stop timeout
	for _, id := range []string{j.From, j.To} {
		if r, _ := a.store.release(app, id); r != nil {
			if g := r.Spec.Services[j.Step.Service].StopGracePeriod.D(); g > grace {
				grace = g
			}
		}
	}
	a.emit(localapi.Event{App: app, Phase: release.PhaseRollingBack, Message: fmt.Sprintf("berthd restarted while the engine was stopping %s container %s; waiting for that stop to end before going on", j.Step.Service, release.ShortID(j.Step.Container))})
	if err := a.eng.Stop(ctx, j.Step.Container, grace); err != nil {
		a.log.Warn("finish the interrupted stop", "app", app, "container", release.ShortID(j.Step.Container), "error", err)
	}
}

// Remove removes app's containers and networks (and its volumes if asked)
// and forgets its releases. On a fleet device, an app of the fleet target
// that is removed stays removed, as an override by whom asks (by), until
// the app is assigned again (berth device reclaim): its record says so.
func (a *Agent) Remove(ctx context.Context, app string, volumes bool, by string) (*localapi.RemoveResponse, error) {
	if !release.ValidName(app) {
		return nil, fmt.Errorf("app name %q: %w", app, release.ErrInvalid)
	}
	if _, err := os.Stat(a.store.appDir(app)); errors.Is(err, os.ErrNotExist) {
		cs, err := a.eng.Containers(ctx, app)
		if err != nil {
			return nil, err
		}
		if len(cs) == 0 {
			return nil, fmt.Errorf("app %s is not on this device: %w", app, release.ErrNotFound)
		}
	}
	o, err := a.begin(app, "removal", "", "")
	if err != nil {
		return nil, err
	}
	defer a.end(app, o)
	// A removal, once started, finishes even if the client goes away.
	resp, err := a.remove(context.WithoutCancel(ctx), app, volumes)
	if err != nil {
		return resp, err
	}
	if orig := a.lanOrigin(app, by, 0); orig.Override != nil {
		orig.Override.Removed = true
		rec := appRecord{Phase: release.PhaseIdle, Override: orig.Override, Error: fmt.Sprintf("removed over the LAN by %s; the fleet release returns when the app is assigned again (berth device reclaim)", orig.Override.By)}
		if err := a.store.saveRecord(app, rec); err != nil {
			return resp, fmt.Errorf("the app is removed, but berthd could not record that it stays removed (%v): the fleet release may come back at once", err)
		}
		a.emit(localapi.Event{App: app, Phase: release.PhaseIdle, Message: rec.Error})
	}
	return resp, nil
}

func (a *Agent) remove(ctx context.Context, app string, volumes bool) (*localapi.RemoveResponse, error) {
	observed, err := a.eng.Containers(ctx, app)
	if err != nil {
		return nil, err
	}
	steps, _ := reconcile.PlanRollback(nil, observed)
	if err := a.runner(true, 0).Apply(ctx, "remove", nil, &release.Release{App: app}, steps, journal{a}, nil); err != nil {
		return nil, err
	}
	resp := &localapi.RemoveResponse{Containers: len(observed)}
	if volumes {
		names, err := a.eng.Volumes(ctx, app)
		if err != nil {
			return nil, err
		}
		for _, v := range names {
			if err := a.eng.RemoveVolume(ctx, v); err != nil {
				return resp, err
			}
			resp.Volumes = append(resp.Volumes, v)
		}
	}
	if err := os.RemoveAll(a.store.appDir(app)); err != nil {
		return resp, err
	}
	a.emit(localapi.Event{App: app, Phase: release.PhaseIdle, Message: fmt.Sprintf("app %s removed (%d containers, volumes removed: %d)", app, resp.Containers, len(resp.Volumes)), Done: true})
	return resp, nil
}

// State reports every app with its services as the engine sees them.
func (a *Agent) State(ctx context.Context) (*release.CurrentState, error) {
	st := &release.CurrentState{
		Agent:    release.AgentInfo{Name: a.cfg.Name, Version: a.cfg.Version, Arch: runtime.GOARCH},
		Apps:     map[string]release.AppState{},
		Reported: a.now().UTC(),
	}
	if info, err := a.eng.Info(ctx); err == nil {
		st.Agent.EngineVersion, st.Agent.EngineAPI = info.Version, info.APIVersion
		st.Disk = &release.Disk{StateDirFree: freeBytes(a.cfg.StateDir), EngineDirFree: freeBytes(info.RootDir)}
	}
	apps, err := a.store.apps()
	if err != nil {
		return nil, err
	}
	containers, err := a.eng.Containers(ctx, "")
	if err != nil {
		return nil, err
	}
	for _, app := range apps {
		rec, err := a.store.record(app)
		if err != nil {
			return nil, err
		}
		as := release.AppState{Release: rec.Current, Phase: rec.Phase, Error: rec.Error, Target: rec.Target, Updated: rec.Updated, Services: map[string]release.ServiceState{},
			FleetRelease: rec.FleetRelease, FleetFailed: rec.FleetFailed, FleetRefused: rec.FleetRefused, FleetReason: rec.FleetReason,
			FleetGeneration: rec.FleetGeneration, Generation: rec.Generation, Override: rec.Override}
		if as.Phase == "" {
			as.Phase = release.PhaseIdle
		}
		cur, _ := a.store.release(app, rec.Current)
		if cur != nil {
			as.Version = cur.Version
		}
		for _, id := range rec.Kept {
			k := release.KeptRelease{ID: id}
			if r, _ := a.store.release(app, id); r != nil {
				k.Version = r.Version
			}
			as.Kept = append(as.Kept, k)
		}
		a.mu.Lock()
		if o := a.ops[app]; o != nil {
			as.Phase = o.phase
		}
		if l, ok := a.lockWait[app]; ok {
			l := l
			as.Lock = &l
		}
		a.mu.Unlock()
		if as.Lock == nil {
			if al, ok := readAPILock(a.store.appDir(app), a.now()); ok {
				as.Lock = &release.LockInfo{Holder: al.Holder, Since: &al.Since, Expires: &al.Expires}
			}
		}
		for _, c := range containers {
			if c.App != app {
				continue
			}
			prev, seen := as.Services[c.Service]
			wanted := cur != nil && cur.Spec.Services[c.Service].Hash() == c.SpecHash
			if seen && !wanted && (prev.State == "running" || c.State != "running") {
				continue
			}
			as.Services[c.Service] = release.ServiceState{Container: c.ID, State: c.State, Health: c.Health, Restarts: c.Restarts, Release: c.Release, Image: c.Image, ExitCode: c.ExitCode}
		}
		st.Apps[app] = as
	}
	return st, nil
}

// Releases lists app's kept releases, newest first.
func (a *Agent) Releases(app string) ([]localapi.KeptRelease, error) {
	rec, err := a.store.record(app)
	if err != nil {
		return nil, err
	}
	if len(rec.Kept) == 0 && rec.Target == "" {
		return nil, fmt.Errorf("app %s has no releases on this device: %w", app, release.ErrNotFound)
	}
	ids := append([]string(nil), rec.Kept...)
	if rec.Target != "" && rec.Target != rec.Current {
		ids = append([]string{rec.Target}, ids...)
	}
	out := []localapi.KeptRelease{}
	for _, id := range ids {
		r, err := a.store.release(app, id)
		if err != nil {
			continue
		}
		out = append(out, localapi.KeptRelease{ID: r.ID, Version: r.Version, Created: r.Created, Current: r.ID == rec.Current, Failed: rec.Failed[r.ID], Services: sortedNames(r.Spec.Services)})
	}
	return out, nil
}

// Lock takes app's update lock through the API until the TTL runs out.
func (a *Agent) Lock(app string, req localapi.LockRequest) (*release.LockInfo, error) {
	if !release.ValidName(app) {
		return nil, fmt.Errorf("app name %q: %w", app, release.ErrInvalid)
	}
	ttl := req.TTL.D()
	if ttl <= 0 || ttl > 7*24*time.Hour {
		return nil, fmt.Errorf("lock ttl %s: want between 1s and 168h: %w", ttl, release.ErrInvalid)
	}
	holder := req.Holder
	if holder == "" {
		holder = "api"
	}
	now := a.now().UTC()
	al := apiLock{Holder: holder, Since: now, Expires: now.Add(ttl)}
	if err := writeJSON(filepath.Join(a.store.appDir(app), "api-lock.json"), al); err != nil {
		return nil, err
	}
	a.emit(localapi.Event{App: app, Message: fmt.Sprintf("update lock taken by %s until %s", holder, al.Expires.Format(time.RFC3339))})
	return &release.LockInfo{Holder: holder, Since: &al.Since, Expires: &al.Expires}, nil
}

// Unlock drops app's API update lock.
func (a *Agent) Unlock(app string) error {
	if !release.ValidName(app) {
		return fmt.Errorf("app name %q: %w", app, release.ErrInvalid)
	}
	err := os.Remove(filepath.Join(a.store.appDir(app), "api-lock.json"))
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("app %s has no API update lock: %w", app, release.ErrNotFound)
	}
	if err == nil {
		a.emit(localapi.Event{App: app, Message: "update lock released"})
	}
	return err
}

func (a *Agent) preflightDisk() error {
	min := a.cfg.MinFreeMB << 20
	dirs := []string{a.cfg.StateDir}
	if info, err := a.eng.Info(a.ctx); err == nil && info.RootDir != "" {
		if _, err := os.Stat(info.RootDir); err == nil {
			dirs = append(dirs, info.RootDir)
		}
	}
	for _, d := range dirs {
		if free := freeBytes(d); free < min {
			return fmt.Errorf("only %d MiB free on %s; berth keeps %d MiB free (min_free_mb); nothing changed, the running release keeps running; free some space (docker image prune) and retry: %w", free>>20, d, a.cfg.MinFreeMB, release.ErrNoSpace)
		}
	}
	return nil
}

func freeBytes(dir string) uint64 {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0
	}
	return st.Bavail * uint64(st.Bsize)
}

func sortedNames[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// testHang supports the crash tests: with BERTH_TEST_HANG_AT_JOURNAL=N the
// agent, right after writing its Nth journal entry, writes <state>/test-hang
// and stops dead, so a test can kill -9 it at exactly that step.
func (a *Agent) testHang() {
	want := os.Getenv("BERTH_TEST_HANG_AT_JOURNAL")
	if want == "" {
		return
	}
	a.mu.Lock()
	a.journalWrites++
	n := a.journalWrites
	a.mu.Unlock()
	if fmt.Sprint(n) != want {
		return
	}
	_ = os.WriteFile(filepath.Join(a.cfg.StateDir, "test-hang"), []byte(fmt.Sprint(n)), 0o644)
	select {}
}
