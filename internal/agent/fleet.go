package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"time"

	"github.com/berth-robotics/berth/internal/localapi"
	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/signing"
	"github.com/berth-robotics/berth/internal/transfer"
)

// Fleet mode: berthd registers once with a fleet server (its device token
// goes in <state-dir>/device.json, mode 0600), long-polls its target, fetches
// the content a target needs through the exchange, switches each app with
// the same safe switch as a LAN deploy, and reports its state. The server
// being unreachable changes nothing on the device: the running releases keep
// running, and the agent catches up when the server answers again.

// FleetConfig is how berthd reaches its fleet server.
type FleetConfig struct {
	Server          string // https://host:port
	ProvisioningKey string // used once, to register
	Fingerprint     string // SHA-256 of the server's TLS certificate, pinned
	// PollWait is how long one long poll waits (default 30 s).
	PollWait time.Duration
	// TrustedKeys (ed25519:<base64>, berthd --trusted-key) sign the
	// releases this device runs. Without them, the keys the server gave at
	// registration, kept in device.json, are pinned instead.
	TrustedKeys []string
}

// deviceFile is <state-dir>/device.json: the registration.
type deviceFile struct {
	Server      string `json:"server"`
	Fingerprint string `json:"fingerprint,omitempty"`
	DeviceID    string `json:"device_id"`
	Fleet       string `json:"fleet"`
	Name        string `json:"name"`
	Token       string `json:"token"`
	// TrustedKeys are the fleet's signing keys the server gave at
	// registration: pinned on first use.
	TrustedKeys []string `json:"trusted_keys,omitempty"`
}

// fleet is the agent's fleet mode while it runs.
type fleet struct {
	mu     sync.Mutex
	target *serverapi.Target // the last target received
	// name is the fleet's name at registration, and keys the release
	// signing keys pinned then or given by flag: with any, every fleet
	// release must be signed by one of them for this fleet.
	name string
	keys []signing.PublicKey
}

// inTarget reports whether app is in the device's fleet target, and the
// generation of its assignment there.
func (f *fleet) inTarget(app string) (bool, int64) {
	if f == nil {
		return false, 0
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.target == nil || f.target.Apps[app] == nil {
		return false, 0
	}
	return true, f.target.Generations[app]
}

// overrideHolds reports whether a LAN override still stands in for the
// fleet release of an app assigned at generation gen: its TTL has not run
// out, and the app was not assigned again since it was made.
func overrideHolds(o *release.Override, gen int64, now time.Time) bool {
	if o == nil {
		return false
	}
	if o.Until != nil && !now.Before(*o.Until) {
		return false
	}
	return gen == 0 || o.Generation >= gen
}

// lanOrigin is the origin of a deploy through the local API: on a fleet
// device, for an app of its fleet target, a local override.
func (a *Agent) lanOrigin(app, by string, ttl time.Duration) origin {
	in, gen := a.fleet.inTarget(app)
	if !in {
		return origin{}
	}
	if by == "" {
		by = "the local API"
	}
	o := &release.Override{By: by, Since: a.now().UTC(), Generation: gen}
	if ttl > 0 {
		until := o.Since.Add(ttl)
		o.Until = &until
	}
	return origin{Override: o}
}

// runFleet is fleet mode's loop: register, then follow the target until ctx
// ends.
func (a *Agent) runFleet(ctx context.Context) {
	cfg := a.cfg.Fleet
	wait := cfg.PollWait
	if wait <= 0 {
		wait = 30 * time.Second
	}
	var cl *serverapi.Client
	for delay := time.Second; ; delay = nextDelay(delay) {
		var err error
		if cl, err = a.registered(ctx); err == nil {
			break
		}
		a.log.Error("fleet: not registered; retrying", "server", cfg.Server, "error", err, "retry_in", delay.Round(time.Second))
		if !pause(ctx, delay) {
			return
		}
	}
	var workers sync.WaitGroup // they use cl: closed after them
	defer cl.Close()
	defer workers.Wait()
	workers.Add(2)
	go func() {
		defer workers.Done()
		a.reportLoop(ctx, cl)
	}()
	go func() {
		defer workers.Done()
		a.runLogs(ctx, cl)
	}()
	var known int64
	var pending *serverapi.Target // a target not fully applied yet
	for delay := time.Second; ctx.Err() == nil; {
		w := wait
		if pending != nil {
			w = min(wait, 5*time.Second) // come back soon to finish it
		}
		t, changed, err := cl.Target(ctx, known, w)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			a.log.Warn("fleet: server unreachable; the running releases keep running", "server", cfg.Server, "error", err, "retry_in", delay.Round(time.Second))
			if !pause(ctx, delay) {
				return
			}
			delay = nextDelay(delay)
			continue
		}
		delay = time.Second
		if changed {
			a.fleet.mu.Lock()
			a.fleet.target = t
			a.fleet.mu.Unlock()
			known, pending = t.Version, t
		}
		if pending != nil && a.applyTarget(ctx, cl, pending) {
			pending = nil
		}
		if pending == nil && a.overrideExpired() {
			pending = a.fleetTarget()
		}
	}
}

func nextDelay(d time.Duration) time.Duration {
	d = d * 2
	if d > time.Minute {
		d = time.Minute
	}
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1)) // jitter: a fleet must not reconnect in step
}

func pause(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (a *Agent) fleetTarget() *serverapi.Target {
	a.fleet.mu.Lock()
	defer a.fleet.mu.Unlock()
	return a.fleet.target
}

// registered returns a client for the server with the device's token,
// registering first if this state directory has no registration yet.
func (a *Agent) registered(ctx context.Context) (*serverapi.Client, error) {
	cfg := a.cfg.Fleet
	path := filepath.Join(a.cfg.StateDir, "device.json")
	var dev deviceFile
	err := readJSON(path, &dev)
	if errors.Is(err, os.ErrNotExist) {
		if cfg.ProvisioningKey == "" {
			return nil, fmt.Errorf("this device is not registered and no provisioning key was given (--provisioning-key or BERTH_PROVISIONING_KEY): %w", release.ErrInvalid)
		}
		cl, err := serverapi.New(cfg.Server, serverapi.Options{Fingerprint: cfg.Fingerprint})
		if err != nil {
			return nil, err
		}
		defer cl.Close()
		reg, err := cl.Register(ctx, serverapi.RegisterRequest{ProvisioningKey: cfg.ProvisioningKey, Name: a.cfg.Name, Arch: runtime.GOARCH, AgentVersion: a.cfg.Version})
		if err != nil {
			return nil, fmt.Errorf("register with %s: %w", cfg.Server, err)
		}
		dev = deviceFile{Server: cfg.Server, Fingerprint: cfg.Fingerprint, DeviceID: reg.Device.ID, Fleet: reg.Device.Fleet, Name: reg.Device.Name, Token: reg.Token,
			TrustedKeys: reg.TrustedKeys}
		if err := writeJSON(path, dev); err != nil { // 0600, as every state file
			return nil, fmt.Errorf("keep the registration: %w", err)
		}
		a.log.Info("fleet: registered", "server", cfg.Server, "fleet", dev.Fleet, "device", dev.Name, "id", dev.DeviceID)
	} else if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	} else if dev.Server != cfg.Server {
		return nil, fmt.Errorf("this device is registered with %s, not %s; remove %s to register again: %w", dev.Server, cfg.Server, path, release.ErrConflict)
	}
	trusted := cfg.TrustedKeys
	if len(trusted) == 0 {
		trusted = dev.TrustedKeys // pinned on first use
	}
	keys := make([]signing.PublicKey, 0, len(trusted))
	for _, s := range trusted {
		k, err := signing.ParsePublicKey(s)
		if err != nil {
			return nil, fmt.Errorf("trusted key: %w", err)
		}
		keys = append(keys, k)
	}
	a.fleet.mu.Lock()
	a.fleet.name, a.fleet.keys = dev.Fleet, keys
	a.fleet.mu.Unlock()
	fp := cfg.Fingerprint
	if fp == "" {
		fp = dev.Fingerprint
	}
	return serverapi.New(dev.Server, serverapi.Options{Token: dev.Token, Fingerprint: fp})
}

// applyTarget brings every app of t to its fleet release, except apps under
// a local override. It reports whether all of them got there or cannot on
// their own (a release that failed here is not retried); false means try
// again soon.
func (a *Agent) applyTarget(ctx context.Context, cl *serverapi.Client, t *serverapi.Target) bool {
	apps := make([]string, 0, len(t.Apps))
	for app := range t.Apps {
		apps = append(apps, app)
	}
	sort.Strings(apps)
	done := true
	for _, app := range apps {
		ok, err := a.applyApp(ctx, cl, t.Apps[app], t.Signatures[app], t.Generations[app])
		if err != nil {
			a.log.Warn("fleet: app not switched yet; retrying", "app", app, "error", err)
		}
		done = done && ok
	}
	return done
}

func (a *Agent) applyApp(ctx context.Context, cl *serverapi.Client, fr *release.Release, sig serverapi.Signature, gen int64) (bool, error) {
	app := fr.App
	if a.busy(app) {
		// A switch under way (to an earlier target, or a LAN deploy):
		// what is left to do shows once it ends. Judged now, a target
		// back to the release still running would pass for done, and the
		// switch away from it would then commit. Next round.
		return false, nil
	}
	rec, err := a.store.record(app)
	if err != nil {
		return false, err
	}
	if overrideHolds(rec.Override, gen, a.now()) {
		return true, nil // a LAN deploy or removal stands in for the fleet release
	}
	if rec.Override != nil {
		// Its TTL ran out, or the app was assigned again: the fleet
		// release runs again.
		a.emit(localapi.Event{App: app, Phase: phaseOr(rec.Phase), Message: fmt.Sprintf("the LAN override by %s ends (%s); returning to the fleet release %s", rec.Override.By, overrideEnd(rec.Override, gen, a.now()), release.ShortID(fr.ID))})
		rec.Override, rec.FleetRelease = nil, ""
		if err := a.store.saveRecord(app, rec); err != nil {
			return false, err
		}
	}
	if refused, err := a.checkSigned(ctx, cl, fr, sig); err != nil {
		return false, err
	} else if refused != nil {
		return true, a.refuse(app, fr, gen, refused) // judged again at the next target: it may be signed then
	}
	req := localapi.DeployRequest{Version: fr.Version, Spec: fr.Spec}
	if err := a.fetchImages(ctx, cl, fr); err != nil {
		return false, err
	}
	rel, err := a.pin(ctx, app, req)
	if err != nil {
		return false, err
	}
	// The same fleet release with other environment layers is another
	// release here (its ID seals the merged spec).
	if rel.ID == rec.Current && rec.FleetRelease == fr.ID && rec.Override == nil {
		// It runs its target: whatever the device said of another
		// release (a refusal, an aborted rollout's failure) is over.
		renewed := rec.Generation != gen
		if rec.FleetFailed != "" || rec.FleetRefused != "" || renewed || rec.Target != rec.Current {
			if rec.Error != "" && rec.Error == rec.FleetReason {
				rec.Error = "" // it said why another release was refused
			}
			rec.clearFleetVerdict()
			if rec.Phase.AtRest() && rec.Target != rec.Current {
				// The last operation was about another release (a
				// rollback that an aborted rollout followed up on):
				// its outcome is history now.
				rec.Phase, rec.Error, rec.Target = release.PhaseIdle, "", rec.Current
			}
			if err := a.store.saveRecord(app, rec); err != nil {
				return false, err
			}
		}
		if !renewed {
			return true, nil
		}
		// Assigned again (berth device retry): planned against what
		// runs, which re-creates a service's container that is gone or
		// stopped since, and records the new generation.
	} else if rec.FleetFailed == fr.ID && (rec.FleetGeneration >= gen && gen > 0 || gen == 0 && rec.Failed[rel.ID] != "") {
		// A release that failed here is not tried again under the
		// assignment it failed under, whatever else changes
		// (environment layers make another release here, but not
		// another verdict): a newer one (an assignment, a rollout,
		// berth device retry) tries it again.
		a.log.Info("fleet: release failed here before; not retried under the same assignment", "app", app, "release", release.ShortID(fr.ID), "generation", gen, "reason", rec.FleetReason)
		return true, nil
	}
	_, err = a.start(app, "deploy", rel, false, 0, origin{Fleet: fr.ID, Generation: gen})
	if errors.Is(err, release.ErrConflict) {
		return false, err // busy with another operation: next round
	}
	if err != nil {
		return false, err
	}
	// The switch runs in the background; the next round sees its outcome
	// in the app record.
	return true, nil
}

// checkSigned checks, on a device with pinned keys, that fr is a release
// signed by one of them for this device's fleet: the signature covers the
// release's ID and the fleet's name; the release as created (from the
// server, without the environment layers) must seal to that ID, and the
// target must equal it but for its services' environment (the layers are
// the server's configuration, not signed). It returns why fr is refused,
// or an error to retry on (the server unreachable).
func (a *Agent) checkSigned(ctx context.Context, cl *serverapi.Client, fr *release.Release, sig serverapi.Signature) (refused, err error) {
	a.fleet.mu.Lock()
	fleetName, keys := a.fleet.name, a.fleet.keys
	a.fleet.mu.Unlock()
	if len(keys) == 0 {
		return nil, nil
	}
	if err := signing.VerifyAny(keys, fleetName, fr.ID, sig.KeyID, sig.Signature); err != nil {
		return err, nil
	}
	signed, err := cl.DeviceRelease(ctx, fr.ID)
	if err != nil {
		return nil, fmt.Errorf("fetch release %s to check it: %w", release.ShortID(fr.ID), err)
	}
	if signed.Spec == nil {
		return fmt.Errorf("the server sent release %s without its spec", release.ShortID(fr.ID)), nil
	}
	sealed := release.Release{App: signed.App, Version: signed.Version, Spec: *signed.Spec}
	sealed.Seal()
	if sealed.ID != fr.ID {
		return fmt.Errorf("the server's copy of release %s does not match the signed ID", release.ShortID(fr.ID)), nil
	}
	if fr.App != sealed.App || fr.Version != sealed.Version || !sameButEnv(fr.Spec, sealed.Spec) {
		return fmt.Errorf("the target differs from the signed release %s beyond the environment", release.ShortID(fr.ID)), nil
	}
	return nil, nil
}

// sameButEnv reports whether two specs are equal but for their services'
// environment.
func sameButEnv(a, b release.Spec) bool {
	strip := func(s release.Spec) []byte {
		svcs := make(map[string]release.Service, len(s.Services))
		for name, svc := range s.Services {
			svc.Environment = nil
			svcs[name] = svc
		}
		s.Services = svcs
		j, err := json.Marshal(s)
		if err != nil {
			return nil
		}
		return j
	}
	x, y := strip(a), strip(b)
	return x != nil && bytes.Equal(x, y)
}

// refuse records that the fleet release fr of app, assigned at generation
// gen, is not run here, and why: the app's state shows it, and whatever
// runs keeps running.
func (a *Agent) refuse(app string, fr *release.Release, gen int64, why error) error {
	msg := fmt.Sprintf("release %s (%s) is not signed by a trusted key (%v); nothing changed: sign it with berth release create --sign-key, with a key this device trusts", release.ShortID(fr.ID), fr.Version, why)
	rec, err := a.store.record(app)
	if err != nil {
		return err
	}
	if rec.Error == msg && rec.FleetRefused == fr.ID && rec.FleetGeneration == gen {
		return nil
	}
	rec.clearFleetVerdict()
	rec.Error, rec.FleetRefused, rec.FleetReason, rec.FleetGeneration = msg, fr.ID, msg, gen
	if err := a.store.saveRecord(app, rec); err != nil {
		return err
	}
	a.log.Error("fleet: release refused", "app", app, "release", release.ShortID(fr.ID), "reason", why)
	a.emit(localapi.Event{App: app, Release: fr.ID, Phase: phaseOr(rec.Phase), Message: msg, Error: why.Error()})
	return nil
}

func phaseOr(p release.Phase) release.Phase {
	if p == "" {
		return release.PhaseIdle
	}
	return p
}

// fetchImages makes the images of fr's services present in the engine under
// their references: pulled from the server's content exchange into the
// content store, loaded, tagged.
func (a *Agent) fetchImages(ctx context.Context, cl *serverapi.Client, fr *release.Release) error {
	var ids []string
	tags := map[string][]string{}
	for _, name := range sortedNames(fr.Spec.Services) {
		s := fr.Spec.Services[name]
		if s.ImageID == "" {
			continue // resolved by name on the device, as a LAN deploy is
		}
		if _, err := a.eng.ImageID(ctx, s.ImageID); err == nil {
			if cur, err := a.eng.ImageID(ctx, s.Image); err != nil || cur != s.ImageID {
				if err := a.eng.TagImage(ctx, s.ImageID, s.Image); err != nil {
					return err
				}
			}
			continue
		}
		if len(tags[s.ImageID]) == 0 {
			ids = append(ids, s.ImageID)
		}
		tags[s.ImageID] = append(tags[s.ImageID], s.Image)
	}
	if len(ids) == 0 {
		return nil
	}
	a.setPhaseMsg(fr.App, release.PhaseDownloading)
	h, err := a.eng.Holdings(ctx)
	if err != nil {
		return err
	}
	p := &transfer.Puller{Store: a.content, Source: cl.Source(), Now: a.now}
	imgs, sum, err := p.Pull(ctx, ids, func(chain string) bool { return h.Chains[chain] })
	if err != nil {
		return fmt.Errorf("fetch the images of release %s: %w", release.ShortID(fr.ID), err)
	}
	a.log.Info("fleet: content fetched", "app", fr.App, "release", release.ShortID(fr.ID), "layers_needed", sum.LayersNeeded, "changed", transfer.Human(sum.BytesChanged), "received", transfer.Human(sum.BytesSent))
	req := localapi.LoadRequest{}
	for _, img := range imgs {
		req.Images = append(req.Images, localapi.LoadImage{Config: img.Config, Tags: tags[img.ID]})
	}
	_, err = a.Load(ctx, req)
	return err
}

// setPhaseMsg records a phase for an app that has no operation under way
// (fetching content before a fleet switch), for state reports.
func (a *Agent) setPhaseMsg(app string, p release.Phase) {
	a.emit(localapi.Event{App: app, Phase: p, Message: "fetching the release's content from the fleet server"})
}

// overrideExpired reports whether a LAN override of an app in the fleet
// target has run out (the app then returns to its fleet release).
func (a *Agent) overrideExpired() bool {
	apps, err := a.store.apps()
	if err != nil {
		return false
	}
	for _, app := range apps {
		rec, err := a.store.record(app)
		if in, gen := a.fleet.inTarget(app); err == nil && in && rec.Override != nil && !overrideHolds(rec.Override, gen, a.now()) {
			return true // applyApp ends it
		}
	}
	return false
}

// overrideEnd says why an override that no longer holds ended.
func overrideEnd(o *release.Override, gen int64, now time.Time) string {
	if o.Until != nil && !now.Before(*o.Until) {
		return "its TTL ran out at " + o.Until.UTC().Format(time.RFC3339)
	}
	return fmt.Sprintf("the app was assigned again (generation %d)", gen)
}

// reportLoop sends the device's state to the server after every change
// (coalesced to one report a second at most) and once a minute anyway,
// as a diff against the last report the server took when it can. A
// report that did not go through (the server away, restarting, or
// answering 429) is sent again after a backoff: the server's rollouts
// judge a device by its last report, and one that finished a switch
// while the server was away would otherwise wait for the heartbeat.
func (a *Agent) reportLoop(ctx context.Context, cl *serverapi.Client) {
	changed := make(chan struct{}, 1)
	go a.events.follow(ctx, a.events.last(), "", true, func(e localapi.Event) bool {
		if e.App == "" && e.Message == "" {
			return ctx.Err() == nil // a keep-alive, not a change
		}
		select {
		case changed <- struct{}{}:
		default:
		}
		return ctx.Err() == nil
	})
	heartbeat := time.NewTicker(time.Minute)
	defer heartbeat.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	delay := time.Second
	// Whole the first time, then only what changed (a merge patch).
	rep := &serverapi.StateReporter{Client: cl}
	report := func() {
		st, err := a.State(ctx)
		if err == nil {
			_, err = rep.Report(ctx, *st)
		}
		if err == nil {
			retry.Stop()
			delay = time.Second
			return
		}
		if ctx.Err() != nil {
			return
		}
		a.log.Warn("fleet: state not reported; retrying", "error", err, "retry_in", delay.Round(time.Second))
		retry.Reset(delay)
		delay = nextDelay(delay)
	}
	report()
	for {
		select {
		case <-ctx.Done():
			// berthd stops: say so, so that the server shows the device
			// offline at once rather than after three poll intervals.
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
			defer cancel()
			// A report just before may make the server ask it to wait
			// (429): it tries again while the time allows.
			if st, err := a.State(sctx); err == nil {
				now := a.now().UTC()
				st.Stopped = &now
				for {
					if _, err = rep.Report(sctx, *st); err == nil || !pause(sctx, 500*time.Millisecond) {
						break
					}
				}
				if err != nil {
					a.log.Info("fleet: could not tell the server that berthd stops", "error", err)
				}
			}
			return
		case <-changed:
			if !pause(ctx, time.Second) { // let a burst of events settle
				return
			}
			select {
			case <-changed:
			default:
			}
			report()
		case <-retry.C:
			report()
		case <-heartbeat.C:
			report()
		}
	}
}
