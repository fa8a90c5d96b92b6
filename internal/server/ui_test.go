package server_test

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/server"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/store"
)

// browser is an HTTP client with cookies that does not follow redirects,
// as a browser's requests look to the server.
type browser struct {
	t    *testing.T
	e    *env
	c    *http.Client
	csrf string // the last csrf field seen on a page
}

func newBrowser(t *testing.T, e *env) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, e: e, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// do sends a request; form, if not nil, is POSTed. It returns the status,
// the Location header and the body.
func (b *browser) do(method, path string, form url.Values, hdr ...string) (int, string, string) {
	b.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequestWithContext(ctx, method, b.e.URL+path, body)
	if err != nil {
		b.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if m := csrfRE.FindSubmatch(out); m != nil {
		b.csrf = string(m[1])
	}
	return resp.StatusCode, resp.Header.Get("Location"), string(out)
}

func (b *browser) get(path string) (int, string, string) { return b.do(http.MethodGet, path, nil) }

// login logs in with token and expects to be let in.
func (b *browser) login(token string) {
	b.t.Helper()
	if st, _, body := b.get("/ui/login"); st != 200 || !strings.Contains(body, `name="token"`) {
		b.t.Fatalf("login page: %d\n%s", st, body)
	}
	st, loc, body := b.do(http.MethodPost, "/ui/login", url.Values{"token": {token}, "csrf": {b.csrf}, "next": {"/ui/"}})
	if st != http.StatusSeeOther || loc != "/ui/" {
		b.t.Fatalf("login: %d to %q\n%s", st, loc, body)
	}
	if _, _, body := b.get("/ui/"); !strings.Contains(body, "Log out") {
		b.t.Fatalf("after login the overview has no logout button:\n%s", body)
	}
}

// TestUIAuth: without a session pages redirect to the login page and
// everything else is refused; a bad token or a login without its CSRF
// token does not log in; the session cookie is HttpOnly and SameSite=Strict;
// a POST without the session's CSRF token, or from another origin, is
// refused and changes nothing; a viewer sees no action buttons and is
// refused if it posts anyway; a deployer pauses, resumes and aborts a
// rollout from the page, audited as itself; logout and a deleted token
// end the session.
func TestUIAuth(t *testing.T) {
	e := newEnv(t, sqlite, envOptions{})
	viewerTok := e.user("vera", serverapi.RoleViewer)
	deployerTok := e.user("dan", serverapi.RoleDeployer)
	f := e.fleet("lab")
	devA, _, _ := e.device(f.ProvisioningKey, "robot-a")
	e.device(f.ProvisioningKey, "robot-b")
	rel := e.release("lab", "app", "v1")
	ro, err := e.admin.StartRollout(ctx, "lab", serverapi.StartRolloutRequest{Release: rel.ID, Canary: "1", Batch: 1})
	if err != nil {
		t.Fatal(err)
	}
	roPath := "/ui/fleets/lab/rollouts/" + ro.ID

	anon := newBrowser(t, e)
	for _, path := range []string{"/ui/", "/ui/devices/" + devA.ID, roPath, "/ui/fleets/lab/releases", "/ui/audit"} {
		st, loc, _ := anon.get(path)
		if st != http.StatusSeeOther || !strings.HasPrefix(loc, "/ui/login?next=") {
			t.Errorf("GET %s without a session: %d to %q, want 303 to the login page", path, st, loc)
		}
	}
	if st, _, _ := anon.do(http.MethodGet, "/ui/", nil, "Accept", "text/event-stream"); st != http.StatusUnauthorized {
		t.Errorf("live updates without a session: %d, want 401", st)
	}
	if st, loc, _ := anon.get("/"); st != http.StatusSeeOther || loc != "/ui/" {
		t.Errorf("GET /: %d to %q, want 303 to /ui/", st, loc)
	}
	if st, _, _ := anon.do(http.MethodPost, roPath+"/pause", url.Values{"csrf": {"x"}}); st != http.StatusUnauthorized {
		t.Errorf("pause without a session: %d, want 401", st)
	}
	// Logging in: a bad token, a device's token, no CSRF token.
	anon.get("/ui/login")
	if st, _, body := anon.do(http.MethodPost, "/ui/login", url.Values{"token": {"bt_" + strings.Repeat("a", 32)}, "csrf": {anon.csrf}}); st != http.StatusUnauthorized || !strings.Contains(body, "not accepted") {
		t.Errorf("login with a bad token: %d\n%s", st, body)
	}
	if st, _, _ := anon.do(http.MethodPost, "/ui/login", url.Values{"token": {deployerTok}}); st != http.StatusForbidden {
		t.Errorf("login without the form's CSRF token: %d, want 403", st)
	}
	if st, _, _ := anon.do(http.MethodPost, "/ui/login", url.Values{"token": {deployerTok}, "csrf": {anon.csrf}}, "Origin", "https://evil.example"); st != http.StatusForbidden {
		t.Errorf("login from another origin: %d, want 403", st)
	}

	// The deployer's session.
	dan := newBrowser(t, e)
	dan.get("/ui/login")
	req, _ := http.NewRequest(http.MethodPost, e.URL+"/ui/login", strings.NewReader(url.Values{"token": {deployerTok}, "csrf": {dan.csrf}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for _, c := range dan.c.Jar.Cookies(req.URL) {
		req.AddCookie(c)
	}
	resp, err := dan.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	sess := sessionCookie(resp)
	if sess == nil || !sess.HttpOnly || sess.SameSite != http.SameSiteStrictMode || len(sess.Value) < 32 || strings.Contains(sess.Value, deployerTok) {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, a random ID", sess)
	}
	for path, want := range map[string]string{
		"/ui/":                             "robot-a",
		"/ui/devices/" + devA.ID:           "Recent events",
		"/ui/devices/" + devA.ID + "/logs": "Logs of robot-a",
		"/ui/fleets/lab/releases":          "v1",
		"/ui/fleets/lab/rollouts":          ro.ID,
		roPath:                             `id="pause"`,
	} {
		if st, _, body := dan.get(path); st != 200 || !strings.Contains(body, want) {
			t.Errorf("GET %s as deployer: %d, want 200 with %q\n%s", path, st, want, body)
		}
	}
	if st, _, _ := dan.get("/ui/audit"); st != http.StatusForbidden {
		t.Errorf("audit as deployer: %d, want 403 (admins only, as GET /v1/audit)", st)
	}
	dan.get(roPath)
	good := dan.csrf
	before := e.auditCount() // after the login, which is audited

	// CSRF: no token, a wrong one, another origin, a cross-site fetch.
	for name, tc := range map[string]struct {
		form url.Values
		hdr  []string
	}{
		"NoToken":     {url.Values{}, nil},
		"WrongToken":  {url.Values{"csrf": {strings.Repeat("0", 64)}}, nil},
		"OtherOrigin": {url.Values{"csrf": {good}}, []string{"Origin", "https://evil.example"}},
		"CrossSite":   {url.Values{"csrf": {good}}, []string{"Sec-Fetch-Site", "cross-site"}},
	} {
		if st, _, _ := dan.do(http.MethodPost, roPath+"/pause", tc.form, tc.hdr...); st != http.StatusForbidden {
			t.Errorf("%s: pause: %d, want 403", name, st)
		}
	}
	if got, _ := e.st.Rollout(ctx, ro.ID); got.Status != store.RolloutRunning {
		t.Fatalf("refused posts changed the rollout: %s", got.Status)
	}
	if after := e.auditCount(); after != before {
		t.Errorf("refused posts changed something: %d audit entries, were %d", after, before)
	}

	// A viewer: no buttons, and a 403 for posting anyway.
	vera := newBrowser(t, e)
	vera.login(viewerTok)
	st, _, body := vera.get(roPath)
	if st != 200 || strings.Contains(body, `id="pause"`) || strings.Contains(body, `id="abort"`) {
		t.Errorf("rollout page for a viewer: %d, has action buttons", st)
	}
	if _, _, body := vera.get("/ui/fleets/lab/releases"); strings.Contains(body, "Start rollout") {
		t.Error("releases page for a viewer offers to start a rollout")
	}
	before = e.auditCount()
	for path, form := range map[string]url.Values{
		roPath + "/pause":         {"csrf": {vera.csrf}},
		roPath + "/resume":        {"csrf": {vera.csrf}},
		roPath + "/abort":         {"csrf": {vera.csrf}},
		"/ui/fleets/lab/rollouts": {"csrf": {vera.csrf}, "release": {rel.ID}},
	} {
		if st, _, _ := vera.do(http.MethodPost, path, form); st != http.StatusForbidden {
			t.Errorf("POST %s as viewer: %d, want 403", path, st)
		}
	}
	if got, _ := e.st.Rollout(ctx, ro.ID); got.Status != store.RolloutRunning {
		t.Fatalf("a viewer's post changed the rollout: %s", got.Status)
	}
	if after := e.auditCount(); after != before {
		t.Errorf("a viewer's posts changed something: %d audit entries, were %d", after, before)
	}

	// The deployer acts: pause (with a reason), resume, abort.
	dan.login(deployerTok)
	dan.get(roPath)
	for _, step := range []struct{ action, want string }{{"pause", "paused"}, {"resume", "running"}, {"abort", "aborted"}} {
		st, loc, body := dan.do(http.MethodPost, roPath+"/"+step.action, url.Values{"csrf": {dan.csrf}, "reason": {"from the test"}})
		if st != http.StatusSeeOther || !strings.HasPrefix(loc, roPath) {
			t.Fatalf("%s: %d to %q\n%s", step.action, st, loc, body)
		}
		if got, _ := e.st.Rollout(ctx, ro.ID); string(got.Status) != step.want {
			t.Fatalf("after %s the rollout is %s", step.action, got.Status)
		}
		if _, _, body := dan.get(loc); !strings.Contains(body, `data-status="`+step.want+`"`) {
			t.Errorf("after %s the page does not show %s", step.action, step.want)
		}
	}
	es, _ := e.st.ListAudit(ctx, store.AuditFilter{Action: "rollout.pause"})
	if len(es) != 1 || es[0].Actor != "user:dan" || !strings.Contains(string(es[0].Details), "from the test") {
		t.Errorf("audit of the pause: %+v", es)
	}

	// Start a rollout from the releases page.
	dan.get("/ui/fleets/lab/releases")
	st, loc, body := dan.do(http.MethodPost, "/ui/fleets/lab/rollouts", url.Values{"csrf": {dan.csrf}, "release": {rel.ID}, "canary": {"1"}, "batch": {"5"}, "max_failures": {"1"}, "stage_timeout": {"10m"}})
	if st != http.StatusSeeOther || !strings.Contains(loc, "/ui/fleets/lab/rollouts/") {
		t.Fatalf("start a rollout: %d to %q\n%s", st, loc, body)
	}
	// A bad value is refused with the API's word, nothing started.
	n, _ := e.st.ListRollouts(ctx, f.ID)
	if st, _, body := dan.do(http.MethodPost, "/ui/fleets/lab/rollouts", url.Values{"csrf": {dan.csrf}, "release": {rel.ID}, "stage_timeout": {"1ms"}}); st != http.StatusBadRequest || !strings.Contains(body, "stage_timeout") {
		t.Errorf("a bad stage timeout: %d\n%s", st, body)
	}
	if m, _ := e.st.ListRollouts(ctx, f.ID); len(m) != len(n) {
		t.Error("a refused start made a rollout")
	}

	// Live updates: the page's section as a server-sent event.
	liveEvent(t, dan, "/ui/?fleet=lab", "robot-b")

	// Logout ends the session, and its live streams.
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, e.URL+"/ui/?fleet=lab", nil)
	req.Header.Set("Accept", "text/event-stream")
	stream, err := dan.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()
	ended := make(chan struct{})
	go func() { io.Copy(io.Discard, stream.Body); close(ended) }()
	dan.get("/ui/")
	if st, _, _ := dan.do(http.MethodPost, "/ui/logout", url.Values{"csrf": {dan.csrf}}); st != http.StatusSeeOther {
		t.Errorf("logout: %d", st)
	}
	if st, _, _ := dan.get("/ui/"); st != http.StatusSeeOther {
		t.Errorf("after logout: %d, want a redirect to the login page", st)
	}
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Error("a live stream went on after logout")
	}

	// Deleting the token ends the viewer's session.
	users, _ := e.admin.Users(ctx)
	for _, u := range users {
		if u.Name == "vera" {
			ts, _ := e.admin.Tokens(ctx, u.ID)
			if err := e.admin.DeleteToken(ctx, u.ID, ts[0].ID); err != nil {
				t.Fatal(err)
			}
		}
	}
	if st, _, _ := vera.get("/ui/"); st != http.StatusSeeOther {
		t.Errorf("with its token deleted: %d, want the login page", st)
	}
}

// openLive opens a page's event stream; it is closed after 10 s whatever
// the reader is waiting for.
func openLive(t *testing.T, b *browser, path string) *http.Response {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, b.e.URL+path, nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := b.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		resp.Body.Close()
		t.Fatalf("live %s: %d %s", path, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	time.AfterFunc(10*time.Second, func() { resp.Body.Close() })
	return resp
}

// liveEvent reads the page's event stream until a "live" event holds want.
func liveEvent(t *testing.T, b *browser, path, want string) {
	t.Helper()
	resp := openLive(t, b, path)
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	event := ""
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "event: "); ok {
			event = v
		}
		if strings.HasPrefix(line, "data: ") && event == "live" && strings.Contains(line, want) {
			return
		}
	}
	t.Fatalf("no live event with %q", want)
}

// TestUIDocs: docs/api.md documents every dashboard route with its role.
func TestUIDocs(t *testing.T) {
	documented(t, server.New(nil, server.Options{}).UIRoutes())
}

// TestUILogs: the device page's log stream sends the lines stored after
// the one it names, then new ones as the device ships them; the page
// escapes what a container prints; without a session the stream is 401.
func TestUILogs(t *testing.T) {
	e := newEnv(t, sqlite, envOptions{})
	f := e.fleet("lab")
	dev, cl, _ := e.device(f.ProvisioningKey, "robot-a")
	ship := func(text string) {
		t.Helper()
		if err := cl.ShipLogs(ctx, serverapi.LogBatch{Lines: []serverapi.LogLine{{App: "app", Service: "web", Stream: "stdout", Time: time.Now(), Text: text}}}); err != nil {
			t.Fatal(err)
		}
	}
	ship("<script>alert(1)</script>")
	b := newBrowser(t, e)
	b.login(e.adminToken)
	st, _, body := b.get("/ui/devices/" + dev.ID)
	if st != 200 || strings.Contains(body, "<script>alert") || !strings.Contains(body, "&lt;script&gt;alert(1)&lt;/script&gt;") {
		t.Fatalf("device page: %d; want the line escaped\n%s", st, body)
	}
	path := "/ui/devices/" + dev.ID + "/logs"
	if st, _, _ := newBrowser(t, e).do(http.MethodGet, path, nil, "Accept", "text/event-stream"); st != http.StatusUnauthorized {
		t.Errorf("log stream without a session: %d, want 401", st)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.URL+path+"?after=1", nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := b.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	timer := time.AfterFunc(10*time.Second, func() { resp.Body.Close() })
	defer timer.Stop()
	go func() {
		time.Sleep(200 * time.Millisecond)
		ship("planner ready")
	}()
	sc := bufio.NewScanner(resp.Body)
	var got []string
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			got = append(got, d)
			if strings.Contains(d, "planner ready") {
				break
			}
		}
	}
	if len(got) != 1 || !strings.Contains(got[0], `"text":"planner ready"`) {
		t.Fatalf("log events after line 1: %q; want just the new line", got)
	}
}

// liveRaw reads the page's event stream up to the end of its first "live"
// event and returns the stream's bytes so far, as sent.
func liveRaw(t *testing.T, b *browser, path string) string {
	t.Helper()
	resp := openLive(t, b, path)
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	var raw strings.Builder
	inLive := false
	for {
		line, err := r.ReadString('\n')
		raw.WriteString(line)
		if err != nil {
			t.Fatalf("live %s: %v after %q", path, err, raw.String())
		}
		if line == "event: live\n" {
			inLive = true
		}
		if inLive && line == "\n" {
			return raw.String()
		}
	}
}

// TestUIDeviceState: what a device reports — service names, reasons, lock
// holders, who deployed an override, agent versions — is text on the
// page, escaped, in the page and in its live events; a CR in it cannot
// start a field of the event stream; lock waits, overrides, rollbacks and
// kept releases show; environment variables show by name and layer, their
// values never (in the page or its events).
func TestUIDeviceState(t *testing.T) {
	e := newEnv(t, sqlite, envOptions{})
	f := e.fleet("lab")
	dev, cl, _ := e.device(f.ProvisioningKey, "robot-a")
	secrets := map[string]string{"DB_PASSWORD": "hunter2-fleet-value", "SITE": "lab-site-value"}
	if _, err := e.admin.SetEnv(ctx, serverapi.EnvScope{Fleet: "lab"}, secrets); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.SetEnv(ctx, serverapi.EnvScope{Fleet: "lab", Device: dev.ID, Service: "nav"}, map[string]string{"API_TOKEN": "tok-device-value"}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	evil := "<script>alert(1)</script>"
	state := release.CurrentState{
		Agent: release.AgentInfo{Name: "robot-a", Version: "v1" + evil, Arch: "arm64"},
		Apps: map[string]release.AppState{
			"cam": {Version: "v2", Phase: release.PhaseRolledBack, FleetFailed: "sha256:" + strings.Repeat("b", 64),
				Error:    "service web unhealthy: " + evil + "\rretry: 1\revent: evil\rdata: injected",
				Kept:     []release.KeptRelease{{ID: "sha256:" + strings.Repeat("c", 64), Version: "v1"}},
				Services: map[string]release.ServiceState{`<img src=x onerror="alert(2)">`: {State: "running", Health: "healthy", Restarts: 3}},
				Updated:  now},
			"nav": {Version: "v1", Phase: release.PhaseWaitingLock, Lock: &release.LockInfo{Holder: "mission-" + evil}, Updated: now,
				Services: map[string]release.ServiceState{"nav": {State: "running"}}},
			"arm": {Version: "dev", Phase: release.PhaseIdle, Override: &release.Override{By: "alice@laptop" + evil, Since: now}, Updated: now,
				Services: map[string]release.ServiceState{"arm": {State: "running"}}},
		},
		Reported: now,
	}
	if _, err := cl.ReportState(ctx, state); err != nil {
		t.Fatal(err)
	}
	b := newBrowser(t, e)
	b.login(e.adminToken)
	_, _, page := b.get("/ui/devices/" + dev.ID)
	overview := liveRaw(t, b, "/ui/?fleet=lab")
	live := liveRaw(t, b, "/ui/devices/"+dev.ID)
	for name, body := range map[string]string{"page": page, "live": live, "overview": overview} {
		for _, bad := range []string{"<script>", "<img src=x", "hunter2-fleet-value", "lab-site-value", "tok-device-value"} {
			if strings.Contains(body, bad) {
				t.Errorf("%s holds %q", name, bad)
			}
		}
		if name == "overview" {
			if !strings.Contains(body, "&lt;script&gt;alert(1)&lt;/script&gt;") {
				t.Errorf("overview: the reason is not there, escaped:\n%s", body)
			}
			continue
		}
		for _, want := range []string{
			"&lt;script&gt;alert(1)&lt;/script&gt;",                 // the reason, the agent's version
			"&lt;img src=x onerror=&#34;alert(2)&#34;&gt;",          // a service's name
			"waiting for the update lock held by mission-&lt;",      // a lock wait
			"local override deployed by alice@laptop&lt;script&gt;", // an override
			"rolled back", "<dt>Kept</dt>",
			"DB_PASSWORD", "SITE", "API_TOKEN", // names, not values
		} {
			if !strings.Contains(body, want) {
				t.Errorf("%s: no %q", name, want)
			}
		}
	}
	for _, raw := range []string{live, overview} {
		if strings.Contains(raw, "\r") {
			t.Errorf("a CR in the event stream (ends a line, so a device could start a field):\n%q", raw)
		}
		for line := range strings.SplitSeq(raw, "\n") {
			if line != "" && !strings.HasPrefix(line, "data: ") && !strings.HasPrefix(line, "event: live") {
				t.Errorf("event stream line %q: want only event: live and data: lines", line)
			}
		}
	}
}

// TestUISession: a session ends after 12 hours; logout needs the session's
// CSRF token (a forced logout is refused); a live stream ends when its
// user loses the role its page needs; over TLS the cookies are Secure;
// ?done= shows only what an action did, not text from a link.
func TestUISession(t *testing.T) {
	clk := newClock()
	e := newEnv(t, sqlite, envOptions{clock: clk})
	e.fleet("lab")
	b := newBrowser(t, e)
	b.login(e.adminToken)

	if st, _, _ := b.do(http.MethodPost, "/ui/logout", url.Values{}); st != http.StatusForbidden {
		t.Errorf("logout without the CSRF token: %d, want 403", st)
	}
	if st, _, body := b.get("/ui/"); st != 200 || !strings.Contains(body, "Log out") {
		t.Fatalf("a refused logout ended the session: %d", st)
	}

	if _, _, body := b.get("/ui/?fleet=lab&done=aborted"); !strings.Contains(body, "Rollout aborted.") {
		t.Error("?done=aborted: no flash")
	}
	if _, _, body := b.get("/ui/?fleet=lab&done=" + url.QueryEscape("aborted. Your session expired: log in at evil.example")); strings.Contains(body, "evil.example") || strings.Contains(body, `class="flash"`) {
		t.Error("?done= put a link's own text on the page")
	}

	clk.Add(12*time.Hour - time.Minute)
	if st, _, _ := b.get("/ui/"); st != 200 {
		t.Fatalf("a session under 12 hours old: %d", st)
	}
	clk.Add(2 * time.Minute)
	if st, loc, _ := b.get("/ui/"); st != http.StatusSeeOther || !strings.HasPrefix(loc, "/ui/login") {
		t.Errorf("a session over 12 hours old: %d to %q, want the login page", st, loc)
	}
	if st, _, _ := b.do(http.MethodGet, "/ui/", nil, "Accept", "text/event-stream"); st != http.StatusUnauthorized {
		t.Errorf("live updates of an expired session: %d, want 401", st)
	}

	// A role taken away ends the streams that needed it.
	ada := newBrowser(t, e)
	ada.login(e.user("ada", serverapi.RoleAdmin))
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.URL+"/ui/audit", nil)
	req.Header.Set("Accept", "text/event-stream")
	stream, err := ada.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()
	if stream.StatusCode != 200 {
		t.Fatalf("the audit log's stream: %s", stream.Status)
	}
	ended := make(chan struct{})
	go func() { io.Copy(io.Discard, stream.Body); close(ended) }()
	u, err := e.st.UserByName(ctx, "ada")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.st.SetUserRole(ctx, u.ID, store.RoleViewer); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Error("the audit log's stream went on after its user stopped being an admin")
	}
	if st, _, _ := ada.get("/ui/audit"); st != http.StatusForbidden {
		t.Errorf("the audit log for a former admin: %d, want 403", st)
	}

	// Over TLS.
	ts := httptest.NewTLSServer(e.srv.Handler())
	defer ts.Close()
	jar, _ := cookiejar.New(nil)
	c := ts.Client()
	c.Jar = jar
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Get(ts.URL + "/ui/login")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := csrfRE.FindSubmatch(body)
	if m == nil {
		t.Fatalf("login page over TLS:\n%s", body)
	}
	resp, err = c.PostForm(ts.URL+"/ui/login", url.Values{"token": {e.adminToken}, "csrf": {string(m[1])}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	sess := sessionCookie(resp)
	if resp.StatusCode != http.StatusSeeOther || sess == nil || !sess.Secure || !sess.HttpOnly || sess.SameSite != http.SameSiteStrictMode {
		t.Errorf("login over TLS: %d, session cookie %+v; want Secure, HttpOnly, SameSite=Strict", resp.StatusCode, sess)
	}
}

// TestUIOverviewPages: a fleet too big for one page is listed 500 devices
// a page, with links to the pages before and after (keeping a tag filter);
// the counts cover all.
// The audit log's link to older entries keeps its filters.
func TestUIOverviewPages(t *testing.T) {
	e := newEnv(t, sqlite, envOptions{})
	e.fleet("lab")
	fs, err := e.st.ListFleets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 1001 {
		d, err := e.st.CreateDevice(ctx, fs[0].ID, fmt.Sprintf("robot-%04d", i), store.NewSecret("bd"))
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 { // 501 devices tagged
			if err := e.st.SetDeviceTags(ctx, d.ID, []string{"dock-1"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	b := newBrowser(t, e)
	b.login(e.adminToken)
	rows := func(body string) int { return strings.Count(body, "<tr data-device=") }
	_, _, p1 := b.get("/ui/?fleet=lab")
	if rows(p1) != 500 || !strings.Contains(p1, `<span class="n">1001</span> devices`) || !strings.Contains(p1, "Devices 1–500 of 1001") ||
		!strings.Contains(p1, `href="/ui/?fleet=lab&amp;page=2"`) || strings.Contains(p1, `rel="prev"`) {
		t.Errorf("page 1: %d rows\n%s", rows(p1), p1)
	}
	_, _, p3 := b.get("/ui/?fleet=lab&page=3")
	if rows(p3) != 1 || !strings.Contains(p3, `data-device="robot-1000"`) || !strings.Contains(p3, "Devices 1001–1001 of 1001") ||
		!strings.Contains(p3, `href="/ui/?fleet=lab&amp;page=2"`) || strings.Contains(p3, `rel="next"`) {
		t.Errorf("page 3: %d rows\n%s", rows(p3), p3)
	}
	_, _, tagged := b.get("/ui/?fleet=lab&tag=dock-1&page=2")
	if rows(tagged) != 1 || !strings.Contains(tagged, `data-device="robot-1000"`) || !strings.Contains(tagged, `<span class="n">501</span> devices tagged dock-1`) ||
		!strings.Contains(tagged, `href="/ui/?fleet=lab&amp;tag=dock-1&amp;page=1"`) {
		t.Errorf("page 2 of the devices tagged dock-1: %d rows\n%s", rows(tagged), tagged)
	}
	if st, _, _ := b.get("/ui/?fleet=lab&page=0"); st != http.StatusBadRequest {
		t.Errorf("page 0: %d, want 400", st)
	}

	for i := range 101 {
		if _, err := e.st.AppendAudit(ctx, store.AuditEntry{Actor: "user:ci", Action: "release.create", Object: fmt.Sprintf("release/%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	_, _, audit := b.get("/ui/audit?actor=user:ci")
	m := regexp.MustCompile(`href="(/ui/audit\?before=[^"]+)">Older entries`).FindStringSubmatch(audit)
	if m == nil {
		t.Fatalf("no link to older entries:\n%s", audit)
	}
	_, _, older := b.get(strings.ReplaceAll(m[1], "&amp;", "&"))
	if n := strings.Count(older, "<tr><td data-label=\"Time\""); n != 1 || !strings.Contains(older, `value="user:ci"`) {
		t.Errorf("older entries of user:ci (%s): %d rows, want 1", m[1], n)
	}
}

// TestUIContrast: in the dashboard's CSS, light and dark, text and badges
// are at least 4.5:1 against the backgrounds they sit on (WCAG AA for
// normal text), and the focus ring at least 3:1 against the page.
func TestUIContrast(t *testing.T) {
	e := newEnv(t, sqlite, envOptions{})
	st, _, css := newBrowser(t, e).get("/ui/static/berth.css")
	if st != 200 {
		t.Fatalf("berth.css: %d", st)
	}
	light, dark, ok := strings.Cut(css, "@media (prefers-color-scheme: dark)")
	if !ok {
		t.Fatal("berth.css has no dark scheme")
	}
	varRE := regexp.MustCompile(`--([a-z-]+):\s*(#[0-9a-fA-F]{3,6})\b`)
	vars := func(s string, base map[string]string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for _, sm := range varRE.FindAllStringSubmatch(s[:strings.Index(s, "}")], -1) {
			m[sm[1]] = sm[2]
		}
		return m
	}
	lightVars := vars(light[strings.Index(light, ":root"):], nil)
	schemes := map[string]map[string]string{"light": lightVars, "dark": vars(dark, lightVars)}
	text := [][2]string{ // foreground, background
		{"fg", "bg"}, {"fg", "card"}, {"fg", "mute-bg"}, {"fg", "ok-bg"}, {"fg", "bad-bg"},
		{"muted", "bg"}, {"muted", "card"}, {"muted", "mute-bg"},
		{"accent", "bg"}, {"accent", "card"}, {"accent", "mute-bg"}, {"accent-fg", "accent"},
		{"ok", "ok-bg"}, {"ok", "card"}, {"bad", "bad-bg"}, {"bad", "card"}, {"busy", "busy-bg"}, {"busy", "card"},
	}
	for name, v := range schemes {
		for _, p := range text {
			if r := contrast(t, v[p[0]], v[p[1]]); r < 4.5 {
				t.Errorf("%s: --%s on --%s: %.2f:1, want 4.5:1", name, p[0], p[1], r)
			}
		}
		for _, bg := range []string{"bg", "card"} {
			if r := contrast(t, v["focus"], v[bg]); r < 3 {
				t.Errorf("%s: the focus ring on --%s: %.2f:1, want 3:1", name, bg, r)
			}
		}
	}
	// The log pane is dark in both schemes.
	logsBg := regexp.MustCompile(`\.logs \{[^}]*background: (#[0-9a-f]{6})`).FindStringSubmatch(css)
	if logsBg == nil {
		t.Fatal("no background for .logs")
	}
	for _, sm := range regexp.MustCompile(`\.logs [^{]*\{[^}]*[^-]color: (#[0-9a-f]{6})`).FindAllStringSubmatch(css, -1) {
		if r := contrast(t, sm[1], logsBg[1]); r < 4.5 {
			t.Errorf("logs: %s on %s: %.2f:1, want 4.5:1", sm[1], logsBg[1], r)
		}
	}
}

// contrast is the WCAG 2 contrast ratio of two #rgb or #rrggbb colours.
func contrast(t *testing.T, a, b string) float64 {
	t.Helper()
	lum := func(c string) float64 {
		c = strings.TrimPrefix(c, "#")
		if len(c) == 3 {
			c = string([]byte{c[0], c[0], c[1], c[1], c[2], c[2]})
		}
		var rgb [3]float64
		for i := range rgb {
			var n int
			if _, err := fmt.Sscanf(c[2*i:2*i+2], "%02x", &n); err != nil {
				t.Fatalf("colour %q: %v", c, err)
			}
			v := float64(n) / 255
			if v <= 0.03928 {
				rgb[i] = v / 12.92
			} else {
				rgb[i] = math.Pow((v+0.055)/1.055, 2.4)
			}
		}
		return 0.2126*rgb[0] + 0.7152*rgb[1] + 0.0722*rgb[2]
	}
	if a == "" || b == "" {
		t.Fatalf("a colour is not set: %q, %q", a, b)
	}
	la, lb := lum(a), lum(b)
	return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)
}

// TestUIReleases: the releases page gives each release's services and
// images, the images' size, what a device on the release before must
// fetch (a few KiB for one changed file), and the devices it runs on.
func TestUIReleases(t *testing.T) {
	e := newEnv(t, sqlite, envOptions{})
	f := e.fleet("lab")
	cache := openContentStore(t)
	base := layerTar(t, 1, 200, 0, -1, false)
	v1 := newImage(t, "robot:v1", base, layerTar(t, 2, 40, 1<<20, -1, false))
	v2 := newImage(t, "robot:v2", base, layerTar(t, 2, 40, 1<<20, 7, false))
	var rels []*serverapi.Release
	for _, img := range []struct {
		version string
		img     testImage
	}{{"v1", v1}, {"v2", v2}} {
		if _, err := upload(t, cache, e.admin, img.img); err != nil {
			t.Fatal(err)
		}
		rel, _, err := e.admin.CreateRelease(ctx, "lab", serverapi.CreateReleaseRequest{App: "robot", Version: img.version,
			Spec: spec("robot:" + img.version), Images: map[string]string{"robot:" + img.version: img.img.ID}})
		if err != nil {
			t.Fatal(err)
		}
		rels = append(rels, rel)
	}
	_, cl, _ := e.device(f.ProvisioningKey, "robot-a")
	if _, err := cl.ReportState(ctx, release.CurrentState{Apps: map[string]release.AppState{"robot": {Version: "v1", Phase: release.PhaseIdle,
		FleetRelease: rels[0].ID, Services: map[string]release.ServiceState{"web": {State: "running"}}}}, Reported: time.Now()}); err != nil {
		t.Fatal(err)
	}
	b := newBrowser(t, e)
	b.login(e.adminToken)
	_, _, page := b.get("/ui/fleets/lab/releases")
	card := func(id string) string {
		_, after, _ := strings.Cut(page, `data-release="`+id+`"`)
		before, _, _ := strings.Cut(after, "</article>")
		return before
	}
	c1, c2 := card(rels[0].ID), card(rels[1].ID)
	for name, c := range map[string]string{"v1": c1, "v2": c2} {
		if !regexp.MustCompile(`Images 1\.[0-9] MiB`).MatchString(c) || !strings.Contains(c, "<code>robot:"+name+"</code>") || !strings.Contains(c, release.ShortID(map[string]string{"v1": v1.ID, "v2": v2.ID}[name])) {
			t.Errorf("release %s: want its service's image, image ID and size:\n%s", name, c)
		}
	}
	if !strings.Contains(c1, "Runs on <b>1</b> device: robot-a") || !strings.Contains(c2, "Runs on <b>0</b> devices") {
		t.Errorf("where they run:\nv1: %s\nv2: %s", c1, c2)
	}
	m := regexp.MustCompile(`From v1: a device fetches at most <b>([0-9.]+) (B|KiB)</b>`).FindStringSubmatch(c2)
	if m == nil || strings.Contains(c1, "fetches at most") {
		t.Errorf("v2 from v1: want a few KiB to fetch (one file changed):\n%s", c2)
	}
}

// TestUIRolloutFailure: a rollout that paused itself on a failing canary
// says why on its page and in the list, with each stage's progress bar and
// the failed device with its reason; an admin gets resume and abort.
func TestUIRolloutFailure(t *testing.T) {
	fe := newFleetEnv(t, sqlite)
	l := fe.lab([]string{"r1", "r2", "r3"}, []string{"r1", "r2", "r3"})
	l.sims["r1"].setMode(simFailing)
	ro, err := fe.admin.StartRollout(ctx, "lab", serverapi.StartRolloutRequest{Release: l.v2.ID, Canary: "1", Batch: 2, MaxFailures: 1})
	if err != nil {
		t.Fatal(err)
	}
	fe.waitRollout(ro.ID, serverapi.RolloutPaused)
	b := newBrowser(t, fe.env)
	b.login(fe.adminToken)
	_, _, page := b.get("/ui/fleets/lab/rollouts/" + ro.ID)
	for _, want := range []string{
		`data-status="paused"`, "<b>Why paused:</b>", "r1: service nav: unhealthy",
		`<li class="bad" data-failed="r1"><b>r1</b>: `, "unhealthy after 30s",
		`<svg class="bar"`, `id="resume"`, `id="abort"`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("the rollout's page: no %q", want)
		}
	}
	if strings.Count(page, `<svg class="bar"`) != len(fe.rollout(ro.ID).Stages) || strings.Contains(page, `id="pause"`) {
		t.Errorf("the rollout's page: want a bar per stage, no pause button:\n%s", page)
	}
	if _, _, list := b.get("/ui/fleets/lab/rollouts"); !strings.Contains(list, `<div class="reason">`) || !strings.Contains(list, "r1: service nav: unhealthy") {
		t.Errorf("the rollouts page does not say why it paused:\n%s", list)
	}
}

// TestUILiveQuiet: a live page whose state does not change sends its
// section once, not every round (relative times have no seconds, which
// would change the section every 2 s: 340 KB a time for 500 devices).
func TestUILiveQuiet(t *testing.T) {
	e := newEnv(t, sqlite, envOptions{})
	f := e.fleet("lab")
	dev, cl, _ := e.device(f.ProvisioningKey, "robot-a")
	if _, err := cl.ReportState(ctx, release.CurrentState{Apps: map[string]release.AppState{"app": {Version: "v1", Phase: release.PhaseIdle,
		Updated: time.Now(), Services: map[string]release.ServiceState{"web": {State: "running", Health: "healthy"}}}}, Reported: time.Now()}); err != nil {
		t.Fatal(err)
	}
	b := newBrowser(t, e)
	b.login(e.adminToken)
	for _, path := range []string{"/ui/?fleet=lab", "/ui/devices/" + dev.ID} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.URL+path, nil)
		req.Header.Set("Accept", "text/event-stream")
		resp, err := b.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		timer := time.AfterFunc(5*time.Second, func() { resp.Body.Close() }) // two rounds and more
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		n := 0
		for sc.Scan() {
			if sc.Text() == "event: live" {
				n++
			}
		}
		timer.Stop()
		resp.Body.Close()
		if n != 1 {
			t.Errorf("%s: %d live events in 5 s of nothing changing, want 1", path, n)
		}
	}
}

// sessionCookie is the dashboard's session cookie a response sets, or nil.
func sessionCookie(resp *http.Response) *http.Cookie {
	for _, c := range resp.Cookies() {
		if c.Name == "berth_session" {
			return c
		}
	}
	return nil
}
