package server_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
)

// TestReleases: creating a release is idempotent (same content, same ID,
// nothing changed the second time), its ID is release.Seal's, releases are
// a fleet's own, and assignments skip pinned devices.
func TestReleases(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		e := newEnv(t, b, envOptions{})
		e.fleet("lab")
		e.fleet("field")
		deployer := e.client(e.user("dan", serverapi.RoleDeployer))
		req := serverapi.CreateReleaseRequest{App: "app", Version: "v1", Spec: spec("web:v1", "db:1")}
		r1, created, err := deployer.CreateRelease(ctx, "lab", req)
		if err != nil || !created {
			t.Fatalf("create: %v, created %v", err, created)
		}
		sealed := release.Release{App: "app", Version: "v1", Spec: spec("web:v1", "db:1")}
		sealed.Seal()
		if r1.ID != sealed.ID || r1.CreatedBy != "user:dan" || r1.Spec == nil {
			t.Errorf("release: %+v, want ID %s", r1, sealed.ID)
		}
		audits := e.auditCount()
		r2, created, err := deployer.CreateRelease(ctx, "lab", req)
		if err != nil || created || r2.ID != r1.ID || !r2.Created.Equal(r1.Created) {
			t.Errorf("again: %+v, created %v, %v; want the same release, unchanged", r2, created, err)
		}
		if e.auditCount() != audits {
			t.Error("creating the same release again was audited as a change")
		}
		rs, _ := e.admin.Releases(ctx, "lab", "", 0)
		if len(rs) != 1 || rs[0].Spec != nil {
			t.Errorf("list: %+v; want one, without its spec", rs)
		}
		// Another fleet has its own copy; the first fleet's is not the second's.
		if _, err := e.admin.Release(ctx, "field", r1.ID); status(err) != http.StatusNotFound {
			t.Errorf("another fleet's release: %v, want 404", err)
		}
		if r3, created, err := deployer.CreateRelease(ctx, "field", req); err != nil || !created || r3.ID != r1.ID {
			t.Errorf("in another fleet: %+v, %v, %v", r3, created, err)
		}
		v2, _, err := deployer.CreateRelease(ctx, "lab", serverapi.CreateReleaseRequest{App: "app", Version: "v2", Spec: spec("web:v2", "db:1")})
		if err != nil || v2.ID == r1.ID {
			t.Fatalf("v2: %+v, %v", v2, err)
		}

		// Images pin references to IDs (content elsewhere: TestContent
		// has images uploaded to the server).
		id := "sha256:" + strings.Repeat("ab", 32)
		pinnedRel, _, err := deployer.CreateRelease(ctx, "lab", serverapi.CreateReleaseRequest{App: "app", Version: "v3", Spec: spec("web:v3", "db:1"), Images: map[string]string{"web:v3": id}, Content: serverapi.ContentExternal})
		if err != nil || pinnedRel.Spec.Services["web"].ImageID != id || pinnedRel.Spec.Services["db"].ImageID != "" {
			t.Errorf("with images: %+v, %v", pinnedRel, err)
		}
		for name, bad := range map[string]serverapi.CreateReleaseRequest{
			"NoServices":   {App: "app", Version: "v9"},
			"BadApp":       {App: "App!", Version: "v9", Spec: spec("x:1")},
			"NoVersion":    {App: "app", Spec: spec("x:1")},
			"BadImageID":   {App: "app", Version: "v9", Spec: spec("x:1"), Images: map[string]string{"x:1": "latest"}},
			"UnusedImage":  {App: "app", Version: "v9", Spec: spec("x:1"), Images: map[string]string{"y:1": id}},
			"MissingDepOn": {App: "app", Version: "v9", Spec: release.Spec{Services: map[string]release.Service{"a": {Image: "a", DependsOn: map[string]release.Dependency{"b": {Condition: "service_started", Required: true}}}}}},
		} {
			if _, _, err := deployer.CreateRelease(ctx, "lab", bad); status(err) != http.StatusBadRequest {
				t.Errorf("%s: %v, want 400", name, err)
			}
		}
		if _, _, err := deployer.CreateRelease(ctx, "nowhere", req); status(err) != http.StatusNotFound {
			t.Errorf("an unknown fleet: %v, want 404", err)
		}

		// Assign: all, then one device pinned stays where it is.
		f, _ := e.admin.Fleet(ctx, "lab")
		key, _ := e.admin.RotateProvisioningKey(ctx, "lab")
		e.secret(key.ProvisioningKey)
		d1, _, _ := e.device(key.ProvisioningKey, "r1")
		d2, _, _ := e.device(key.ProvisioningKey, "r2")
		a, err := deployer.Assign(ctx, "lab", r1.ID, serverapi.AssignRequest{All: true})
		if err != nil || len(a.Changed) != 2 || a.Unchanged != 0 || a.App != "app" {
			t.Fatalf("assign all: %+v, %v", a, err)
		}
		if _, err := deployer.Pin(ctx, d2.ID, serverapi.PinRequest{Release: r1.ID, App: "app"}); err != nil {
			t.Fatal(err)
		}
		a, err = deployer.Assign(ctx, "lab", v2.ID, serverapi.AssignRequest{Devices: []string{"r1", d2.ID}})
		if err != nil || len(a.Changed) != 1 || a.Changed[0] != d1.ID || a.Unchanged != 1 {
			t.Errorf("assign past a pin: %+v, %v", a, err)
		}
		dv, _ := e.admin.Device(ctx, d2.ID)
		if tg := dv.Target["app"]; tg.Release != r1.ID || !tg.Pinned {
			t.Errorf("the pinned device: %+v", dv.Target)
		}
		if _, err := deployer.Unpin(ctx, d2.ID, "app"); err != nil {
			t.Fatal(err)
		}
		if a, err := deployer.Assign(ctx, "lab", v2.ID, serverapi.AssignRequest{Devices: []string{"r2"}}); err != nil || len(a.Changed) != 1 {
			t.Errorf("assign after unpinning: %+v, %v", a, err)
		}
		// A device of another fleet, or none at all: nothing is assigned.
		if _, err := deployer.Assign(ctx, "lab", r1.ID, serverapi.AssignRequest{Devices: []string{"r1", "ghost"}}); status(err) != http.StatusNotFound {
			t.Errorf("an unknown device: %v, want 404", err)
		}
		if dv, _ := e.admin.Device(ctx, d1.ID); dv.Target["app"].Release != v2.ID {
			t.Errorf("a refused assignment moved r1: %+v", dv.Target)
		}
		if _, err := deployer.Assign(ctx, "lab", r1.ID, serverapi.AssignRequest{}); status(err) != http.StatusBadRequest {
			t.Errorf("neither devices nor all: %v, want 400", err)
		}
		// --all made it the fleet's release: new devices start with it.
		if f2, _ := e.admin.Fleet(ctx, "lab"); len(f2.Apps) != 1 || f2.Apps[0].Release != r1.ID {
			t.Errorf("fleet %s apps: %+v", f.Name, f2.Apps)
		}
		_, cl3, _ := e.device(key.ProvisioningKey, "r3")
		if tg, _, err := cl3.Target(ctx, 0, 0); err != nil || tg.Apps["app"] == nil || tg.Apps["app"].ID != r1.ID {
			t.Errorf("a new device's target: %+v, %v", tg, err)
		}
	})
}

// TestAudit: changes are audited with who, what and on what, filtered and
// paged, and no secret is in them.
func TestAudit(t *testing.T) {
	e := newEnv(t, sqlite, envOptions{})
	for _, n := range []string{"a", "b", "c"} {
		e.fleet(n)
	}
	e.user("vera", serverapi.RoleViewer)
	es, err := e.admin.Audit(ctx, serverapi.AuditQuery{Action: "fleet.create", Limit: 2})
	if err != nil || len(es) != 2 || es[0].Object != "fleet/c" || es[0].Actor != "user:admin" {
		t.Fatalf("first page: %+v, %v", es, err)
	}
	more, err := e.admin.Audit(ctx, serverapi.AuditQuery{Action: "fleet.create", Before: es[1].ID})
	if err != nil || len(more) != 1 || more[0].Object != "fleet/a" {
		t.Errorf("second page: %+v, %v", more, err)
	}
	all, _ := e.admin.Audit(ctx, serverapi.AuditQuery{Limit: 1000})
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, a := range all {
		for _, s := range e.secrets {
			if strings.Contains(string(a.Details), s) {
				t.Errorf("audit entry %d (%s) holds a secret: %s", a.ID, a.Action, a.Details)
			}
		}
	}
	if code, _, body := e.do("GET", "/v1/audit?since=yesterday", e.adminToken, nil); code != 400 {
		t.Errorf("since=yesterday: %d %s", code, body)
	}
}
