package server

import (
	"encoding/json"
	"errors"
	"github.com/berth-robotics/berth/internal/mergepatch"
	"testing"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
)

// FuzzSealRelease feeds release requests as a client could send them:
// never a panic; what is accepted is valid, and sealing it again after a
// JSON round trip (what the store keeps) gives the same ID, so creating a
// release stays idempotent.
func FuzzSealRelease(f *testing.F) {
	for _, s := range []string{
		`{"app": "app", "version": "v1", "spec": {"services": {"web": {"image": "web:1"}}}}`,
		`{"app": "app", "version": "v1", "spec": {"services": {"web": {"image": "web:1", "environment": {"A": "1"}, "depends_on": {"db": {"condition": "service_healthy", "required": true}}}, "db": {"image": "db"}}}, "images": {"web:1": "sha256:0000000000000000000000000000000000000000000000000000000000000000"}}`,
		`{"app": "app", "version": "v1", "spec": {"services": {"web": {"image": "w", "healthcheck": {"interval": "1s", "retries": 3}, "stop_grace_period": 5}}}}`,
		`{"app": "App", "version": "", "spec": {}}`,
		`{"app": "a", "version": "v", "spec": {"services": {"a": {"image": "a", "depends_on": {"a": {"condition": "service_started", "required": true}}}}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var req serverapi.CreateReleaseRequest
		if json.Unmarshal(b, &req) != nil {
			return
		}
		rel, err := sealRelease(req)
		if err != nil {
			if !errors.Is(err, release.ErrInvalid) {
				t.Fatalf("a refusal that is not ErrInvalid: %v", err)
			}
			return
		}
		if err := rel.Validate(); err != nil {
			t.Fatalf("accepted, yet invalid: %v", err)
		}
		spec, err := json.Marshal(rel.Spec)
		if err != nil {
			t.Fatal(err)
		}
		again := release.Release{App: rel.App, Version: rel.Version}
		if err := json.Unmarshal(spec, &again.Spec); err != nil {
			t.Fatalf("the stored spec does not read back: %v", err)
		}
		again.Seal()
		if again.ID != rel.ID {
			t.Fatalf("sealed %s, after a round trip %s: creating it again would not be idempotent", rel.ID, again.ID)
		}
	})
}

// FuzzDeviceState feeds state reports: never a panic; what is accepted
// is stored as JSON that reads back as a release.CurrentState.
func FuzzDeviceState(f *testing.F) {
	for _, s := range []string{
		`{"agent": {"name": "r1", "version": "v1"}, "apps": {"app": {"release": "sha256:1", "phase": "idle", "services": {"web": {"state": "running", "restarts": 2}}}}, "reported": "2026-11-01T12:00:00Z"}`,
		`{"apps": {"../x": {}}}`,
		`{"apps": null, "disk": {"state_dir_free": 12}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var cs release.CurrentState
		if json.Unmarshal(b, &cs) != nil {
			return
		}
		out, err := encodeState(cs)
		if err != nil {
			if !errors.Is(err, release.ErrInvalid) {
				t.Fatalf("a refusal that is not ErrInvalid: %v", err)
			}
			return
		}
		var back release.CurrentState
		if err := json.Unmarshal(out, &back); err != nil {
			t.Fatalf("stored state does not read back: %v", err)
		}
	})
}

// FuzzStatePatch: any patch a device sends, against any stored state, is
// applied or refused as ErrInvalid, never a panic; what is stored reads
// back as a state.
func FuzzStatePatch(f *testing.F) {
	stored := `{"agent":{"name":"r1","version":"v1"},"apps":{"app":{"release":"sha256:1","phase":"idle","services":{"web":{"state":"running","health":"healthy"}}}},"reported":"2026-11-01T12:00:00Z"}`
	for _, p := range []string{
		`{"apps":{"app":{"services":{"web":{"health":"unhealthy"}}}},"reported":"2026-11-01T12:01:00Z"}`,
		`{"apps":{"app":null}}`,
		`{"apps":"x"}`,
		`{"apps":{"../x":{}}}`,
		`[]`, `null`, `{"agent":{"name":7}}`,
	} {
		f.Add([]byte(stored), []byte(p))
	}
	f.Fuzz(func(t *testing.T, st, patch []byte) {
		doc, err := mergepatch.Decode(st)
		if err != nil {
			return // a stored state is always JSON
		}
		out, _, err := applyStatePatch(doc, patch)
		if err != nil {
			if !errors.Is(err, release.ErrInvalid) {
				t.Fatalf("a refusal that is not ErrInvalid: %v", err)
			}
			return
		}
		var back release.CurrentState
		if err := json.Unmarshal(out, &back); err != nil {
			t.Fatalf("stored state does not read back: %v", err)
		}
	})
}
