// Package storetest is the conformance suite for store.Store: every
// implementation (SQLite, PostgreSQL) must pass Run, so that the server
// behaves alike on both. Each subtest gets a fresh, empty store.
package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/store"
	"github.com/google/go-cmp/cmp"
)

// Opener returns a new, empty, migrated store whose clock is now, closed by
// Run when the test ends.
type Opener func(t *testing.T, now func() time.Time) store.Store

// Run runs the conformance suite against the stores open returns.
func Run(t *testing.T, open Opener) {
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, s store.Store, clock *Clock)
	}{
		{"Users", testUsers},
		{"Tokens", testTokens},
		{"Fleets", testFleets},
		{"Devices", testDevices},
		{"DeviceList", testDeviceList},
		{"DeviceState", testDeviceState},
		{"Releases", testReleases},
		{"SignedReleases", testSignedReleases},
		{"FleetKeys", testFleetKeys},
		{"Targets", testTargets},
		{"Env", testEnv},
		{"Rollouts", testRollouts},
		{"RolloutStages", testRolloutStages},
		{"Audit", testAudit},
		{"Logs", testLogs},
		{"Concurrent", testConcurrent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := NewClock(time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC))
			s := open(t, clock.Now)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("close: %v", err)
				}
			})
			tc.fn(t, s, clock)
		})
	}
}

// Clock is a fake clock that moves a millisecond each time it is read, so
// that every stamp differs and orders by creation.
type Clock struct{ t atomic.Int64 }

// NewClock returns a clock reading start first.
func NewClock(start time.Time) *Clock {
	c := &Clock{}
	c.t.Store(start.UnixMicro() - 1000)
	return c
}

// Now returns the next instant.
func (c *Clock) Now() time.Time { return time.UnixMicro(c.t.Add(1000)).UTC() }

// Peek returns the time the next Now is past.
func (c *Clock) Peek() time.Time { return time.UnixMicro(c.t.Load()).UTC() }

var ctx = context.Background()

// is fails the test unless err wraps want (nil: no error).
func is(t *testing.T, err, want error, what string) {
	t.Helper()
	if want == nil && err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if want != nil && !errors.Is(err, want) {
		t.Fatalf("%s: got error %v, want one wrapping %v", what, err, want)
	}
}

// result holds what a call returned, for must: try(s.Device(ctx, id)).must(t).
type result[T any] struct {
	v   T
	err error
}

func try[T any](v T, err error) result[T] { return result[T]{v, err} }

// rel is try for CreateRelease.
func rel(r store.Release, _ bool, err error) result[store.Release] {
	return result[store.Release]{r, err}
}

// must fails the test on an error, else returns the value.
func (r result[T]) must(t *testing.T) T {
	t.Helper()
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.v
}

func diff(t *testing.T, what string, want, got any) {
	t.Helper()
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("%s (-want +got):\n%s", what, d)
	}
}

func testUsers(t *testing.T, s store.Store, _ *Clock) {
	bob := try(s.CreateUser(ctx, "bob", store.RoleDeployer)).must(t)
	alice := try(s.CreateUser(ctx, "alice", store.RoleAdmin)).must(t)
	if bob.ID == "" || bob.ID == alice.ID || bob.Created.IsZero() {
		t.Fatalf("users: %+v %+v", bob, alice)
	}
	_, err := s.CreateUser(ctx, "bob", store.RoleViewer)
	is(t, err, store.ErrConflict, "second bob")
	_, err = s.CreateUser(ctx, "carol", "root")
	is(t, err, store.ErrInvalid, "unknown role")
	_, err = s.CreateUser(ctx, "", store.RoleViewer)
	is(t, err, store.ErrInvalid, "no name")

	diff(t, "User", bob, try(s.User(ctx, bob.ID)).must(t))
	diff(t, "UserByName", alice, try(s.UserByName(ctx, "alice")).must(t))
	diff(t, "ListUsers", []store.User{alice, bob}, try(s.ListUsers(ctx)).must(t))

	is(t, s.SetUserRole(ctx, bob.ID, store.RoleViewer), nil, "set role")
	if u := try(s.User(ctx, bob.ID)).must(t); u.Role != store.RoleViewer {
		t.Errorf("role after SetUserRole: %s", u.Role)
	}
	is(t, s.SetUserRole(ctx, bob.ID, "god"), store.ErrInvalid, "set unknown role")
	is(t, s.SetUserRole(ctx, "nobody", store.RoleAdmin), store.ErrNotFound, "set role of nobody")

	secret := store.NewSecret("bt")
	try(s.CreateToken(ctx, bob.ID, "ci", secret, time.Time{})).must(t)
	is(t, s.DeleteUser(ctx, bob.ID), nil, "delete bob")
	_, err = s.User(ctx, bob.ID)
	is(t, err, store.ErrNotFound, "deleted user")
	_, err = s.TokenBySecret(ctx, secret)
	is(t, err, store.ErrNotFound, "token of deleted user")
	is(t, s.DeleteUser(ctx, bob.ID), store.ErrNotFound, "delete bob again")
}

func testTokens(t *testing.T, s store.Store, clock *Clock) {
	alice := try(s.CreateUser(ctx, "alice", store.RoleAdmin)).must(t)
	secret := store.NewSecret("bt")
	expires := clock.Peek().Add(time.Hour)
	tok := try(s.CreateToken(ctx, alice.ID, "laptop", secret, expires)).must(t)
	if !strings.HasPrefix(secret, tok.Prefix) || len(tok.Prefix) < 4 || len(tok.Prefix) > len(secret)/3 {
		t.Errorf("prefix %q of secret %q: want a short start of it", tok.Prefix, secret)
	}
	if !tok.Expires.Equal(expires) || !tok.LastUsed.IsZero() {
		t.Errorf("new token: %+v", tok)
	}
	diff(t, "TokenBySecret", tok, try(s.TokenBySecret(ctx, secret)).must(t))

	// The same start, another end: a different token.
	last := "a"
	if strings.HasSuffix(secret, "a") {
		last = "b"
	}
	wrong := secret[:len(secret)-1] + last
	_, err := s.TokenBySecret(ctx, wrong)
	is(t, err, store.ErrNotFound, "a wrong secret with the right prefix")
	_, err = s.TokenBySecret(ctx, tok.Prefix)
	is(t, err, store.ErrNotFound, "the prefix alone")

	if tok.Expired(expires.Add(-time.Second)) || !tok.Expired(expires) {
		t.Error("Expired: wrong side of the expiry")
	}
	if (store.Token{}).Expired(time.Now()) {
		t.Error("a token without expiry expired")
	}

	is(t, s.TouchToken(ctx, tok.ID), nil, "touch")
	if got := try(s.TokenBySecret(ctx, secret)).must(t); got.LastUsed.IsZero() || !got.LastUsed.After(tok.Created) {
		t.Errorf("last used after TouchToken: %v (created %v)", got.LastUsed, tok.Created)
	}

	_, err = s.CreateToken(ctx, alice.ID, "again", secret, time.Time{})
	is(t, err, store.ErrConflict, "the same secret twice")
	_, err = s.CreateToken(ctx, "nobody", "x", store.NewSecret("bt"), time.Time{})
	is(t, err, store.ErrNotFound, "token for nobody")
	_, err = s.CreateToken(ctx, alice.ID, "short", "bt_123", time.Time{})
	is(t, err, store.ErrInvalid, "short secret")

	second := try(s.CreateToken(ctx, alice.ID, "ci", store.NewSecret("bt"), time.Time{})).must(t)
	got := try(s.ListTokens(ctx, alice.ID)).must(t)
	if len(got) != 2 || got[0].ID != tok.ID || got[1].ID != second.ID {
		t.Errorf("ListTokens: %+v", got)
	}
	is(t, s.DeleteToken(ctx, tok.ID), nil, "delete token")
	_, err = s.TokenBySecret(ctx, secret)
	is(t, err, store.ErrNotFound, "deleted token")
	is(t, s.DeleteToken(ctx, tok.ID), store.ErrNotFound, "delete token again")
}

func testFleets(t *testing.T, s store.Store, _ *Clock) {
	key := store.NewSecret("bp")
	lab := try(s.CreateFleet(ctx, "lab", key)).must(t)
	if !strings.HasPrefix(key, lab.KeyPrefix) || lab.KeyPrefix == "" || lab.KeyPrefix == key {
		t.Errorf("key prefix %q of %q", lab.KeyPrefix, key)
	}
	field := try(s.CreateFleet(ctx, "field", "")).must(t)
	_, err := s.CreateFleet(ctx, "lab", store.NewSecret("bp"))
	is(t, err, store.ErrConflict, "second lab")
	_, err = s.CreateFleet(ctx, "", "")
	is(t, err, store.ErrInvalid, "no name")

	diff(t, "Fleet", lab, try(s.Fleet(ctx, lab.ID)).must(t))
	diff(t, "FleetByName", field, try(s.FleetByName(ctx, "field")).must(t))
	diff(t, "FleetByProvisioningKey", lab, try(s.FleetByProvisioningKey(ctx, key)).must(t))
	diff(t, "ListFleets", []store.Fleet{field, lab}, try(s.ListFleets(ctx)).must(t))
	_, err = s.FleetByName(ctx, "sea")
	is(t, err, store.ErrNotFound, "no such fleet")

	// Rotate, then revoke: the old key stops working at once.
	key2 := store.NewSecret("bp")
	rotated := try(s.SetProvisioningKey(ctx, lab.ID, key2)).must(t)
	if rotated.KeyPrefix == lab.KeyPrefix {
		t.Error("the prefix did not change with the key")
	}
	_, err = s.FleetByProvisioningKey(ctx, key)
	is(t, err, store.ErrNotFound, "the old key")
	try(s.FleetByProvisioningKey(ctx, key2)).must(t)
	_, err = s.SetProvisioningKey(ctx, field.ID, key2)
	is(t, err, store.ErrConflict, "another fleet's key")
	revoked := try(s.SetProvisioningKey(ctx, lab.ID, "")).must(t)
	if revoked.KeyPrefix != "" {
		t.Errorf("prefix after revoking: %q", revoked.KeyPrefix)
	}
	_, err = s.FleetByProvisioningKey(ctx, key2)
	is(t, err, store.ErrNotFound, "a revoked key")
	_, err = s.SetProvisioningKey(ctx, "nowhere", store.NewSecret("bp"))
	is(t, err, store.ErrNotFound, "key of no fleet")
}

func testDevices(t *testing.T, s store.Store, _ *Clock) {
	lab := try(s.CreateFleet(ctx, "lab", "")).must(t)
	field := try(s.CreateFleet(ctx, "field", "")).must(t)
	tok := store.NewSecret("bd")
	r1 := try(s.CreateDevice(ctx, lab.ID, "r1", tok)).must(t)
	if r1.ID == "" || r1.FleetID != lab.ID || r1.TargetVersion <= 0 || r1.State != nil || !r1.LastSeen.IsZero() {
		t.Fatalf("new device: %+v", r1)
	}
	_, err := s.CreateDevice(ctx, lab.ID, "r1", store.NewSecret("bd"))
	is(t, err, store.ErrConflict, "a second r1 in the fleet")
	otherTok := store.NewSecret("bd")
	other := try(s.CreateDevice(ctx, field.ID, "r1", otherTok)).must(t)
	_, err = s.CreateDevice(ctx, lab.ID, "r2", tok)
	is(t, err, store.ErrConflict, "r1's token for r2")
	_, err = s.CreateDevice(ctx, "nowhere", "r9", store.NewSecret("bd"))
	is(t, err, store.ErrNotFound, "device in no fleet")

	diff(t, "Device", r1, try(s.Device(ctx, r1.ID)).must(t))
	diff(t, "DeviceByName", r1, try(s.DeviceByName(ctx, lab.ID, "r1")).must(t))
	diff(t, "DeviceByName in the other fleet", other, try(s.DeviceByName(ctx, field.ID, "r1")).must(t))
	diff(t, "DeviceByToken", r1, try(s.DeviceByToken(ctx, tok)).must(t))
	// It leaves out the state and the tags.
	try(s.SetDeviceState(ctx, other.ID, json.RawMessage(`{"apps":{}}`), store.AnyVersion)).must(t)
	is(t, s.SetDeviceTags(ctx, other.ID, []string{"x"}), nil, "tag")
	if got := try(s.DeviceByToken(ctx, otherTok)).must(t); got.ID != other.ID || got.FleetID != field.ID || got.State != nil || len(got.Tags) != 0 || got.StateVersion != 1 {
		t.Errorf("DeviceByToken after a report and a tag: %+v", got)
	}
	_, err = s.DeviceByToken(ctx, store.NewSecret("bd"))
	is(t, err, store.ErrNotFound, "unknown token")

	is(t, s.SetDeviceTags(ctx, r1.ID, []string{"lidar", "arm", "lidar"}), nil, "tag")
	is(t, s.SetDeviceNotes(ctx, r1.ID, "left wheel squeaks"), nil, "notes")
	got := try(s.Device(ctx, r1.ID)).must(t)
	diff(t, "tags", []string{"arm", "lidar"}, got.Tags)
	if got.Notes != "left wheel squeaks" {
		t.Errorf("notes: %q", got.Notes)
	}
	is(t, s.SetDeviceTags(ctx, r1.ID, []string{"a", ""}), store.ErrInvalid, "empty tag")
	is(t, s.SetDeviceTags(ctx, "nobody", []string{"a"}), store.ErrNotFound, "tag nobody")

	r2 := try(s.CreateDevice(ctx, lab.ID, "r2", store.NewSecret("bd"))).must(t)
	is(t, s.SetDeviceName(ctx, r2.ID, "r1"), store.ErrConflict, "rename onto r1")
	is(t, s.SetDeviceName(ctx, r2.ID, "r3"), nil, "rename")
	try(s.DeviceByName(ctx, lab.ID, "r3")).must(t)

	tok2 := store.NewSecret("bd")
	latest := try(s.LatestTargetVersion(ctx)).must(t)
	is(t, s.SetDeviceToken(ctx, r1.ID, tok2), nil, "new token")
	if v := try(s.LatestTargetVersion(ctx)).must(t); v <= latest {
		t.Errorf("a new device token took no target version (%d, before %d): servers would keep the old one", v, latest)
	}
	_, err = s.DeviceByToken(ctx, tok)
	is(t, err, store.ErrNotFound, "the replaced token")
	try(s.DeviceByToken(ctx, tok2)).must(t)

	// What PostgreSQL cannot store is refused on both; looked up, it is
	// simply not there.
	_, err = s.CreateDevice(ctx, lab.ID, "r\x00", store.NewSecret("bd"))
	is(t, err, store.ErrInvalid, "a NUL in a name")
	is(t, s.SetDeviceNotes(ctx, r1.ID, "\xff"), store.ErrInvalid, "notes not UTF-8")
	_, err = s.Device(ctx, "\xff\x00")
	is(t, err, store.ErrNotFound, "an ID not UTF-8")
	_, err = s.DeviceByName(ctx, lab.ID, "r\x00")
	is(t, err, store.ErrNotFound, "a name with a NUL")
	is(t, s.TouchDevice(ctx, "\xff"), store.ErrNotFound, "touch an ID not UTF-8")

	is(t, s.TouchDevice(ctx, r1.ID), nil, "touch")
	if got := try(s.Device(ctx, r1.ID)).must(t); got.LastSeen.IsZero() {
		t.Error("last seen not set by TouchDevice")
	}

	rb := try(s.CreateDevice(ctx, lab.ID, "r2", store.NewSecret("bd"))).must(t)
	is(t, s.TouchDevices(ctx, []string{rb.ID, "gone"}), nil, "touch several, one gone")
	if got := try(s.Device(ctx, rb.ID)).must(t); got.LastSeen.IsZero() {
		t.Error("last seen not set by TouchDevices")
	}

	latest = try(s.LatestTargetVersion(ctx)).must(t)
	is(t, s.DeleteDevice(ctx, r1.ID), nil, "delete")
	if v := try(s.LatestTargetVersion(ctx)).must(t); v <= latest {
		t.Errorf("deleting a device took no target version (%d, before %d): servers would keep its token", v, latest)
	}
	_, err = s.Device(ctx, r1.ID)
	is(t, err, store.ErrNotFound, "deleted device")
	_, err = s.DeviceByToken(ctx, tok2)
	is(t, err, store.ErrNotFound, "deleted device's token")
	is(t, s.DeleteDevice(ctx, r1.ID), store.ErrNotFound, "delete again")
	// The name is free again.
	try(s.CreateDevice(ctx, lab.ID, "r1", store.NewSecret("bd"))).must(t)
}

func testDeviceList(t *testing.T, s store.Store, _ *Clock) {
	lab := try(s.CreateFleet(ctx, "lab", "")).must(t)
	field := try(s.CreateFleet(ctx, "field", "")).must(t)
	try(s.CreateDevice(ctx, field.ID, "elsewhere", store.NewSecret("bd"))).must(t)
	var want []string
	for i := range 7 {
		name := fmt.Sprintf("r%d", i)
		d := try(s.CreateDevice(ctx, lab.ID, name, store.NewSecret("bd"))).must(t)
		if i%2 == 0 {
			is(t, s.SetDeviceTags(ctx, d.ID, []string{"canary", "lidar"}), nil, "tag")
		}
		want = append(want, name)
	}
	names := func(ds []store.Device) []string {
		var n []string
		for _, d := range ds {
			n = append(n, d.Name)
		}
		return n
	}
	all := try(s.ListDevices(ctx, store.DeviceFilter{FleetID: lab.ID})).must(t)
	diff(t, "all devices", want, names(all))
	diff(t, "tags of r0", []string{"canary", "lidar"}, all[0].Tags)
	diff(t, "tags of r1", []string{}, all[1].Tags)

	var paged []string
	after := ""
	for range 10 {
		page := try(s.ListDevices(ctx, store.DeviceFilter{FleetID: lab.ID, After: after, Limit: 3})).must(t)
		if len(page) == 0 {
			break
		}
		paged = append(paged, names(page)...)
		after = page[len(page)-1].Name
	}
	diff(t, "paged", want, paged)
	diff(t, "tagged canary", []string{"r0", "r2", "r4", "r6"}, names(try(s.ListDevices(ctx, store.DeviceFilter{FleetID: lab.ID, Tag: "canary"})).must(t)))
	diff(t, "another fleet", []string{"elsewhere"}, names(try(s.ListDevices(ctx, store.DeviceFilter{FleetID: field.ID})).must(t)))
	if got := try(s.ListDevices(ctx, store.DeviceFilter{FleetID: field.ID, Tag: "canary"})).must(t); len(got) != 0 {
		t.Errorf("the tag reached another fleet: %v", names(got))
	}
}

func testDeviceState(t *testing.T, s store.Store, _ *Clock) {
	lab := try(s.CreateFleet(ctx, "lab", "")).must(t)
	d := try(s.CreateDevice(ctx, lab.ID, "r1", store.NewSecret("bd"))).must(t)
	st1 := json.RawMessage(`{"apps":{"nav":{"phase":"idle"}}}`)
	v1 := try(s.SetDeviceState(ctx, d.ID, st1, store.AnyVersion)).must(t)
	got := try(s.Device(ctx, d.ID)).must(t)
	if got.StateVersion != v1 || string(got.State) != string(st1) || got.LastSeen.IsZero() {
		t.Fatalf("after a report: version %d (want %d), state %s, seen %v", got.StateVersion, v1, got.State, got.LastSeen)
	}
	v2 := try(s.SetDeviceState(ctx, d.ID, json.RawMessage(`{"apps":{}}`), v1)).must(t)
	if v2 <= v1 {
		t.Errorf("state version went from %d to %d", v1, v2)
	}
	_, err := s.SetDeviceState(ctx, d.ID, json.RawMessage(`{"lost":true}`), v1)
	is(t, err, store.ErrConflict, "a report against a stale version")
	if got := try(s.Device(ctx, d.ID)).must(t); string(got.State) != `{"apps":{}}` {
		t.Errorf("the stale report changed the state: %s", got.State)
	}
	_, err = s.SetDeviceState(ctx, d.ID, json.RawMessage(`{`), store.AnyVersion)
	is(t, err, store.ErrInvalid, "not JSON")
	_, err = s.SetDeviceState(ctx, "nobody", json.RawMessage(`{}`), store.AnyVersion)
	is(t, err, store.ErrNotFound, "state of nobody")
	_, err = s.SetDeviceState(ctx, "nobody", json.RawMessage(`{}`), 3)
	is(t, err, store.ErrNotFound, "versioned state of nobody")
	if tv := try(s.TargetVersion(ctx, d.ID)).must(t); tv != d.TargetVersion {
		t.Errorf("reporting state moved the target version: %d -> %d", d.TargetVersion, tv)
	}

	// Several reports in one transaction: each gets its own answer, and a
	// bad one keeps none of the others from being stored.
	d2 := try(s.CreateDevice(ctx, lab.ID, "r2", store.NewSecret("bd"))).must(t)
	rs := try(s.SetDeviceStates(ctx, []store.StateReport{
		{DeviceID: d.ID, State: json.RawMessage(`{"apps":{"a":{}}}`), IfVersion: v2},
		{DeviceID: d2.ID, State: json.RawMessage(`{"x":1}`), IfVersion: 7},
		{DeviceID: "nobody", State: json.RawMessage(`{}`), IfVersion: store.AnyVersion},
		{DeviceID: d2.ID, State: json.RawMessage(`{`), IfVersion: store.AnyVersion},
		{DeviceID: d2.ID, State: json.RawMessage(`{"apps":{"b":{}}}`), IfVersion: store.AnyVersion},
	})).must(t)
	if len(rs) != 5 {
		t.Fatalf("SetDeviceStates: %d results for 5 reports", len(rs))
	}
	if rs[0].Err != nil || rs[0].Version <= v2 || rs[4].Err != nil || rs[4].Version <= 0 {
		t.Errorf("SetDeviceStates, the good reports: %+v, %+v", rs[0], rs[4])
	}
	is(t, rs[1].Err, store.ErrConflict, "a batched report against a stale version")
	is(t, rs[2].Err, store.ErrNotFound, "a batched report of nobody")
	is(t, rs[3].Err, store.ErrInvalid, "a batched report not JSON")
	if st, v, err := s.DeviceState(ctx, d.ID); err != nil || string(st) != `{"apps":{"a":{}}}` || v != rs[0].Version {
		t.Errorf("DeviceState: %s at %d, %v", st, v, err)
	}
	_, _, err = s.DeviceState(ctx, "nobody")
	is(t, err, store.ErrNotFound, "DeviceState of nobody")
	if st, v, err := s.DeviceState(ctx, try(s.CreateDevice(ctx, lab.ID, "quiet", store.NewSecret("bd"))).must(t).ID); err != nil || st != nil || v != 0 {
		t.Errorf("DeviceState of a device that never reported: %s at %d, %v", st, v, err)
	}
	if got := try(s.Device(ctx, d.ID)).must(t); string(got.State) != `{"apps":{"a":{}}}` || got.StateVersion != rs[0].Version {
		t.Errorf("after the batch, r1: version %d, state %s", got.StateVersion, got.State)
	}
	if got := try(s.Device(ctx, d2.ID)).must(t); string(got.State) != `{"apps":{"b":{}}}` || got.LastSeen.IsZero() {
		t.Errorf("after the batch, r2: state %s, seen %v", got.State, got.LastSeen)
	}
}

func newRelease(fleetID, app, version string) store.Release {
	spec := fmt.Sprintf(`{"services":{"%s":{"image":"%s@sha256:%064d"}}}`, app, app, len(version))
	return store.Release{
		ID:        fmt.Sprintf("sha256:%s-%s-%s", fleetID, app, version),
		FleetID:   fleetID,
		App:       app,
		Version:   version,
		Spec:      json.RawMessage(spec),
		CreatedBy: "user:alice",
	}
}

func testReleases(t *testing.T, s store.Store, _ *Clock) {
	lab := try(s.CreateFleet(ctx, "lab", "")).must(t)
	field := try(s.CreateFleet(ctx, "field", "")).must(t)
	r := newRelease(lab.ID, "nav", "v1.0.0")
	stored, created, err := s.CreateRelease(ctx, r)
	is(t, err, nil, "create release")
	if !created || stored.Created.IsZero() || stored.ID != r.ID {
		t.Fatalf("created %v: %+v", created, stored)
	}
	diff(t, "Release", stored, try(s.Release(ctx, lab.ID, r.ID)).must(t))

	// Again, by someone else, with other whitespace: the same release.
	again := r
	again.CreatedBy = "user:bob"
	again.Spec = json.RawMessage(strings.ReplaceAll(string(r.Spec), "{", "{\n  "))
	got, created, err := s.CreateRelease(ctx, again)
	is(t, err, nil, "create the same release again")
	if created {
		t.Error("created the same release twice")
	}
	diff(t, "the second create returns the first", stored, got)

	changed := r
	changed.Spec = json.RawMessage(`{"services":{}}`)
	_, _, err = s.CreateRelease(ctx, changed)
	is(t, err, store.ErrConflict, "another spec under the same ID")
	changed = r
	changed.Version = "v1.0.1"
	_, _, err = s.CreateRelease(ctx, changed)
	is(t, err, store.ErrConflict, "another version under the same ID")
	diff(t, "the release after conflicts", stored, try(s.Release(ctx, lab.ID, r.ID)).must(t))

	// The same release in another fleet is that fleet's.
	elsewhere := r
	elsewhere.FleetID = field.ID
	_, created, err = s.CreateRelease(ctx, elsewhere)
	is(t, err, nil, "the same release in another fleet")
	if !created {
		t.Error("the release in another fleet was not created")
	}

	bad := newRelease(lab.ID, "nav", "v9")
	bad.Spec = json.RawMessage(`{"services":`)
	_, _, err = s.CreateRelease(ctx, bad)
	is(t, err, store.ErrInvalid, "spec not JSON")
	_, _, err = s.CreateRelease(ctx, newRelease("nowhere", "nav", "v1"))
	is(t, err, store.ErrNotFound, "release of no fleet")
	_, err = s.Release(ctx, lab.ID, "sha256:none")
	is(t, err, store.ErrNotFound, "no such release")

	r2 := newRelease(lab.ID, "nav", "v1.1.0")
	r3 := newRelease(lab.ID, "arm", "v0.1.0")
	rel(s.CreateRelease(ctx, r2)).must(t)
	rel(s.CreateRelease(ctx, r3)).must(t)
	ids := func(rs []store.Release) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.ID)
		}
		return out
	}
	diff(t, "ListReleases, newest first", []string{r3.ID, r2.ID, r.ID}, ids(try(s.ListReleases(ctx, store.ReleaseFilter{FleetID: lab.ID})).must(t)))
	diff(t, "ListReleases of nav", []string{r2.ID, r.ID}, ids(try(s.ListReleases(ctx, store.ReleaseFilter{FleetID: lab.ID, App: "nav"})).must(t)))
	diff(t, "ListReleases, limited", []string{r3.ID}, ids(try(s.ListReleases(ctx, store.ReleaseFilter{FleetID: lab.ID, Limit: 1})).must(t)))
}

func testSignedReleases(t *testing.T, s store.Store, _ *Clock) {
	lab := try(s.CreateFleet(ctx, "lab", "")).must(t)
	r := newRelease(lab.ID, "nav", "v1.0.0")
	stored := rel(s.CreateRelease(ctx, r)).must(t)
	if stored.Signature != "" || stored.KeyID != "" {
		t.Fatalf("unsigned release stored signed: %+v", stored)
	}
	// A device runs it, another doesn't.
	d := try(s.CreateDevice(ctx, lab.ID, "r1", store.NewSecret("bd"))).must(t)
	other := try(s.CreateDevice(ctx, lab.ID, "r2", store.NewSecret("bd"))).must(t)
	try(s.AssignRelease(ctx, lab.ID, r.ID, []string{d.ID})).must(t)
	before := try(s.LatestTargetVersion(ctx)).must(t)
	// Signed later: the signature is added, the release is the same, and
	// the targets naming it change (a device that refused it unsigned
	// fetches it again).
	signed := r
	signed.Signature, signed.KeyID = "c2ln", "0011223344556677"
	got, created, err := s.CreateRelease(ctx, signed)
	is(t, err, nil, "sign an existing release")
	if created || got.Signature != "c2ln" || got.KeyID != "0011223344556677" {
		t.Fatalf("created %v: %+v", created, got)
	}
	diff(t, "targets changed by signing", []string{d.ID}, deviceIDs(try(s.TargetChanges(ctx, before, 0)).must(t)))
	if v := try(s.TargetVersion(ctx, other.ID)).must(t); v > before {
		t.Errorf("signing a release changed the target of a device without it")
	}
	diff(t, "the signed release", got, try(s.Release(ctx, lab.ID, r.ID)).must(t))
	// Created again unsigned: the signature stays.
	diff(t, "created again unsigned", got, rel(s.CreateRelease(ctx, r)).must(t))
	// Listed with it.
	rs := try(s.ListReleases(ctx, store.ReleaseFilter{FleetID: lab.ID})).must(t)
	if len(rs) != 1 || rs[0].Signature != "c2ln" {
		t.Fatalf("ListReleases: %+v", rs)
	}
}

func testFleetKeys(t *testing.T, s store.Store, _ *Clock) {
	lab := try(s.CreateFleet(ctx, "lab", "")).must(t)
	field := try(s.CreateFleet(ctx, "field", "")).must(t)
	diff(t, "no keys", 0, len(try(s.FleetKeys(ctx, lab.ID)).must(t)))
	k := store.FleetKey{FleetID: lab.ID, ID: "bb00000000000000", PublicKey: "ed25519:b", CreatedBy: "user:alice"}
	added := try(s.AddFleetKey(ctx, k)).must(t)
	if added.Created.IsZero() {
		t.Fatalf("added: %+v", added)
	}
	try(s.AddFleetKey(ctx, store.FleetKey{FleetID: lab.ID, ID: "aa00000000000000", PublicKey: "ed25519:a", CreatedBy: "user:alice"})).must(t)
	_, err := s.AddFleetKey(ctx, k)
	is(t, err, store.ErrConflict, "the same key twice")
	_, err = s.AddFleetKey(ctx, store.FleetKey{FleetID: "nowhere", ID: "cc", PublicKey: "ed25519:c"})
	is(t, err, store.ErrNotFound, "key of no fleet")
	_, err = s.AddFleetKey(ctx, store.FleetKey{FleetID: lab.ID})
	is(t, err, store.ErrInvalid, "empty key")
	ks := try(s.FleetKeys(ctx, lab.ID)).must(t)
	if len(ks) != 2 || ks[0].ID != "aa00000000000000" {
		t.Fatalf("FleetKeys: %+v", ks)
	}
	diff(t, "the key as listed", added, ks[1])
	diff(t, "another fleet's keys", 0, len(try(s.FleetKeys(ctx, field.ID)).must(t)))
	is(t, s.RemoveFleetKey(ctx, lab.ID, "aa00000000000000"), nil, "remove a key")
	is(t, s.RemoveFleetKey(ctx, lab.ID, "aa00000000000000"), store.ErrNotFound, "remove it again")
	is(t, s.RemoveFleetKey(ctx, field.ID, "bb00000000000000"), store.ErrNotFound, "remove another fleet's key")
	diff(t, "keys left", 1, len(try(s.FleetKeys(ctx, lab.ID)).must(t)))
}

func testTargets(t *testing.T, s store.Store, _ *Clock) {
	lab := try(s.CreateFleet(ctx, "lab", "")).must(t)
	field := try(s.CreateFleet(ctx, "field", "")).must(t)
	nav1 := rel(s.CreateRelease(ctx, newRelease(lab.ID, "nav", "v1"))).must(t)
	nav2 := rel(s.CreateRelease(ctx, newRelease(lab.ID, "nav", "v2"))).must(t)
	arm1 := rel(s.CreateRelease(ctx, newRelease(lab.ID, "arm", "v1"))).must(t)
	fieldNav := rel(s.CreateRelease(ctx, newRelease(field.ID, "nav", "v1"))).must(t)
	r1 := try(s.CreateDevice(ctx, lab.ID, "r1", store.NewSecret("bd"))).must(t)

	// New devices start with the fleet's releases; old ones keep theirs.
	is(t, s.SetFleetRelease(ctx, lab.ID, nav1.ID), nil, "fleet release nav")
	is(t, s.SetFleetRelease(ctx, lab.ID, arm1.ID), nil, "fleet release arm")
	is(t, s.SetFleetRelease(ctx, lab.ID, fieldNav.ID), store.ErrNotFound, "another fleet's release")
	diff(t, "FleetReleases", []store.AppRelease{{App: "arm", ReleaseID: arm1.ID}, {App: "nav", ReleaseID: nav1.ID}}, try(s.FleetReleases(ctx, lab.ID)).must(t))
	if apps := try(s.DeviceApps(ctx, r1.ID)).must(t); len(apps) != 0 {
		t.Errorf("an existing device got the fleet's releases: %+v", apps)
	}
	r2 := try(s.CreateDevice(ctx, lab.ID, "r2", store.NewSecret("bd"))).must(t)
	r3 := try(s.CreateDevice(ctx, lab.ID, "r3", store.NewSecret("bd"))).must(t)
	apps := func(id string) map[string]string {
		m := map[string]string{}
		for _, a := range try(s.DeviceApps(ctx, id)).must(t) {
			m[a.App] = a.ReleaseID
		}
		return m
	}
	diff(t, "a new device's apps", map[string]string{"nav": nav1.ID, "arm": arm1.ID}, apps(r2.ID))

	// Versions only grow; the latest is the highest handed out.
	latest := try(s.LatestTargetVersion(ctx)).must(t)
	if !(r1.TargetVersion < r2.TargetVersion && r2.TargetVersion < r3.TargetVersion && r3.TargetVersion <= latest) {
		t.Errorf("target versions r1 %d, r2 %d, r3 %d, latest %d", r1.TargetVersion, r2.TargetVersion, r3.TargetVersion, latest)
	}

	// Pin r3 to nav1, then roll nav2 out to everyone: r3 is passed by.
	is(t, s.PinRelease(ctx, r3.ID, nav1.ID), nil, "pin")
	is(t, s.PinRelease(ctx, r3.ID, fieldNav.ID), store.ErrNotFound, "pin to another fleet's release")
	before := try(s.LatestTargetVersion(ctx)).must(t)
	changed, err := s.AssignRelease(ctx, lab.ID, nav2.ID, []string{r1.ID, r2.ID, r3.ID, r1.ID})
	is(t, err, nil, "assign")
	diff(t, "changed", sorted(r1.ID, r2.ID), sorted(changed.Changed...))
	if len(changed.Renewed) != 0 {
		t.Errorf("renewed %v: none had the release", changed.Renewed)
	}
	diff(t, "r1's apps", map[string]string{"nav": nav2.ID}, apps(r1.ID))
	diff(t, "r2's apps", map[string]string{"nav": nav2.ID, "arm": arm1.ID}, apps(r2.ID))
	diff(t, "pinned r3's apps", map[string]string{"nav": nav1.ID, "arm": arm1.ID}, apps(r3.ID))
	v1 := try(s.TargetVersion(ctx, r1.ID)).must(t)
	v3 := try(s.TargetVersion(ctx, r3.ID)).must(t)
	if v1 <= before || v3 > before {
		t.Errorf("after assigning: r1 at %d, pinned r3 at %d; before: %d", v1, v3, before)
	}
	// Changed together, they share a version; TargetChanges orders by
	// version, then device ID.
	first := min(r1.ID, r2.ID)
	diff(t, "TargetChanges, one", []store.TargetChange{{DeviceID: first, Version: v1}}, try(s.TargetChanges(ctx, before, 1)).must(t))
	diff(t, "TargetChanges, all", sorted(r1.ID, r2.ID), deviceIDs(try(s.TargetChanges(ctx, before, 0)).must(t)))

	// Each app's generation is the version that assigned it.
	gens := func(id string) map[string]int64 {
		m := map[string]int64{}
		for _, a := range try(s.DeviceApps(ctx, id)).must(t) {
			m[a.App] = a.Generation
		}
		return m
	}
	if g := gens(r1.ID)["nav"]; g != v1 {
		t.Errorf("r1's nav at generation %d, want its target version %d", g, v1)
	}
	if g := gens(r3.ID)["nav"]; g > before {
		t.Errorf("pinned r3's nav got generation %d from an assign it was passed by", g)
	}

	// Assigning what a device already has renews it: a new generation
	// and target version, the release as it was.
	changed, err = s.AssignRelease(ctx, lab.ID, nav2.ID, []string{r1.ID})
	is(t, err, nil, "assign again")
	v1again := try(s.TargetVersion(ctx, r1.ID)).must(t)
	if len(changed.Changed) != 0 || !slices.Equal(changed.Renewed, []string{r1.ID}) || v1again <= v1 || gens(r1.ID)["nav"] != v1again {
		t.Errorf("assigning the same release again: %+v, target version %d (was %d), generation %d", changed, v1again, v1, gens(r1.ID)["nav"])
	}
	diff(t, "r1's apps after the renewal", map[string]string{"nav": nav2.ID}, apps(r1.ID))
	all := try(s.DevicesApps(ctx, []string{r1.ID, r3.ID, "nobody"})).must(t)
	diff(t, "DevicesApps of r1", try(s.DeviceApps(ctx, r1.ID)).must(t), all[r1.ID])
	diff(t, "DevicesApps of r3", try(s.DeviceApps(ctx, r3.ID)).must(t), all[r3.ID])
	if len(all["nobody"]) != 0 {
		t.Errorf("DevicesApps of no device: %+v", all["nobody"])
	}

	// RenewApp: one device's app, a new generation, nothing else.
	g := try(s.RenewApp(ctx, r1.ID, "nav")).must(t)
	if g <= v1again || gens(r1.ID)["nav"] != g || try(s.TargetVersion(ctx, r1.ID)).must(t) != g {
		t.Errorf("RenewApp gave generation %d; the app has %d, the target version is %d", g, gens(r1.ID)["nav"], try(s.TargetVersion(ctx, r1.ID)).must(t))
	}
	_, err = s.RenewApp(ctx, r1.ID, "sonar")
	is(t, err, store.ErrNotFound, "renew an app the device lacks")

	// Scoping: nothing crosses fleets, and a failed assign changes nothing.
	other := try(s.CreateDevice(ctx, field.ID, "o1", store.NewSecret("bd"))).must(t)
	_, err = s.AssignRelease(ctx, lab.ID, nav1.ID, []string{r1.ID, other.ID})
	is(t, err, store.ErrNotFound, "assign to a device of another fleet")
	diff(t, "r1 after the failed assign", map[string]string{"nav": nav2.ID}, apps(r1.ID))
	_, err = s.AssignRelease(ctx, field.ID, nav1.ID, []string{other.ID})
	is(t, err, store.ErrNotFound, "assign another fleet's release")

	arm1Ref, nav2Ref := arm1, nav2
	arm1Ref.Spec, nav2Ref.Spec = nil, nil
	parts := try(s.TargetParts(ctx, []store.Device{r1, r2, other})).must(t)
	diff(t, "TargetParts of r2", []store.Release{arm1Ref, nav2Ref}, parts[r2.ID].Releases)
	diff(t, "TargetParts of r1", []store.Release{nav2Ref}, parts[r1.ID].Releases)
	if rs := parts[other.ID].Releases; len(rs) != 0 {
		t.Errorf("TargetParts of a device with no apps: %+v", rs)
	}
	diff(t, "TargetParts of r2 alone", parts[r2.ID], try(s.TargetParts(ctx, []store.Device{r2})).must(t)[r2.ID])
	if got := try(s.DeviceRelease(ctx, r1.ID, nav2.ID)).must(t); got.ID != nav2.ID || string(got.Spec) != string(nav2.Spec) {
		t.Errorf("DeviceRelease: %+v", got)
	}
	_, err = s.DeviceRelease(ctx, r1.ID, nav1.ID)
	is(t, err, store.ErrNotFound, "a release of the fleet that is not the device's")
	_, err = s.DeviceRelease(ctx, other.ID, nav2.ID)
	is(t, err, store.ErrNotFound, "another fleet's device reading the release")
	_, err = s.DeviceRelease(ctx, r1.ID, fieldNav.ID)
	is(t, err, store.ErrNotFound, "a release of another fleet")

	// Unpin, and the next assign moves r3 too.
	is(t, s.UnpinApp(ctx, r3.ID, "nav"), nil, "unpin")
	is(t, s.UnpinApp(ctx, r3.ID, "sonar"), store.ErrNotFound, "unpin an app the device lacks")
	changed = try(s.AssignRelease(ctx, lab.ID, nav2.ID, []string{r3.ID})).must(t)
	diff(t, "changed after unpinning", []string{r3.ID}, changed.Changed)

	// The whole fleet at once, in one transaction: a pinned device stays,
	// the others move, new devices start with it, other fleets are left.
	is(t, s.PinRelease(ctx, r2.ID, nav2.ID), nil, "pin r2")
	before = try(s.LatestTargetVersion(ctx)).must(t)
	changed, devices, err := s.AssignFleet(ctx, lab.ID, nav1.ID)
	is(t, err, nil, "assign to the whole fleet")
	diff(t, "changed by AssignFleet", sorted(r1.ID, r3.ID), changed.Changed)
	if len(changed.Renewed) != 0 {
		t.Errorf("AssignFleet renewed %v, the pinned r2 among them?", changed.Renewed)
	}
	if devices != 3 {
		t.Errorf("AssignFleet counted %d devices in the fleet, want 3", devices)
	}
	diff(t, "pinned r2 after AssignFleet", map[string]string{"nav": nav2.ID, "arm": arm1.ID}, apps(r2.ID))
	diff(t, "r1 after AssignFleet", map[string]string{"nav": nav1.ID}, apps(r1.ID))
	diff(t, "TargetChanges after AssignFleet", sorted(r1.ID, r3.ID), deviceIDs(try(s.TargetChanges(ctx, before, 0)).must(t)))
	diff(t, "FleetReleases after AssignFleet", []store.AppRelease{{App: "arm", ReleaseID: arm1.ID}, {App: "nav", ReleaseID: nav1.ID}}, try(s.FleetReleases(ctx, lab.ID)).must(t))
	if apps := apps(other.ID); len(apps) != 0 {
		t.Errorf("AssignFleet reached another fleet's device: %v", apps)
	}
	changed, _, err = s.AssignFleet(ctx, lab.ID, nav1.ID)
	is(t, err, nil, "assign to the whole fleet again")
	if len(changed.Changed) != 0 || !slices.Equal(changed.Renewed, sorted(r1.ID, r3.ID)) {
		t.Errorf("assigning the fleet its release again: %+v, want r1 and r3 renewed (r2 is pinned elsewhere)", changed)
	}
	_, _, err = s.AssignFleet(ctx, lab.ID, fieldNav.ID)
	is(t, err, store.ErrNotFound, "assign another fleet's release to the fleet")
	_, _, err = s.AssignFleet(ctx, "nofleet", nav1.ID)
	is(t, err, store.ErrNotFound, "assign to no fleet")

	v := try(s.TargetVersion(ctx, r2.ID)).must(t)
	is(t, s.RemoveApp(ctx, r2.ID, "arm"), nil, "remove app")
	diff(t, "r2 without arm", map[string]string{"nav": nav2.ID}, apps(r2.ID))
	if try(s.TargetVersion(ctx, r2.ID)).must(t) <= v {
		t.Error("removing an app left the target version")
	}
	is(t, s.RemoveApp(ctx, r2.ID, "arm"), store.ErrNotFound, "remove it again")
	_, err = s.TargetVersion(ctx, "nobody")
	is(t, err, store.ErrNotFound, "target version of nobody")
}

func deviceIDs(cs []store.TargetChange) []string {
	var ids []string
	for _, c := range cs {
		ids = append(ids, c.DeviceID)
	}
	return ids
}

func sorted(s ...string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func testEnv(t *testing.T, s store.Store, _ *Clock) {
	lab := try(s.CreateFleet(ctx, "lab", "")).must(t)
	field := try(s.CreateFleet(ctx, "field", "")).must(t)
	r1 := try(s.CreateDevice(ctx, lab.ID, "r1", store.NewSecret("bd"))).must(t)
	r2 := try(s.CreateDevice(ctx, lab.ID, "r2", store.NewSecret("bd"))).must(t)
	other := try(s.CreateDevice(ctx, field.ID, "o1", store.NewSecret("bd"))).must(t)

	set := func(device, service string, vars map[string]string) {
		t.Helper()
		is(t, s.SetEnv(ctx, store.EnvLayer{FleetID: lab.ID, DeviceID: device, Service: service, Vars: vars}), nil, "set env")
	}
	v1, v2 := r1.TargetVersion, r2.TargetVersion
	set("", "", map[string]string{"LOG": "info", "SITE": "lab"})
	n1, n2 := try(s.TargetVersion(ctx, r1.ID)).must(t), try(s.TargetVersion(ctx, r2.ID)).must(t)
	if n1 <= v1 || n2 <= v2 {
		t.Errorf("a fleet layer did not reach every device: r1 %d -> %d, r2 %d -> %d", v1, n1, v2, n2)
	}
	ov := try(s.TargetVersion(ctx, other.ID)).must(t)
	set("", "nav", map[string]string{"LOG": "debug", "MAP": "floor1"})
	set(r1.ID, "", map[string]string{"SITE": "bench", "ID": "r1"})
	set(r1.ID, "nav", map[string]string{"MAP": "floor2"})
	if try(s.TargetVersion(ctx, other.ID)).must(t) != ov {
		t.Error("another fleet's device got a new target version")
	}
	before := try(s.TargetVersion(ctx, r2.ID)).must(t)
	set(r1.ID, "arm", map[string]string{"SPEED": "slow"})
	if try(s.TargetVersion(ctx, r2.ID)).must(t) != before {
		t.Error("r1's layer moved r2's target version")
	}

	layers := try(s.EnvLayers(ctx, lab.ID, r1.ID)).must(t)
	if len(layers) != 5 {
		t.Fatalf("r1's layers: %+v", layers)
	}
	diff(t, "r1/nav", map[string]string{"LOG": "debug", "SITE": "bench", "ID": "r1", "MAP": "floor2"}, store.MergeEnv(layers, "nav"))
	diff(t, "r1/arm", map[string]string{"LOG": "info", "SITE": "bench", "ID": "r1", "SPEED": "slow"}, store.MergeEnv(layers, "arm"))
	diff(t, "r2/nav", map[string]string{"LOG": "debug", "SITE": "lab", "MAP": "floor1"}, store.MergeEnv(try(s.EnvLayers(ctx, lab.ID, r2.ID)).must(t), "nav"))
	// TargetParts reads the same layers for many devices at once, and
	// keeps fleets and devices apart.
	is(t, s.SetEnv(ctx, store.EnvLayer{FleetID: field.ID, Vars: map[string]string{"SITE": "field"}}), nil, "set env of field")
	parts := try(s.TargetParts(ctx, []store.Device{r1, r2, other})).must(t)
	diff(t, "TargetParts env of r1", layers, parts[r1.ID].Env)
	diff(t, "TargetParts env of r1 alone", layers, try(s.TargetParts(ctx, []store.Device{r1})).must(t)[r1.ID].Env)
	diff(t, "TargetParts env of r2", try(s.EnvLayers(ctx, lab.ID, r2.ID)).must(t), parts[r2.ID].Env)
	diff(t, "TargetParts env of o1", try(s.EnvLayers(ctx, field.ID, other.ID)).must(t), parts[other.ID].Env)
	if len(parts[other.ID].Env) != 1 || len(parts[r2.ID].Env) != 2 {
		t.Errorf("TargetParts env: o1 %+v, r2 %+v", parts[other.ID].Env, parts[r2.ID].Env)
	}
	if got := try(s.EnvLayers(ctx, lab.ID, "")).must(t); len(got) != 2 {
		t.Errorf("fleet-wide layers: %+v", got)
	}

	set(r1.ID, "nav", nil) // delete
	diff(t, "r1/nav without its layer", map[string]string{"LOG": "debug", "SITE": "bench", "ID": "r1", "MAP": "floor1"}, store.MergeEnv(try(s.EnvLayers(ctx, lab.ID, r1.ID)).must(t), "nav"))

	err := s.SetEnv(ctx, store.EnvLayer{FleetID: lab.ID, DeviceID: other.ID, Vars: map[string]string{"X": "1"}})
	is(t, err, store.ErrNotFound, "a layer for another fleet's device")
	err = s.SetEnv(ctx, store.EnvLayer{FleetID: "nowhere", Vars: map[string]string{"X": "1"}})
	is(t, err, store.ErrNotFound, "a layer for no fleet")
	err = s.SetEnv(ctx, store.EnvLayer{FleetID: lab.ID, Vars: map[string]string{"": "1"}})
	is(t, err, store.ErrInvalid, "an empty variable name")

	is(t, s.DeleteDevice(ctx, r1.ID), nil, "delete r1")
	if got := try(s.EnvLayers(ctx, lab.ID, r1.ID)).must(t); len(got) != 2 {
		t.Errorf("a deleted device's layers stayed: %+v", got)
	}
}

func testRollouts(t *testing.T, s store.Store, _ *Clock) {
	lab := try(s.CreateFleet(ctx, "lab", "")).must(t)
	field := try(s.CreateFleet(ctx, "field", "")).must(t)
	nav1 := rel(s.CreateRelease(ctx, newRelease(lab.ID, "nav", "v1"))).must(t)
	nav2 := rel(s.CreateRelease(ctx, newRelease(lab.ID, "nav", "v2"))).must(t)
	arm1 := rel(s.CreateRelease(ctx, newRelease(lab.ID, "arm", "v1"))).must(t)
	r1 := try(s.CreateDevice(ctx, lab.ID, "r1", store.NewSecret("bd"))).must(t)
	r2 := try(s.CreateDevice(ctx, lab.ID, "r2", store.NewSecret("bd"))).must(t)
	other := try(s.CreateDevice(ctx, field.ID, "o1", store.NewSecret("bd"))).must(t)

	params := json.RawMessage(`{"canary":1,"batch":10,"max_failures":1}`)
	ro, err := s.CreateRollout(ctx, store.Rollout{FleetID: lab.ID, ReleaseID: nav2.ID, Params: params, CreatedBy: "user:alice"},
		[]store.RolloutDevice{
			{DeviceID: r2.ID, Stage: 1, PreviousRelease: nav1.ID},
			{DeviceID: r1.ID, Stage: 0, PreviousRelease: nav1.ID},
		})
	is(t, err, nil, "create rollout")
	if ro.App != "nav" || ro.Status != store.RolloutRunning || ro.ID == "" {
		t.Fatalf("new rollout: %+v", ro)
	}
	diff(t, "Rollout", ro, try(s.Rollout(ctx, ro.ID)).must(t))

	_, err = s.CreateRollout(ctx, store.Rollout{FleetID: lab.ID, ReleaseID: nav1.ID}, nil)
	is(t, err, store.ErrConflict, "a second active rollout of nav")
	armRo, err := s.CreateRollout(ctx, store.Rollout{FleetID: lab.ID, ReleaseID: arm1.ID}, nil)
	is(t, err, nil, "a rollout of another app")
	_, err = s.CreateRollout(ctx, store.Rollout{FleetID: field.ID, ReleaseID: nav2.ID}, nil)
	is(t, err, store.ErrNotFound, "a rollout of another fleet's release")
	_, err = s.CreateRollout(ctx, store.Rollout{FleetID: lab.ID, ReleaseID: nav2.ID, Status: store.RolloutCompleted}, nil)
	is(t, err, store.ErrInvalid, "a rollout born completed")

	ds := try(s.RolloutDevices(ctx, ro.ID)).must(t)
	if len(ds) != 2 || ds[0].DeviceID != r1.ID || ds[1].DeviceID != r2.ID || ds[0].Status != "pending" || ds[1].PreviousRelease != nav1.ID {
		t.Errorf("rollout devices: %+v", ds)
	}
	is(t, s.UpdateRolloutDevice(ctx, store.RolloutDevice{RolloutID: ro.ID, DeviceID: r1.ID, Status: "failed", Detail: "nav unhealthy"}), nil, "update device")
	if ds := try(s.RolloutDevices(ctx, ro.ID)).must(t); ds[0].Status != "failed" || ds[0].Detail != "nav unhealthy" || ds[0].Stage != 0 {
		t.Errorf("after update: %+v", ds[0])
	}
	is(t, s.UpdateRolloutDevice(ctx, store.RolloutDevice{RolloutID: ro.ID, DeviceID: other.ID, Status: "x"}), store.ErrNotFound, "update a device not in the rollout")

	// Two replicas pause at once: one wins.
	paused, err := s.SetRolloutStatus(ctx, ro.ID, store.RolloutRunning, store.RolloutPaused)
	is(t, err, nil, "pause")
	if paused.Status != store.RolloutPaused || paused.Updated.Before(ro.Updated) {
		t.Errorf("paused: %+v", paused)
	}
	_, err = s.SetRolloutStatus(ctx, ro.ID, store.RolloutRunning, store.RolloutPaused)
	is(t, err, store.ErrConflict, "pause again from running")
	_, err = s.SetRolloutStatus(ctx, ro.ID, store.RolloutPaused, "exploded")
	is(t, err, store.ErrInvalid, "an unknown status")
	_, err = s.SetRolloutStatus(ctx, "nothing", store.RolloutPaused, store.RolloutRunning)
	is(t, err, store.ErrNotFound, "status of no rollout")
	try(s.SetRolloutStatus(ctx, ro.ID, store.RolloutPaused, store.RolloutAborted)).must(t)

	// Aborted is not active: a new rollout of nav may start.
	ro2, err := s.CreateRollout(ctx, store.Rollout{FleetID: lab.ID, ReleaseID: nav1.ID}, []store.RolloutDevice{{DeviceID: r1.ID}})
	is(t, err, nil, "a rollout after the abort")
	_, err = s.SetRolloutStatus(ctx, ro.ID, store.RolloutAborted, store.RolloutRunning)
	is(t, err, store.ErrConflict, "resume the aborted one while another runs")

	_, err = s.CreateRollout(ctx, store.Rollout{FleetID: lab.ID, ReleaseID: arm1.ID}, []store.RolloutDevice{{DeviceID: other.ID}})
	is(t, err, store.ErrConflict, "arm is still active")
	try(s.SetRolloutStatus(ctx, armRo.ID, store.RolloutRunning, store.RolloutCompleted)).must(t)
	_, err = s.CreateRollout(ctx, store.Rollout{FleetID: lab.ID, ReleaseID: arm1.ID}, []store.RolloutDevice{{DeviceID: other.ID}})
	is(t, err, store.ErrNotFound, "a device of another fleet")
	_, err = s.CreateRollout(ctx, store.Rollout{FleetID: lab.ID, ReleaseID: arm1.ID}, []store.RolloutDevice{{DeviceID: r1.ID}, {DeviceID: r1.ID}})
	is(t, err, store.ErrInvalid, "a device twice")

	var ids []string
	for _, r := range try(s.ListRollouts(ctx, lab.ID)).must(t) {
		ids = append(ids, r.ID)
	}
	diff(t, "ListRollouts, newest first", []string{ro2.ID, armRo.ID, ro.ID}, ids)

	// Deleting a device takes it out of rollouts.
	is(t, s.DeleteDevice(ctx, r1.ID), nil, "delete r1")
	if ds := try(s.RolloutDevices(ctx, ro.ID)).must(t); len(ds) != 1 || ds[0].DeviceID != r2.ID {
		t.Errorf("after deleting r1: %+v", ds)
	}
}

// testRolloutStages: MoveRolloutStage moves a stage's pending devices
// once, recording what they had, skipping pinned ones, only while the
// rollout runs; UpdateRollout and SetRolloutDevice are compare-and-set.
func testRolloutStages(t *testing.T, s store.Store, _ *Clock) {
	lab := try(s.CreateFleet(ctx, "lab", "")).must(t)
	nav1 := rel(s.CreateRelease(ctx, newRelease(lab.ID, "nav", "v1"))).must(t)
	nav2 := rel(s.CreateRelease(ctx, newRelease(lab.ID, "nav", "v2"))).must(t)
	var ds []store.Device
	for _, name := range []string{"r1", "r2", "r3", "r4"} {
		ds = append(ds, try(s.CreateDevice(ctx, lab.ID, name, store.NewSecret("bd"))).must(t))
	}
	r1, r2, r3, r4 := ds[0], ds[1], ds[2], ds[3]
	// r1 and r2 run v1, r3 is pinned to v1, r4 has no nav yet.
	try(s.AssignRelease(ctx, lab.ID, nav1.ID, []string{r1.ID, r2.ID})).must(t)
	is(t, s.PinRelease(ctx, r3.ID, nav1.ID), nil, "pin r3")
	try(s.SetDeviceState(ctx, r1.ID, json.RawMessage(`{"apps":{}}`), store.AnyVersion)).must(t)

	ro := try(s.CreateRollout(ctx, store.Rollout{FleetID: lab.ID, ReleaseID: nav2.ID, CreatedBy: "user:alice"}, []store.RolloutDevice{
		{DeviceID: r1.ID, Stage: 0}, {DeviceID: r2.ID, Stage: 1}, {DeviceID: r3.ID, Stage: 1}, {DeviceID: r4.ID, Stage: 2},
	})).must(t)
	if ro.Stage != 0 || string(ro.State) != "{}" {
		t.Errorf("a new rollout: stage %d, state %s", ro.Stage, ro.State)
	}
	active := try(s.ActiveRollouts(ctx)).must(t)
	if len(active) != 1 || active[0].ID != ro.ID {
		t.Errorf("active rollouts: %+v", active)
	}

	_, err := s.MoveRolloutStage(ctx, ro.ID, 2)
	is(t, err, store.ErrConflict, "skip stage 1")
	before := try(s.TargetVersion(ctx, r2.ID)).must(t)
	moved := try(s.MoveRolloutStage(ctx, ro.ID, 0)).must(t)
	if len(moved) != 1 || moved[0].DeviceID != r1.ID || moved[0].Status != store.RolloutDeviceUpdating ||
		moved[0].PreviousRelease != nav1.ID || moved[0].StateVersion != 1 {
		t.Errorf("stage 0 moved: %+v", moved)
	}
	if as := try(s.DeviceApps(ctx, r1.ID)).must(t); len(as) != 1 || as[0].ReleaseID != nav2.ID || as[0].Generation != moved[0].Generation ||
		moved[0].Generation != try(s.TargetVersion(ctx, r1.ID)).must(t) {
		t.Errorf("r1's target after stage 0: %+v; moved at generation %d", as, moved[0].Generation)
	}
	if got := try(s.RolloutDevices(ctx, ro.ID)).must(t); got[0].DeviceID != r1.ID || got[0].Generation != moved[0].Generation {
		t.Errorf("RolloutDevices after stage 0: %+v", got)
	}
	if try(s.TargetVersion(ctx, r2.ID)).must(t) != before {
		t.Error("stage 0 moved r2's target")
	}
	if again := try(s.MoveRolloutStage(ctx, ro.ID, 0)).must(t); len(again) != 0 {
		t.Errorf("stage 0 again moved %+v", again)
	}

	// The device's progress, compare-and-set.
	done := store.RolloutDevice{RolloutID: ro.ID, DeviceID: r1.ID, Status: "healthy"}
	is(t, s.SetRolloutDevice(ctx, done, store.RolloutDeviceUpdating), nil, "r1 healthy")
	is(t, s.SetRolloutDevice(ctx, done, store.RolloutDeviceUpdating), store.ErrConflict, "r1 healthy again")
	is(t, s.SetRolloutDevice(ctx, store.RolloutDevice{RolloutID: ro.ID, DeviceID: "nobody", Status: "x"}, "y"), store.ErrNotFound, "no such device")

	// Paused, nothing moves; running again, stage 1 moves past the pin.
	paused, err := s.UpdateRollout(ctx, ro.ID, store.RolloutRunning, store.RolloutPaused, json.RawMessage(`{"reason":"r1 failed"}`))
	is(t, err, nil, "pause with a reason")
	if paused.Status != store.RolloutPaused || string(paused.State) != `{"reason":"r1 failed"}` {
		t.Errorf("paused: %+v", paused)
	}
	_, err = s.UpdateRollout(ctx, ro.ID, store.RolloutRunning, store.RolloutPaused, json.RawMessage(`{}`))
	is(t, err, store.ErrConflict, "pause twice")
	_, err = s.UpdateRollout(ctx, ro.ID, store.RolloutPaused, store.RolloutRunning, json.RawMessage(`{`))
	is(t, err, store.ErrInvalid, "state not JSON")
	_, err = s.MoveRolloutStage(ctx, ro.ID, 1)
	is(t, err, store.ErrConflict, "move while paused")
	if d := try(s.DeviceApps(ctx, r2.ID)).must(t); d[0].ReleaseID != nav1.ID {
		t.Errorf("a paused rollout moved r2: %+v", d)
	}
	resumed := try(s.SetRolloutStatus(ctx, ro.ID, store.RolloutPaused, store.RolloutRunning)).must(t)
	if string(resumed.State) != `{"reason":"r1 failed"}` {
		t.Errorf("SetRolloutStatus changed the state: %s", resumed.State)
	}
	moved = try(s.MoveRolloutStage(ctx, ro.ID, 1)).must(t)
	diff(t, "stage 1 moved", sorted(r2.ID+" updating ", r3.ID+" skipped pinned to "+nav1.ID), rolloutDeviceSummary(moved))
	if r, _ := s.Rollout(ctx, ro.ID); r.Stage != 1 {
		t.Errorf("rollout at stage %d, want 1", r.Stage)
	}
	if d := try(s.DeviceApps(ctx, r3.ID)).must(t); d[0].ReleaseID != nav1.ID || !d[0].Pinned {
		t.Errorf("the pinned r3 moved: %+v", d)
	}
	_, err = s.MoveRolloutStage(ctx, ro.ID, 0)
	is(t, err, store.ErrConflict, "back to stage 0")

	// r4 had no nav: its previous release is none, and it gets one.
	moved = try(s.MoveRolloutStage(ctx, ro.ID, 2)).must(t)
	if len(moved) != 1 || moved[0].DeviceID != r4.ID || moved[0].PreviousRelease != "" {
		t.Errorf("stage 2 moved: %+v", moved)
	}
	if d := try(s.DeviceApps(ctx, r4.ID)).must(t); len(d) != 1 || d[0].ReleaseID != nav2.ID {
		t.Errorf("r4's target: %+v", d)
	}
	got := try(s.RolloutDevices(ctx, ro.ID)).must(t)
	diff(t, "rollout devices", sorted(r1.ID+" healthy ", r2.ID+" updating ", r3.ID+" skipped pinned to "+nav1.ID, r4.ID+" updating "), rolloutDeviceSummary(got))

	try(s.SetRolloutStatus(ctx, ro.ID, store.RolloutRunning, store.RolloutCompleted)).must(t)
	if active := try(s.ActiveRollouts(ctx)).must(t); len(active) != 0 {
		t.Errorf("active after completion: %+v", active)
	}

	// A device that has the release already is renewed: it needs the new
	// generation (a failure there is tried again, an override ends).
	r5 := try(s.CreateDevice(ctx, lab.ID, "r5", store.NewSecret("bd"))).must(t)
	try(s.AssignRelease(ctx, lab.ID, nav2.ID, []string{r5.ID})).must(t)
	r5gen := try(s.DeviceApps(ctx, r5.ID)).must(t)[0].Generation
	ro2 := try(s.CreateRollout(ctx, store.Rollout{FleetID: lab.ID, ReleaseID: nav2.ID, CreatedBy: "user:alice"}, []store.RolloutDevice{{DeviceID: r5.ID, Stage: 0}})).must(t)
	moved = try(s.MoveRolloutStage(ctx, ro2.ID, 0)).must(t)
	if d := try(s.DeviceApps(ctx, r5.ID)).must(t); len(moved) != 1 || moved[0].PreviousRelease != nav2.ID || moved[0].Status != store.RolloutDeviceUpdating ||
		d[0].Generation <= r5gen || d[0].Generation != moved[0].Generation {
		t.Errorf("a device on the release already: moved %+v, its app %+v (generation before %d)", moved, d, r5gen)
	}
	try(s.SetRolloutStatus(ctx, ro2.ID, store.RolloutRunning, store.RolloutCompleted)).must(t)
	_, err = s.MoveRolloutStage(ctx, "nothing", 0)
	is(t, err, store.ErrNotFound, "move no rollout")
}

// rolloutDeviceSummary is "ID status detail" per device, sorted.
func rolloutDeviceSummary(ds []store.RolloutDevice) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.DeviceID+" "+d.Status+" "+d.Detail)
	}
	return sorted(out...)
}

func testAudit(t *testing.T, s store.Store, clock *Clock) {
	start := clock.Peek()
	var all []store.AuditEntry
	for i := range 25 {
		e := store.AuditEntry{
			Actor:  []string{"user:alice", "user:bob", "device:r1"}[i%3],
			Action: []string{"release.create", "rollout.pause"}[i%2],
			Object: fmt.Sprintf("fleet/%d", i%4),
		}
		if i%5 == 0 {
			e.Details = json.RawMessage(fmt.Sprintf(`{"i":%d}`, i))
		}
		got := try(s.AppendAudit(ctx, e)).must(t)
		if got.ID == 0 || got.Time.IsZero() || (len(all) > 0 && got.ID <= all[len(all)-1].ID) {
			t.Fatalf("entry %d: %+v after %+v", i, got, all)
		}
		all = append(all, got)
	}
	newestFirst := func(es []store.AuditEntry) []store.AuditEntry {
		out := make([]store.AuditEntry, len(es))
		for i, e := range es {
			out[len(es)-1-i] = e
		}
		return out
	}
	diff(t, "ListAudit", newestFirst(all), try(s.ListAudit(ctx, store.AuditFilter{})).must(t))

	// Page through: every entry once, in order.
	var paged []store.AuditEntry
	var before int64
	for range 10 {
		page := try(s.ListAudit(ctx, store.AuditFilter{Before: before, Limit: 7})).must(t)
		if len(page) == 0 {
			break
		}
		paged = append(paged, page...)
		before = page[len(page)-1].ID
	}
	diff(t, "paged", newestFirst(all), paged)

	var want []store.AuditEntry
	for _, e := range all {
		if e.Actor == "user:bob" && e.Action == "rollout.pause" {
			want = append(want, e)
		}
	}
	diff(t, "bob pausing", newestFirst(want), try(s.ListAudit(ctx, store.AuditFilter{Actor: "user:bob", Action: "rollout.pause"})).must(t))
	want = nil
	for _, e := range all {
		if e.Object == "fleet/2" {
			want = append(want, e)
		}
	}
	diff(t, "fleet/2", newestFirst(want), try(s.ListAudit(ctx, store.AuditFilter{Object: "fleet/2"})).must(t))
	// A time window: entries 10 to 14.
	diff(t, "time window", newestFirst(all[10:15]), try(s.ListAudit(ctx, store.AuditFilter{Since: all[10].Time, Until: all[15].Time})).must(t))
	if !all[0].Time.After(start) {
		t.Errorf("the first entry's time %v is not after %v", all[0].Time, start)
	}

	// A time given is kept.
	at := time.Date(2020, 1, 2, 3, 4, 5, 6000, time.UTC)
	old := try(s.AppendAudit(ctx, store.AuditEntry{Time: at, Actor: "system", Action: "import", Object: "fleet/0"})).must(t)
	if !old.Time.Equal(at) {
		t.Errorf("time %v, want %v", old.Time, at)
	}
	_, err := s.AppendAudit(ctx, store.AuditEntry{Actor: "system", Action: "x", Details: json.RawMessage(`{`)})
	is(t, err, store.ErrInvalid, "details not JSON")
	_, err = s.AppendAudit(ctx, store.AuditEntry{Action: "x"})
	is(t, err, store.ErrInvalid, "no actor")
}

// testConcurrent: what replicas (or one server's handlers) race to do
// comes out one way.
func testConcurrent(t *testing.T, s store.Store, _ *Clock) {
	lab := try(s.CreateFleet(ctx, "lab", "")).must(t)
	const n = 8
	run := func(fn func(i int) error) []error {
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() { errs[i] = fn(i) })
		}
		wg.Wait()
		return errs
	}
	count := func(errs []error, want error) int {
		c := 0
		for _, err := range errs {
			if errors.Is(err, want) || (want == nil && err == nil) {
				c++
			} else if err != nil && !errors.Is(err, store.ErrConflict) {
				t.Errorf("unexpected error: %v", err)
			}
		}
		return c
	}

	var createdCount atomic.Int32
	r := newRelease(lab.ID, "nav", "v1")
	errs := run(func(int) error {
		_, created, err := s.CreateRelease(ctx, r)
		if created {
			createdCount.Add(1)
		}
		return err
	})
	if c := count(errs, nil); c != n || createdCount.Load() != 1 {
		t.Errorf("the same release %d times at once: %d succeeded, %d created", n, c, createdCount.Load())
	}

	errs = run(func(int) error {
		_, err := s.CreateDevice(ctx, lab.ID, "r1", store.NewSecret("bd"))
		return err
	})
	if ok, conflict := count(errs, nil), count(errs, store.ErrConflict); ok != 1 || conflict != n-1 {
		t.Errorf("%d devices named r1 at once: %d created, %d conflicts", n, ok, conflict)
	}

	d := try(s.DeviceByName(ctx, lab.ID, "r1")).must(t)
	errs = run(func(i int) error {
		_, err := s.SetDeviceState(ctx, d.ID, json.RawMessage(fmt.Sprintf(`{"writer":%d}`, i)), 0)
		return err
	})
	if ok, conflict := count(errs, nil), count(errs, store.ErrConflict); ok != 1 || conflict != n-1 {
		t.Errorf("%d reports against version 0 at once: %d won, %d conflicts", n, ok, conflict)
	}

	// Target versions handed out at once are distinct.
	devs := make([]string, n)
	for i := range n {
		devs[i] = try(s.CreateDevice(ctx, lab.ID, fmt.Sprintf("c%d", i), store.NewSecret("bd"))).must(t).ID
	}
	errs = run(func(i int) error {
		_, err := s.AssignRelease(ctx, lab.ID, r.ID, []string{devs[i]})
		return err
	})
	count(errs, nil)
	seen := map[int64]bool{}
	for _, id := range devs {
		v := try(s.TargetVersion(ctx, id)).must(t)
		if seen[v] {
			t.Errorf("target version %d handed out twice", v)
		}
		seen[v] = true
	}
}

func testLogs(t *testing.T, s store.Store, clock *Clock) {
	lab := try(s.CreateFleet(ctx, "lab", "")).must(t)
	r1 := try(s.CreateDevice(ctx, lab.ID, "r1", store.NewSecret("bd"))).must(t)
	r2 := try(s.CreateDevice(ctx, lab.ID, "r2", store.NewSecret("bd"))).must(t)
	line := func(app, svc, text string) store.LogLine {
		return store.LogLine{App: app, Service: svc, Container: "c-" + svc, Time: clock.Now(), Stream: "stdout", Text: text}
	}
	texts := func(ls []store.LogLine) []string {
		var out []string
		for _, l := range ls {
			out = append(out, l.Text)
		}
		return out
	}
	if err := s.AppendLogs(ctx, r1.ID, []store.LogLine{line("a", "web", "1"), line("a", "db", "2"), line("b", "web", "3")}, 4); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendLogs(ctx, r2.ID, []store.LogLine{line("a", "web", "other")}, 4); err != nil {
		t.Fatal(err)
	}
	all := try(s.Logs(ctx, store.LogFilter{DeviceID: r1.ID})).must(t)
	diff(t, "all of r1", []string{"1", "2", "3"}, texts(all))
	if all[0].Container != "c-web" || all[0].Time.IsZero() || all[0].ID <= 0 || all[0].Stream != "stdout" {
		t.Errorf("line: %+v", all[0])
	}
	diff(t, "app a", []string{"1", "2"}, texts(try(s.Logs(ctx, store.LogFilter{DeviceID: r1.ID, App: "a"})).must(t)))
	diff(t, "service web", []string{"1", "3"}, texts(try(s.Logs(ctx, store.LogFilter{DeviceID: r1.ID, Service: "web"})).must(t)))
	diff(t, "stream stdout", []string{"1", "2", "3"}, texts(try(s.Logs(ctx, store.LogFilter{DeviceID: r1.ID, Stream: "stdout"})).must(t)))
	if got := try(s.Logs(ctx, store.LogFilter{DeviceID: r1.ID, Stream: "agent"})).must(t); len(got) != 0 {
		t.Errorf("stream agent: %+v, want none", got)
	}
	diff(t, "since", []string{"2", "3"}, texts(try(s.Logs(ctx, store.LogFilter{DeviceID: r1.ID, Since: all[1].Time})).must(t)))
	diff(t, "newest 2", []string{"2", "3"}, texts(try(s.Logs(ctx, store.LogFilter{DeviceID: r1.ID, Limit: 2})).must(t)))
	diff(t, "after 1", []string{"2"}, texts(try(s.Logs(ctx, store.LogFilter{DeviceID: r1.ID, After: all[0].ID, Limit: 1})).must(t)))

	// Kept: the newest 4.
	if err := s.AppendLogs(ctx, r1.ID, []store.LogLine{line("a", "web", "4"), line("a", "web", "5")}, 4); err != nil {
		t.Fatal(err)
	}
	diff(t, "trimmed", []string{"2", "3", "4", "5"}, texts(try(s.Logs(ctx, store.LogFilter{DeviceID: r1.ID})).must(t)))
	diff(t, "r2 untouched", []string{"other"}, texts(try(s.Logs(ctx, store.LogFilter{DeviceID: r2.ID})).must(t)))

	is(t, s.AppendLogs(ctx, r1.ID, []store.LogLine{line("a", "web", "nul\x00")}, 4), store.ErrInvalid, "a NUL in a line")
}
