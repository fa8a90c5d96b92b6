package server_test

import (
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/server"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/store"
)

// TestBootstrap: a store without admins gets an admin token written 0600
// that works; a second start changes nothing; with every admin token gone,
// a start makes a new one.
func TestBootstrap(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		dsn, dir := b.db(t)
		st, err := store.Open(ctx, dsn, dir)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		path, err := server.Bootstrap(ctx, st, dir, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if want, _ := filepath.Abs(filepath.Join(dir, "admin.token")); path != want {
			t.Errorf("path %s, want %s", path, want)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("admin.token has mode %v, want 0600", fi.Mode().Perm())
		}
		token := strings.TrimSpace(readFile(t, dir, "admin.token"))

		e := newEnv(t, b, envOptions{dsn: dsn, dir: dir, adminToken: token})
		who, err := e.admin.Whoami(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if who.User.Name != "admin" || who.User.Role != "admin" {
			t.Errorf("whoami: %+v", who.User)
		}

		again, err := server.Bootstrap(ctx, st, dir, time.Now())
		if err != nil || again != "" {
			t.Fatalf("second bootstrap: %q, %v; want nothing done", again, err)
		}
		if got := strings.TrimSpace(readFile(t, dir, "admin.token")); got != token {
			t.Error("the second start rewrote admin.token")
		}

		// Every admin token gone: the next start writes a new one, for the same admin.
		if err := e.admin.DeleteToken(ctx, "admin", who.Token.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := e.admin.Whoami(ctx); status(err) != http.StatusUnauthorized {
			t.Fatalf("a deleted token: %v, want 401", err)
		}
		if path, err := server.Bootstrap(ctx, st, dir, time.Now()); err != nil || path == "" {
			t.Fatalf("bootstrap without admin tokens: %q, %v", path, err)
		}
		fresh := strings.TrimSpace(readFile(t, dir, "admin.token"))
		e.secret(fresh)
		who2, err := e.client(fresh).Whoami(ctx)
		if err != nil || who2.User.ID != who.User.ID {
			t.Fatalf("the new bootstrap token: %+v, %v; want the same admin", who2, err)
		}
		us, _ := st.ListUsers(ctx)
		if len(us) != 1 {
			t.Errorf("%d users, want the one admin", len(us))
		}
	})
}

// TestRoles: what each role may do, and may not.
func TestRoles(t *testing.T) {
	e := newEnv(t, sqlite, envOptions{})
	viewer := e.client(e.user("vera", serverapi.RoleViewer))
	deployer := e.client(e.user("dan", serverapi.RoleDeployer))
	e.fleet("lab")

	for _, tc := range []struct {
		name string
		err  error
		want int
	}{
		{"ViewerReadsFleets", second(viewer.Fleets(ctx)), 0},
		{"ViewerCreatesNoFleet", second(viewer.CreateFleet(ctx, "x")), 403},
		{"ViewerCreatesNoRelease", third(viewer.CreateRelease(ctx, "lab", serverapi.CreateReleaseRequest{App: "a", Version: "1", Spec: spec("a:1")})), 403},
		{"DeployerCreatesRelease", third(deployer.CreateRelease(ctx, "lab", serverapi.CreateReleaseRequest{App: "a", Version: "1", Spec: spec("a:1")})), 0},
		{"DeployerSetsEnv", second(deployer.SetEnv(ctx, serverapi.EnvScope{Fleet: "lab"}, map[string]string{"A": "1"})), 0},
		{"DeployerCreatesNoFleet", second(deployer.CreateFleet(ctx, "x")), 403},
		{"DeployerRotatesNoKey", second(deployer.RotateProvisioningKey(ctx, "lab")), 403},
		{"DeployerCreatesNoUser", second(deployer.CreateUser(ctx, "eve", "admin")), 403},
		{"DeployerReadsNoAudit", second(deployer.Audit(ctx, serverapi.AuditQuery{})), 403},
		{"AdminCreatesUser", second(e.admin.CreateUser(ctx, "eve", "viewer")), 0},
		{"AdminReadsAudit", second(e.admin.Audit(ctx, serverapi.AuditQuery{})), 0},
		{"BadRole", second(e.admin.CreateUser(ctx, "mallory", "root")), 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := status(tc.err); got != tc.want {
				t.Errorf("status %d (%v), want %d", got, tc.err, tc.want)
			}
		})
	}

	// An expired token is refused with a clear word.
	tok, err := e.admin.CreateToken(ctx, "dan", serverapi.CreateTokenRequest{Name: "short", ExpiresIn: 1})
	if err != nil {
		t.Fatal(err)
	}
	e.secret(tok.Secret)
	time.Sleep(time.Millisecond)
	_, err = e.client(tok.Secret).Fleets(ctx)
	if status(err) != 401 || !strings.Contains(err.Error(), "expired") {
		t.Errorf("an expired token: %v, want 401 saying it expired", err)
	}
}

func second[T any](_ T, err error) error        { return err }
func third[T, U any](_ T, _ U, err error) error { return err }

// TestAuthMatrix sends every endpoint's request with no token, a bad
// token, two devices' tokens and each role's: 401 without a valid token,
// 403 for the wrong kind or too little role, and then the body says only
// why, nothing was changed, and a device sees only its own.
func TestAuthMatrix(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		e := newEnv(t, b, envOptions{})
		tokens := map[string]string{
			"none":     "",
			"bad":      "bt_" + strings.Repeat("a", 32),
			"badDev":   "bd_" + strings.Repeat("a", 32),
			"viewer":   e.user("vera", serverapi.RoleViewer),
			"deployer": e.user("dan", serverapi.RoleDeployer),
			"admin":    e.adminToken,
		}
		f := e.fleet("lab")
		devA, _, tokA := e.device(f.ProvisioningKey, "robot-a")
		devB, clB, tokB := e.device(f.ProvisioningKey, "robot-b")
		tokens["devA"], tokens["devB"] = tokA, tokB
		rel := e.release("lab", "app", "v1")
		if _, err := e.admin.Assign(ctx, "lab", rel.ID, serverapi.AssignRequest{Devices: []string{"robot-a"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.admin.SetEnv(ctx, serverapi.EnvScope{Device: devA.ID}, map[string]string{"SECRET_A": "hunter2"}); err != nil {
			t.Fatal(err)
		}
		users, _ := e.admin.Users(ctx)
		var viewerID string
		for _, u := range users {
			if u.Name == "vera" {
				viewerID = u.ID
			}
		}
		vts, _ := e.admin.Tokens(ctx, viewerID)

		values := map[string]string{
			"{user}": viewerID, "{token}": vts[0].ID, "{fleet}": "lab", "{service}": "web",
			"{device}": devA.ID, "{app}": "app", "{release}": rel.ID,
			"{path...}": "",                 // the registry's /v2/: the version check
			"{key}":     "0011223344556677", // none such: the admin's DELETE is a 404, checked by status below
		}
		// A paused rollout with no devices: readable, and the engine leaves it be.
		ro, err := e.st.CreateRollout(ctx, store.Rollout{FleetID: f.ID, ReleaseID: rel.ID, Status: store.RolloutPaused, CreatedBy: "user:admin"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		values["{rollout}"] = ro.ID
		// An image uploaded, pinned by a release of another app in A's target.
		img := newImage(t, "img:1", layerTar(t, 1, 5, 0, -1, false))
		if _, err := upload(t, openContentStore(t), e.admin, img); err != nil {
			t.Fatal(err)
		}
		relImg, _, err := e.admin.CreateRelease(ctx, "lab", serverapi.CreateReleaseRequest{App: "img", Version: "v1", Spec: spec("img:1"), Images: map[string]string{"img:1": img.ID}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.admin.Assign(ctx, "lab", relImg.ID, serverapi.AssignRequest{Devices: []string{"robot-a"}}); err != nil {
			t.Fatal(err)
		}
		values["{image}"], values["{diffid}"] = img.ID, img.DiffIDs[0]
		// What must never appear in a refusal.
		leaks := []string{devA.ID, devB.ID, f.ID, rel.ID, f.ProvisioningKey, "robot-a", "hunter2", viewerID, vts[0].ID, img.ID, img.DiffIDs[0]}
		for _, tok := range tokens {
			if tok != "" {
				leaks = append(leaks, tok)
			}
		}

		before := e.auditCount()
		rank := map[string]int{"viewer": 1, "deployer": 2, "admin": 3}
		routes := e.srv.Routes()
		if len(routes) < 30 {
			t.Fatalf("only %d routes", len(routes))
		}
		for _, r := range routes {
			method, tmpl, _ := strings.Cut(r.Pattern, " ")
			path := tmpl
			for k, v := range values {
				path = strings.ReplaceAll(path, k, v)
			}
			if strings.Contains(path, "{") {
				t.Fatalf("%s: no value for a parameter", r.Pattern)
			}
			if r.Access == "public" {
				continue // registration and health: TestRegister
			}
			for who, tok := range tokens {
				var want int // 0: allowed
				switch {
				case who == "none" || who == "bad" || who == "badDev":
					want = http.StatusUnauthorized
				case r.Access == "device" && rank[who] > 0:
					want = http.StatusForbidden
				case r.Access != "device" && (who == "devA" || who == "devB"):
					want = http.StatusForbidden
				case r.Access != "device" && rank[who] < rank[r.Access]:
					want = http.StatusForbidden
				}
				if want == 0 && method != http.MethodGet {
					continue // allowed changes: the functional tests
				}
				var body *strings.Reader
				if method != http.MethodGet && method != http.MethodDelete {
					body = strings.NewReader(`{}`)
				} else {
					body = strings.NewReader("")
				}
				got, hdr, resp := e.do(method, path, tok, body)
				what := r.Pattern + " as " + who
				if want != 0 {
					if got != want {
						t.Errorf("%s: %d, want %d: %s", what, got, want, resp)
						continue
					}
					var msg string
					if strings.HasPrefix(tmpl, "/v2/") {
						// The registry answers in the distribution spec's
						// form, which Docker reads: TestRegistryAuth.
						msg = registryErrorOnly(t, what, resp)
					} else {
						msg = errorOnly(t, what, resp)
					}
					for _, l := range leaks {
						if strings.Contains(msg, l) {
							t.Errorf("%s: the refusal names %q: %s", what, l, msg)
						}
					}
					if want == 401 && hdr.Get("WWW-Authenticate") == "" {
						t.Errorf("%s: 401 without WWW-Authenticate", what)
					}
					continue
				}
				// Allowed reads succeed, but a device reads only its own.
				wantRead := http.StatusOK
				if who == "devB" && (strings.HasPrefix(tmpl, "/v1/device/releases/") || strings.HasPrefix(tmpl, "/v1/device/content/")) {
					wantRead = http.StatusNotFound
				}
				if got != wantRead {
					t.Errorf("%s: %d, want %d: %s", what, got, wantRead, resp)
				}
				if who == "devB" && (strings.Contains(string(resp), "web:v1") || strings.Contains(string(resp), devA.ID)) {
					t.Errorf("%s: device B sees device A's release: %s", what, resp)
				}
			}
		}
		if after := e.auditCount(); after != before {
			t.Errorf("refused requests changed something: %d audit entries, were %d", after, before)
		}
		d, err := e.admin.Device(ctx, devA.ID)
		if err != nil || d.Name != "robot-a" || len(d.Target) != 2 {
			t.Errorf("device A after the refusals: %+v, %v", d, err)
		}
		// Device B's target is its own: no release of A's.
		tb, _, err := clB.Target(ctx, 0, 0)
		if err != nil || len(tb.Apps) != 0 {
			t.Errorf("device B's target: %+v, %v; want no apps", tb, err)
		}
	})
}

// TestAPIDocs: docs/api.md documents every endpoint.
func TestAPIDocs(t *testing.T) {
	documented(t, server.New(nil, server.Options{}).Routes())
}

// documented checks that docs/api.md has a heading for each route, and
// that its section names the route's role.
func documented(t *testing.T, routes []server.Route) {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "api.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		method, path, _ := strings.Cut(r.Pattern, " ")
		re := regexp.MustCompile(`(?m)^#+ .*` + regexp.QuoteMeta(method+" "+path) + "`")
		loc := re.FindIndex(doc)
		if loc == nil {
			t.Errorf("docs/api.md has no heading for %s %s", method, path)
			continue
		}
		section := doc[loc[1]:]
		if next := regexp.MustCompile(`(?m)^#`).FindIndex(section); next != nil {
			section = section[:next[0]]
		}
		if !strings.Contains(string(section), "Role: "+r.Access) {
			t.Errorf("docs/api.md: %s %s does not say \"Role: %s\"", method, path, r.Access)
		}
	}
}
