package server

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/berth-robotics/berth/internal/mergepatch"
	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/store"
)

// The endpoints under /v1/device/ serve devices, each with its own token:
// a device reads its own target and releases and reports its own state,
// and nothing else.

// target answers GET /v1/device/target, a long poll. With If-None-Match
// naming the version the device has and ?wait=, it answers once the
// device's target version differs, or 304 when wait passes first.
func (s *Server) target(w http.ResponseWriter, r *http.Request, p principal) error {
	d := *p.device
	known, conditional := parseETag(r.Header.Get("If-None-Match"))
	wait, err := parseWait(r.URL.Query().Get("wait"))
	if err != nil {
		return err
	}
	ctx := r.Context()
	s.touch(ctx, d.ID)
	// version is the device's target version as of the hub's mark at.
	version, at := d.TargetVersion, p.handled
	if p.kept && (!conditional || version != known) {
		// A kept version only confirms what the device has; anything
		// else is read (it may have heard of a change through a replica
		// whose hub is ahead of this one's).
		at = s.hub.handled()
		if version, err = s.st.TargetVersion(ctx, d.ID); err != nil {
			return err
		}
	}
	if conditional && version == known && wait > 0 {
		sub := s.hub.subscribe(d.ID)
		defer sub.close() // after the answer is written
		timer := time.NewTimer(wait)
		defer timer.Stop()
		// Subscribed first, then read: a change from now on wakes us.
		// The version known serves as that read if the hub handled
		// nothing since its mark (hub.handled). Woken for this device's
		// change, the hub hands us its version and mark.
		woke := wakeup{version: -1}
		trusted := at >= 0 && sub.Handled == at
	poll:
		for {
			switch {
			case trusted:
			case woke.version >= 0:
				// A hub still handling older changes may hand an older
				// version than the one known: never go back.
				if woke.version >= version {
					version, at = woke.version, woke.handled
				}
			default:
				at = s.hub.handled()
				if version, err = s.st.TargetVersion(ctx, d.ID); err != nil {
					return err
				}
			}
			trusted = false
			if version != known {
				break
			}
			sub.waiting()
			select {
			case woke = <-sub.C:
				sub.took()
			case <-timer.C:
				break poll
			case <-sub.Done: // shutting down: the device asks again, maybe elsewhere
				break poll
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		// What this poll learnt saves the device's next request a read.
		s.devices.known(p.deviceKey, version, at)
	}
	etag := strconv.Quote(strconv.FormatInt(version, 10))
	w.Header().Set("ETag", etag)
	if conditional && version == known {
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	// The version is read before the content: the content is at least as
	// new as the ETag says, never older.
	body, err := s.renderTarget(ctx, d, version)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
	return nil
}

// fleetName is a fleet's name; names never change, so each is read once.
func (s *Server) fleetName(ctx context.Context, id string) (string, error) {
	if n, ok := s.fleetNames.Load(id); ok {
		return n.(string), nil
	}
	f, err := s.st.Fleet(ctx, id)
	if err != nil {
		return "", err
	}
	s.fleetNames.Store(id, f.Name)
	return f.Name, nil
}

// mergeEnv overlays each service's environment with the layers.
func mergeEnv(spec *release.Spec, layers []store.EnvLayer) {
	if len(layers) == 0 {
		return
	}
	for name, svc := range spec.Services {
		env := store.MergeEnv(layers, name)
		if len(env) == 0 {
			continue
		}
		merged := maps.Clone(svc.Environment)
		if merged == nil {
			merged = map[string]string{}
		}
		maps.Copy(merged, env)
		svc.Environment = merged
		spec.Services[name] = svc
	}
}

// touch records that a device was seen, at most every third of a poll
// interval: a long poll is a read, not a write, most of the time. The
// write goes on in the background (grouped with others'): a request never
// waits for it (a fetch waited for the write's tail on PostgreSQL).
func (s *Server) touch(ctx context.Context, id string) {
	if !s.seen.allow(id, s.now(), s.opts.PollInterval/3) {
		return
	}
	go func() {
		if err := s.touches.do(context.WithoutCancel(ctx), id); err != nil {
			s.log.Warn("record that a device was seen", "device", id, "error", err)
		}
	}()
}

// parseETag reads If-None-Match: "<version>" (weak or not).
func parseETag(h string) (int64, bool) {
	h = strings.TrimPrefix(strings.TrimSpace(h), "W/")
	s, err := strconv.Unquote(h)
	if err != nil {
		return 0, false
	}
	v, err := strconv.ParseInt(s, 10, 64)
	return v, err == nil
}

// parseWait reads ?wait=: a Go duration ("30s") or seconds ("30"), at
// most serverapi.MaxWait (longer is cut to it).
func parseWait(v string) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		n, nerr := strconv.Atoi(v)
		if nerr != nil {
			return 0, fmt.Errorf("wait=%q: want a duration like 30s: %w", v, release.ErrInvalid)
		}
		d = time.Duration(n) * time.Second
	}
	if d < 0 {
		return 0, fmt.Errorf("wait=%q: want a duration like 30s: %w", v, release.ErrInvalid)
	}
	return min(d, serverapi.MaxWait), nil
}

// reportState answers PUT /v1/device/state: the device's whole current
// state, at most one report per StateInterval.
func (s *Server) reportState(w http.ResponseWriter, r *http.Request, p principal) error {
	state, err := decodeState(w, r)
	if err != nil {
		return err
	}
	return s.storeState(w, r, *p.device, state, nil, store.AnyVersion)
}

// patchState answers PATCH /v1/device/state: what changed in the device's
// state since the version If-Match names, as a JSON merge patch (RFC
// 7386). If the stored state is no longer at that version (another
// replica took a later report, or the device's last report was lost) it
// answers 409 and the device sends its whole state again.
func (s *Server) patchState(w http.ResponseWriter, r *http.Request, p principal) error {
	d := *p.device
	base, ok := parseETag(r.Header.Get("If-Match"))
	if !ok {
		return fmt.Errorf(`a state patch needs the header If-Match: "<state version it was made against>": %w`, release.ErrInvalid)
	}
	var patch json.RawMessage
	if err := decode(w, r, &patch, false); err != nil {
		return err
	}
	stored, doc, ok := s.lastStates.take(d.ID, base)
	version := base
	if !ok {
		var err error
		if stored, version, err = s.st.DeviceState(r.Context(), d.ID); err != nil {
			return err
		}
	}
	if version != base || len(stored) == 0 {
		return fmt.Errorf("the stored state is at version %d, not %d: send the whole state (PUT /v1/device/state); nothing was changed: %w",
			version, base, release.ErrConflict)
	}
	if doc == nil {
		var err error
		if doc, err = mergepatch.Decode(stored); err != nil {
			return fmt.Errorf("the stored state of device %s: %w", d.ID, err)
		}
	}
	state, doc, err := applyStatePatch(doc, patch)
	if err != nil {
		return err
	}
	return s.storeState(w, r, d, state, doc, base)
}

// applyStatePatch applies a device's merge patch to its stored state,
// decoded (doc, which it changes), and checks the result as a whole report
// is checked. It returns the state to store and the patched document,
// which holds the same state but maybe members CurrentState ignores: the
// next patch applied to either stores the same.
func applyStatePatch(doc mergepatch.Doc, patch json.RawMessage) (json.RawMessage, mergepatch.Doc, error) {
	doc, merged, err := mergepatch.ApplyDoc(doc, patch)
	if err != nil {
		return nil, nil, fmt.Errorf("state patch: %v; nothing was changed: %w", err, release.ErrInvalid)
	}
	var cs release.CurrentState
	if err := json.Unmarshal(merged, &cs); err != nil {
		return nil, nil, fmt.Errorf("state patch: the patched state is not a state: %v; nothing was changed: %w", err, release.ErrInvalid)
	}
	state, err := encodeState(cs)
	return state, doc, err
}

// storeState stores a report, at most one per device per StateInterval.
// doc is the state decoded, if the caller has it (see applyStatePatch).
func (s *Server) storeState(w http.ResponseWriter, r *http.Request, d store.Device, state json.RawMessage, doc mergepatch.Doc, ifVersion int64) error {
	// Counted once the report is good: a refused one costs no write.
	if !s.states.allow(d.ID, s.now(), s.opts.StateInterval) {
		return fmt.Errorf("state reported less than %s ago; report at most once per %s (changes can wait and go together): %w",
			s.opts.StateInterval, s.opts.StateInterval, errTooMany)
	}
	res := s.stateWrites.do(r.Context(), store.StateReport{DeviceID: d.ID, State: state, IfVersion: ifVersion})
	if res.Err != nil {
		return res.Err
	}
	s.lastStates.put(d.ID, res.Version, state, doc)
	reply(w, http.StatusOK, serverapi.StateReport{StateVersion: res.Version})
	return nil
}

// decodeState reads a state report and re-encodes it: only what
// release.CurrentState holds is stored.
func decodeState(w http.ResponseWriter, r *http.Request) (json.RawMessage, error) {
	var cs release.CurrentState
	if err := decode(w, r, &cs, false); err != nil {
		return nil, err
	}
	return encodeState(cs)
}

func encodeState(cs release.CurrentState) (json.RawMessage, error) {
	for app := range cs.Apps {
		if !release.ValidName(app) {
			return nil, fmt.Errorf("state: app name %q: use lower-case letters, digits, '-' and '_': %w", app, release.ErrInvalid)
		}
	}
	b, err := json.Marshal(cs)
	if err != nil {
		return nil, fmt.Errorf("state: %v: %w", err, release.ErrInvalid)
	}
	return b, nil
}

// deviceRelease answers GET /v1/device/releases/{release}: a release in
// the device's own target, else 404 whether or not it exists.
func (s *Server) deviceRelease(w http.ResponseWriter, r *http.Request, p principal) error {
	rel, err := s.st.DeviceRelease(r.Context(), p.device.ID, r.PathValue("release"))
	if err != nil {
		return err
	}
	v, err := releaseView(rel, true)
	if err != nil {
		return err
	}
	reply(w, http.StatusOK, v)
	return nil
}
