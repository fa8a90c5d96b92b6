package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/server"
	"github.com/berth-robotics/berth/internal/serverapi"
)

// TestRegister: a good key registers a device whose token works on
// /v1/device/*; a name is unique in its fleet; a rotated or revoked key is
// refused, saying so, and nothing is stored.
func TestRegister(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		e := newEnv(t, b, envOptions{})
		f := e.fleet("lab")
		d, cl, _ := e.device(f.ProvisioningKey, "robot-1")
		if d.Name != "robot-1" || d.Fleet != "lab" || d.Agent == nil || d.Agent.Arch != "arm64" || d.Agent.Version != "v0.1.0" {
			t.Errorf("registered device: %+v", d)
		}
		if _, _, err := cl.Target(ctx, 0, 0); err != nil {
			t.Fatalf("the device token: %v", err)
		}
		anon := e.client("")
		register := func(key, name string) error {
			_, err := anon.Register(ctx, serverapi.RegisterRequest{ProvisioningKey: key, Name: name})
			return err
		}
		if err := register(f.ProvisioningKey, "robot-1"); status(err) != http.StatusConflict {
			t.Errorf("the same name again: %v, want 409", err)
		}
		if err := register(f.ProvisioningKey, "no spaces"); status(err) != http.StatusBadRequest {
			t.Errorf("a bad name: %v, want 400", err)
		}
		if err := register("bp_"+strings.Repeat("x", 32), "robot-2"); status(err) != http.StatusUnauthorized {
			t.Errorf("an unknown key: %v, want 401", err)
		}

		rotated, err := e.admin.RotateProvisioningKey(ctx, "lab")
		if err != nil {
			t.Fatal(err)
		}
		e.secret(rotated.ProvisioningKey)
		if err := register(f.ProvisioningKey, "robot-2"); status(err) != http.StatusUnauthorized || !strings.Contains(err.Error(), "rotated or revoked") {
			t.Errorf("the old key after rotation: %v, want 401 saying so", err)
		}
		if err := register(rotated.ProvisioningKey, "robot-2"); err != nil {
			t.Errorf("the new key: %v", err)
		}
		if _, err := e.admin.RevokeProvisioningKey(ctx, "lab"); err != nil {
			t.Fatal(err)
		}
		err = register(rotated.ProvisioningKey, "robot-3")
		if status(err) != http.StatusUnauthorized || !strings.Contains(err.Error(), "revoked") {
			t.Errorf("a revoked key: %v, want 401 saying so", err)
		}
		ds, err := e.admin.Devices(ctx, "lab", "")
		if err != nil || len(ds) != 2 {
			t.Errorf("devices: %d, %v; want robot-1 and robot-2 only", len(ds), err)
		}
		// Registered devices keep working after the key is revoked.
		if _, _, err := cl.Target(ctx, 0, 0); err != nil {
			t.Errorf("a registered device after revocation: %v", err)
		}
		// Deleting a device ends its token.
		if err := e.admin.DeleteDevice(ctx, d.ID); err != nil {
			t.Fatal(err)
		}
		if _, _, err := cl.Target(ctx, 0, 0); status(err) != http.StatusUnauthorized {
			t.Errorf("a deleted device's token: %v, want 401", err)
		}
	})
}

// TestLongPoll: a device's long poll answers within a second of an
// assignment, with the new target and its ETag; with nothing changed it
// answers 304 once the wait is over.
func TestLongPoll(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		e := newEnv(t, b, envOptions{})
		f := e.fleet("lab")
		_, cl, tok := e.device(f.ProvisioningKey, "robot-1")
		first, changed, err := cl.Target(ctx, 0, 0)
		if err != nil || !changed || len(first.Apps) != 0 || first.Version <= 0 {
			t.Fatalf("first target: %+v, %v, %v", first, changed, err)
		}

		start := time.Now()
		_, changed, err = cl.Target(ctx, first.Version, time.Second)
		if err != nil || changed {
			t.Fatalf("unchanged: %v, %v; want 304", changed, err)
		}
		if d := time.Since(start); d < 900*time.Millisecond || d > 3*time.Second {
			t.Errorf("a 1s wait took %s", d)
		}
		// The ETag and 304, as HTTP says.
		req, _ := http.NewRequest("GET", e.URL+"/v1/device/target", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("If-None-Match", `"`+itoa(first.Version)+`"`)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotModified || resp.Header.Get("ETag") != `"`+itoa(first.Version)+`"` {
			t.Errorf("conditional GET without wait: %d, ETag %s", resp.StatusCode, resp.Header.Get("ETag"))
		}

		rel := e.release("lab", "app", "v1")
		type result struct {
			t   *serverapi.Target
			at  time.Time
			err error
		}
		got := make(chan result, 1)
		go func() {
			t, _, err := cl.Target(ctx, first.Version, 30*time.Second)
			got <- result{t, time.Now(), err}
		}()
		time.Sleep(300 * time.Millisecond) // the poll is waiting
		assigned := time.Now()
		if _, err := e.admin.Assign(ctx, "lab", rel.ID, serverapi.AssignRequest{All: true}); err != nil {
			t.Fatal(err)
		}
		var r result
		select {
		case r = <-got:
		case <-time.After(5 * time.Second):
			t.Fatal("the long poll did not answer within 5s of the assignment")
		}
		if r.err != nil {
			t.Fatal(r.err)
		}
		if d := r.at.Sub(assigned); d > time.Second {
			t.Errorf("the long poll answered %s after the assignment, want within 1s", d)
		}
		app := r.t.Apps["app"]
		if r.t.Version <= first.Version || app == nil || app.ID != rel.ID || app.Version != "v1" || app.Spec.Services["web"].Image != "web:v1" {
			t.Errorf("new target: %+v", r.t)
		}
		// What the device fetches of it.
		dr, err := cl.DeviceRelease(ctx, rel.ID)
		if err != nil || dr.ID != rel.ID || dr.Spec == nil {
			t.Errorf("the device's release: %+v, %v", dr, err)
		}
		// Unchanged since: 304 after the wait.
		if _, changed, err := cl.Target(ctx, r.t.Version, 500*time.Millisecond); err != nil || changed {
			t.Errorf("after the change: %v, %v; want 304", changed, err)
		}
		if code, _, body := e.do("GET", "/v1/device/target?wait=soon", tok, nil); code != http.StatusBadRequest {
			t.Errorf("wait=soon: %d %s, want 400", code, body)
		}
	})
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }

// TestEnvLayers: layers merge fleet < service < device < device-service
// over the file's environment; a change wakes the device's long poll and
// arrives merged.
func TestEnvLayers(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		e := newEnv(t, b, envOptions{})
		f := e.fleet("lab")
		d, cl, _ := e.device(f.ProvisioningKey, "robot-1")
		rel := e.release("lab", "app", "v1")
		if _, err := e.admin.Assign(ctx, "lab", rel.ID, serverapi.AssignRequest{Devices: []string{d.ID}}); err != nil {
			t.Fatal(err)
		}
		set := func(s serverapi.EnvScope, vars map[string]string) {
			t.Helper()
			if _, err := e.admin.SetEnv(ctx, s, vars); err != nil {
				t.Fatal(err)
			}
		}
		set(serverapi.EnvScope{Fleet: "lab"}, map[string]string{"A": "fleet", "B": "fleet", "C": "fleet", "D": "fleet", "FROM_FILE": "fleet"})
		set(serverapi.EnvScope{Fleet: "lab", Service: "web"}, map[string]string{"B": "service", "C": "service", "D": "service"})
		set(serverapi.EnvScope{Device: d.ID}, map[string]string{"C": "device", "D": "device"})
		before, _, err := cl.Target(ctx, 0, 0)
		if err != nil {
			t.Fatal(err)
		}

		got := make(chan *serverapi.Target, 1)
		go func() {
			t, _, _ := cl.Target(ctx, before.Version, 30*time.Second)
			got <- t
		}()
		time.Sleep(300 * time.Millisecond)
		changed := time.Now()
		set(serverapi.EnvScope{Device: d.ID, Service: "web"}, map[string]string{"D": "device-service"})
		var after *serverapi.Target
		select {
		case after = <-got:
		case <-time.After(5 * time.Second):
			t.Fatal("the env change did not wake the long poll")
		}
		if dt := time.Since(changed); dt > time.Second {
			t.Errorf("woken %s after the change, want within 1s", dt)
		}
		if after == nil || after.Version <= before.Version {
			t.Fatalf("after the env change: %+v (before: version %d)", after, before.Version)
		}
		web := after.Apps["app"].Spec.Services["web"].Environment
		if diff := cmp.Diff(map[string]string{"A": "fleet", "B": "service", "C": "device", "D": "device-service", "FROM_FILE": "fleet"}, web); diff != "" {
			t.Errorf("web's environment (-want +got):\n%s", diff)
		}
		db := after.Apps["app"].Spec.Services["db"].Environment
		if diff := cmp.Diff(map[string]string{"A": "fleet", "B": "fleet", "C": "device", "D": "device", "FROM_FILE": "fleet"}, db); diff != "" {
			t.Errorf("db's environment (-want +got):\n%s", diff)
		}
		// The release itself is as created; only the target is merged.
		if r, _ := e.admin.Release(ctx, "lab", rel.ID); r.Spec.Services["web"].Environment["A"] != "" {
			t.Errorf("the stored release changed: %+v", r.Spec.Services["web"].Environment)
		}
		l, err := e.client(e.user("dora", serverapi.RoleDeployer)).Env(ctx, serverapi.EnvScope{Device: d.ID, Service: "web"})
		if err != nil || l.Vars["D"] != "device-service" {
			t.Errorf("GET the device-service layer: %+v, %v", l, err)
		}
		// Values may be secrets: a viewer reads none (nor on the dashboard).
		code, _, body := e.do("GET", "/v1/devices/"+d.ID+"/env/web", e.user("vera", serverapi.RoleViewer), nil)
		if code != http.StatusForbidden || strings.Contains(string(body), "device-service") {
			t.Errorf("a viewer reading the device-service layer: %d %s, want 403 without values", code, body)
		}
		// The audit names the variables, never their values.
		es, _ := e.admin.Audit(ctx, serverapi.AuditQuery{Action: "env.set"})
		if len(es) != 4 {
			t.Errorf("%d env.set audit entries, want 4", len(es))
		}
		for _, a := range es {
			if strings.Contains(string(a.Details), "fleet\"") || strings.Contains(string(a.Details), "device-service") {
				t.Errorf("an audit entry holds a value: %s", a.Details)
			}
		}
	})
}

// TestStateReport: what a device reports comes back in the device list,
// with "online" and "apps"; reports come at most once a second; a device
// not seen for three poll intervals is offline.
func TestStateReport(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		c := newClock()
		e := newEnv(t, b, envOptions{clock: c})
		f := e.fleet("lab")
		_, cl, tok := e.device(f.ProvisioningKey, "robot-1")
		state := release.CurrentState{
			Agent: release.AgentInfo{Name: "robot-1", Version: "v0.2.0", Arch: "arm64"},
			Apps: map[string]release.AppState{"app": {
				Release: "sha256:1234", Version: "v1", Phase: release.PhaseIdle,
				Services: map[string]release.ServiceState{"web": {Container: "c1", State: "running", Health: "healthy", Release: "sha256:1234"}},
				Updated:  c.Now(),
			}},
			Reported: c.Now(),
		}
		if _, err := cl.ReportState(ctx, state); err != nil {
			t.Fatal(err)
		}
		_, err := cl.ReportState(ctx, state)
		var ae *serverapi.Error
		if status(err) != http.StatusTooManyRequests || !asError(err, &ae) || ae.RetryAfter != time.Second {
			t.Errorf("a second report at once: %v, want 429 with Retry-After 1", err)
		}
		c.Add(time.Second)
		if _, err := cl.ReportState(ctx, state); err != nil {
			t.Errorf("a report a second later: %v", err)
		}

		// The raw JSON, as scripts read it.
		code, _, body := e.do("GET", "/v1/fleets/lab/devices", e.adminToken, nil)
		if code != 200 {
			t.Fatalf("device list: %d %s", code, body)
		}
		var items []map[string]json.RawMessage
		if err := json.Unmarshal(body, &items); err != nil || len(items) != 1 {
			t.Fatalf("device list: %s", body)
		}
		var name string
		var online bool
		var apps map[string]release.AppState
		json.Unmarshal(items[0]["name"], &name)
		json.Unmarshal(items[0]["online"], &online)
		json.Unmarshal(items[0]["apps"], &apps)
		if name != "robot-1" || !online {
			t.Errorf("name %q online %v", name, online)
		}
		if diff := cmp.Diff(state.Apps, apps); diff != "" {
			t.Errorf("apps (-reported +listed):\n%s", diff)
		}

		c.Add(91 * time.Second)
		ds, _ := e.admin.Devices(ctx, "lab", "")
		if ds[0].Online {
			t.Error("online after 3 poll intervals unseen")
		}
		// A poll makes it online again (the "seen" write goes on in the
		// background, within moments).
		e.do("GET", "/v1/device/target", tok, nil)
		for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
			if ds, _ := e.admin.Devices(ctx, "lab", ""); ds[0].Online {
				break
			}
			if time.Since(start) > 2*time.Second {
				t.Fatal("not online 2s after a poll")
			}
		}
	})
}

// TestReplicas: two servers on one PostgreSQL; a device long-polls one,
// the change is made through the other, and NOTIFY wakes the first within
// a second (their rescans are a minute apart: only LISTEN can do it).
func TestReplicas(t *testing.T) {
	pg.Require(t)
	a := newEnv(t, postgres, envOptions{rescan: time.Minute})
	b := newEnv(t, postgres, envOptions{rescan: time.Minute, dsn: a.dsn, dir: a.dir, adminToken: a.adminToken})
	f := a.fleet("lab")
	reg, err := b.client("").Register(ctx, serverapi.RegisterRequest{ProvisioningKey: f.ProvisioningKey, Name: "robot-1"})
	if err != nil {
		t.Fatal(err)
	}
	a.secret(reg.Token)
	b.secret(reg.Token)
	onB := b.client(reg.Token)
	first, _, err := onB.Target(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	rel := a.release("lab", "app", "v1")
	for round, through := range []*env{a, b, a} {
		got := make(chan *serverapi.Target, 1)
		go func() {
			t, _, _ := onB.Target(ctx, first.Version, 30*time.Second)
			got <- t
		}()
		time.Sleep(300 * time.Millisecond)
		start := time.Now()
		vars := map[string]string{"ROUND": itoa(int64(round))}
		if round == 0 {
			if _, err := through.admin.Assign(ctx, "lab", rel.ID, serverapi.AssignRequest{All: true}); err != nil {
				t.Fatal(err)
			}
		} else if _, err := through.admin.SetEnv(ctx, serverapi.EnvScope{Fleet: "lab"}, vars); err != nil {
			t.Fatal(err)
		}
		select {
		case tg := <-got:
			if d := time.Since(start); d > time.Second {
				t.Errorf("round %d: woken %s after the change on the other replica, want within 1s", round, d)
			}
			if tg == nil || tg.Apps["app"] == nil {
				t.Fatalf("round %d: target %+v", round, tg)
			}
			first = tg
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: the change on the other replica did not wake the long poll", round)
		}
	}

	// Logs: followed on a, shipped through b, there within a second.
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lines := make(chan string, 4)
	go a.admin.DeviceLogs(fctx, reg.Device.ID, serverapi.LogQuery{Follow: true}, func(l serverapi.LogLine) error {
		lines <- l.Text
		return nil
	})
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	if err := onB.ShipLogs(ctx, serverapi.LogBatch{Lines: []serverapi.LogLine{logLine("app", "web", "via b")}}); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-lines:
		if got != "via b" {
			t.Errorf("followed %q on a, want the line shipped through b", got)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("a line shipped through b reached a's follower after %s, want within 1s", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a line shipped through b did not reach a's follower")
	}

	// Deleted through a, the device's token (which b keeps, having just
	// taken it) stops working on b within a second: the deletion took a
	// target version, and NOTIFY brought it to b's hub.
	if _, _, err := onB.Target(ctx, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := a.admin.DeleteDevice(ctx, reg.Device.ID); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	for {
		_, _, err := onB.Target(ctx, 0, 0)
		if status(err) == http.StatusUnauthorized {
			break
		}
		if time.Since(start) > time.Second {
			t.Fatalf("the token of a device deleted through a still works on b after %s: %v", time.Since(start), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func asError(err error, target **serverapi.Error) bool { return errors.As(err, target) }

// TestStatePatch: after a whole report, a device sends only what changed
// (a JSON merge patch against the version the server acknowledged); the
// stored state is the whole new state. A patch against a version the
// server no longer holds is 409 and stores nothing, and the reporter then
// sends the whole state; bad patches are 400 and store nothing.
func TestStatePatch(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		c := newClock()
		e := newEnv(t, b, envOptions{clock: c})
		f := e.fleet("lab")
		d, cl, tok := e.device(f.ProvisioningKey, "robot-1")
		svc := func(health string) map[string]release.ServiceState {
			m := map[string]release.ServiceState{}
			for _, name := range []string{"nav", "lidar", "planner", "camera", "web"} {
				m[name] = release.ServiceState{Container: "c-" + name, State: "running", Health: "healthy", Release: "sha256:1234"}
			}
			m["nav"] = release.ServiceState{Container: "c-nav", State: "running", Health: health, Release: "sha256:1234"}
			return m
		}
		state := release.CurrentState{
			Agent:    release.AgentInfo{Name: "robot-1", Version: "v0.2.0", Arch: "arm64"},
			Apps:     map[string]release.AppState{"app": {Release: "sha256:1234", Version: "v1", Phase: release.PhaseIdle, Services: svc("healthy"), Updated: c.Now()}},
			Reported: c.Now(),
		}
		stored := func() release.CurrentState {
			t.Helper()
			got, err := e.st.Device(ctx, d.ID)
			if err != nil {
				t.Fatal(err)
			}
			var cs release.CurrentState
			if err := json.Unmarshal(got.State, &cs); err != nil {
				t.Fatalf("stored state %s: %v", got.State, err)
			}
			return cs
		}

		rep := &serverapi.StateReporter{Client: cl}
		r1, err := rep.Report(ctx, state)
		if err != nil || rep.Whole != 1 {
			t.Fatalf("first report: %v (whole %d)", err, rep.Whole)
		}
		whole := rep.Bytes

		// One service turns unhealthy: a patch, a fraction of the whole.
		c.Add(time.Second)
		state.Apps["app"] = release.AppState{Release: "sha256:1234", Version: "v1", Phase: release.PhaseIdle, Services: svc("unhealthy"), Updated: c.Now()}
		state.Reported = c.Now()
		r2, err := rep.Report(ctx, state)
		if err != nil || rep.Patched != 1 || r2.StateVersion <= r1.StateVersion {
			t.Fatalf("second report: %v (patched %d, versions %d→%d)", err, rep.Patched, r1.StateVersion, r2.StateVersion)
		}
		if patch := rep.Bytes - whole; patch*3 > whole {
			t.Errorf("the patch weighed %d bytes, the whole state %d", patch, whole)
		}
		if diff := cmp.Diff(state, stored()); diff != "" {
			t.Errorf("stored after a patch (-reported +stored):\n%s", diff)
		}

		// Refusals: nothing stored.
		patchRaw := func(ifMatch, body string) int {
			t.Helper()
			c.Add(time.Second)
			req, _ := http.NewRequestWithContext(ctx, "PATCH", e.URL+"/v1/device/state", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+tok)
			if ifMatch != "" {
				req.Header.Set("If-Match", ifMatch)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		v := strconv.Quote(strconv.FormatInt(r2.StateVersion, 10))
		for _, c := range []struct {
			ifMatch, body string
			want          int
		}{
			{"", `{"reported":"2026-01-01T00:00:00Z"}`, 400},                   // no base
			{`"1"`, `{"reported":"2026-01-01T00:00:00Z"}`, 409},                // a stale base
			{v, `{"apps":`, 400},                                               // not JSON
			{v, `{"apps":"x"}`, 400},                                           // not a state once applied
			{v, `{"apps":{"Not Valid":{"phase":"idle"}}}`, 400},                // an app name a report may not have
			{v, `{"reported":"2026-01-01T00:00:00Z","agent":{"name":7}}`, 400}, // a wrong type
		} {
			if got := patchRaw(c.ifMatch, c.body); got != c.want {
				t.Errorf("PATCH If-Match %s %s: %d, want %d", c.ifMatch, c.body, got, c.want)
			}
		}
		if diff := cmp.Diff(state, stored()); diff != "" {
			t.Errorf("stored after refused patches (-reported +stored):\n%s", diff)
		}

		// Another report took the state on (the device reported whole
		// elsewhere): the reporter's patch is refused, and it sends whole.
		c.Add(time.Second)
		other := state
		other.Reported = c.Now().Add(-time.Hour)
		if _, err := cl.ReportState(ctx, other); err != nil {
			t.Fatal(err)
		}
		c.Add(time.Second)
		state.Reported = c.Now()
		if _, err := rep.Report(ctx, state); err != nil || rep.Whole != 2 || rep.Patched != 1 {
			t.Fatalf("report after the server moved on: %v (whole %d, patched %d)", err, rep.Whole, rep.Patched)
		}
		if diff := cmp.Diff(state, stored()); diff != "" {
			t.Errorf("stored after falling back to whole (-reported +stored):\n%s", diff)
		}
	})
}

// TestSharedTargets: devices alike get a target rendered once (the cache
// of renderTarget), yet each gets its own: a fleet-wide env change reaches
// all, a device's own env only that device, a fleet's target never
// another fleet's.
func TestSharedTargets(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		e := newEnv(t, b, envOptions{})
		lab, yard := e.fleet("lab"), e.fleet("yard")
		d1, cl1, _ := e.device(lab.ProvisioningKey, "robot-1")
		d2, cl2, _ := e.device(lab.ProvisioningKey, "robot-2")
		d3, cl3, _ := e.device(yard.ProvisioningKey, "robot-3")
		for _, x := range []struct {
			fleet, dev string
		}{{"lab", d1.ID}, {"lab", d2.ID}, {"yard", d3.ID}} {
			rel := e.release(x.fleet, "app", "v1")
			if _, err := e.admin.Assign(ctx, x.fleet, rel.ID, serverapi.AssignRequest{Devices: []string{x.dev}}); err != nil {
				t.Fatal(err)
			}
		}
		env := func(cl *serverapi.Client) (string, map[string]string) {
			t.Helper()
			tg, _, err := cl.Target(ctx, 0, 0)
			if err != nil {
				t.Fatal(err)
			}
			return tg.Fleet, tg.Apps["app"].Spec.Services["web"].Environment
		}
		set := func(s serverapi.EnvScope, vars map[string]string) {
			t.Helper()
			if _, err := e.admin.SetEnv(ctx, s, vars); err != nil {
				t.Fatal(err)
			}
		}
		for round, v := range []string{"1", "2"} {
			set(serverapi.EnvScope{Fleet: "lab"}, map[string]string{"A": v})
			for _, cl := range []*serverapi.Client{cl1, cl2, cl1} {
				if fleet, got := env(cl); fleet != "lab" || got["A"] != v {
					t.Errorf("round %d: a lab device got fleet %q, A=%q, want lab, %s", round, fleet, got["A"], v)
				}
			}
			if fleet, got := env(cl3); fleet != "yard" || got["A"] != "" {
				t.Errorf("round %d: the yard device got fleet %q, A=%q", round, fleet, got["A"])
			}
		}
		set(serverapi.EnvScope{Device: d2.ID}, map[string]string{"B": "mine"})
		if _, got := env(cl2); got["B"] != "mine" || got["A"] != "2" {
			t.Errorf("robot-2 with its own env: %v", got)
		}
		if _, got := env(cl1); got["B"] != "" || got["A"] != "2" {
			t.Errorf("robot-1 got robot-2's env: %v", got)
		}
	})
}

// TestReportsLetWakeUpsGoFirst: while a long poll the hub woke is still to
// be answered, a state report waits (for at most a few seconds); once every
// woken poll has answered, it goes at once, and the hub counts nothing
// under way.
func TestReportsLetWakeUpsGoFirst(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		e := newEnv(t, b, envOptions{})
		f := e.fleet("lab")
		const n = 20
		answered := make(chan error, n)
		var reporter *serverapi.Client
		var held func()
		for i := range n {
			d, cl, _ := e.device(f.ProvisioningKey, fmt.Sprintf("robot-%d", i))
			first, _, err := cl.Target(ctx, 0, 0)
			if err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				reporter = cl
				held = server.HoldWake(e.srv, d.ID) // woken, it does not answer
				defer held()
			}
			go func() {
				_, changed, err := cl.Target(ctx, first.Version, 30*time.Second)
				if err == nil && !changed {
					err = fmt.Errorf("answered 304, not the new target")
				}
				answered <- err
			}()
		}
		time.Sleep(300 * time.Millisecond) // the polls are waiting
		rel := e.release("lab", "app", "v1")
		if _, err := e.admin.Assign(ctx, "lab", rel.ID, serverapi.AssignRequest{All: true}); err != nil {
			t.Fatal(err)
		}
		for range n {
			select {
			case err := <-answered:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("a long poll did not answer within 10s of the assignment")
			}
		}
		if w := server.Woken(e.srv); w != 1 {
			t.Fatalf("the hub counts %d wake-ups under way; want 1 (the one held)", w)
		}

		state := release.CurrentState{Agent: release.AgentInfo{Name: "robot-0", Version: "test", Arch: "amd64"}, Reported: time.Now().UTC()}
		reported := make(chan error, 1)
		go func() {
			_, err := reporter.ReportState(ctx, state)
			reported <- err
		}()
		select {
		case err := <-reported:
			t.Fatalf("a report went while a woken poll was unanswered (%v); it should wait", err)
		case <-time.After(500 * time.Millisecond):
		}
		start := time.Now()
		held()
		select {
		case err := <-reported:
			if err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("the report went %s after the last woken poll answered; want at once", d)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the report never went after the last woken poll answered")
		}
		if w := server.Woken(e.srv); w != 0 {
			t.Errorf("the hub counts %d wake-ups under way after all answered", w)
		}
	})
}

// TestKeptDeviceNeverGoesBack: the server keeps a device found by its token
// with its target version while its hub handles nothing new; a change it
// has not handled yet (made on another replica, its NOTIFY still to come)
// must not send a device that heard of it elsewhere back to the older
// version, and its content is readable at once.
func TestKeptDeviceNeverGoesBack(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		e := newEnv(t, b, envOptions{rescan: time.Minute})
		f := e.fleet("lab")
		d, cl, _ := e.device(f.ProvisioningKey, "robot-1")
		first, _, err := cl.Target(ctx, 0, 0) // now kept
		if err != nil {
			t.Fatal(err)
		}
		if _, changed, err := cl.Target(ctx, first.Version, 10*time.Millisecond); err != nil || changed {
			t.Fatalf("unchanged: %v, %v", changed, err)
		}
		// Straight into the store: as another replica would, but with no
		// kick and no NOTIFY reaching this one's hub (its rescan is a
		// minute away).
		rel := e.release("lab", "app", "v1")
		if _, err := e.st.AssignRelease(ctx, f.Fleet.ID, rel.ID, []string{d.ID}); err != nil {
			t.Fatal(err)
		}
		now, err := e.st.TargetVersion(ctx, d.ID)
		if err != nil || now <= first.Version {
			t.Fatalf("target version after the assign: %d, %v", now, err)
		}
		// The device heard of it elsewhere and asks with the new version.
		tg, changed, err := cl.Target(ctx, now, 500*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if changed {
			t.Fatalf("asked with version %d (the newest), got version %d back: a kept version sent the device back", now, tg.Version)
		}
		// Asked without a version, it gets the new target, not the kept one.
		tg, _, err = cl.Target(ctx, 0, 0)
		if err != nil || tg.Version != now || tg.Apps["app"] == nil {
			t.Fatalf("the whole target: %+v, %v; want version %d with the app", tg, err, now)
		}
	})
}
