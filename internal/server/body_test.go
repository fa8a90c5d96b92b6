package server_test

import (
	"bytes"
	"net/http"
	"strings"
	"testing"

	"github.com/berth-robotics/berth/internal/serverapi"
)

// TestBodies: oversized and malformed bodies are refused with a 4xx and a
// JSON reason, and nothing is stored.
func TestBodies(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		e := newEnv(t, b, envOptions{})
		f := e.fleet("lab")
		d, _, devTok := e.device(f.ProvisioningKey, "robot-1")
		big := `{"app": "app", "version": "v1", "spec": {"services": {"web": {"image": "web", "command": ["` + strings.Repeat("x", 2<<20) + `"]}}}}`
		audits := e.auditCount()
		before, _ := e.admin.Device(ctx, d.ID)

		for _, tc := range []struct {
			name, method, path, token, body string
			want                            int
		}{
			{"ReleaseTooBig", "POST", "/v1/fleets/lab/releases", e.adminToken, big, 413},
			{"ReleaseNotJSON", "POST", "/v1/fleets/lab/releases", e.adminToken, `{"app": "app",`, 400},
			{"ReleaseEmpty", "POST", "/v1/fleets/lab/releases", e.adminToken, ``, 400},
			{"ReleaseUnknownField", "POST", "/v1/fleets/lab/releases", e.adminToken, `{"app": "app", "version": "v1", "spec": {"services": {"web": {"image": "w"}}}, "signed": true}`, 400},
			{"ReleaseTrailing", "POST", "/v1/fleets/lab/releases", e.adminToken, `{"app": "app", "version": "v1", "spec": {"services": {"web": {"image": "w"}}}} {}`, 400},
			{"ReleaseWrongType", "POST", "/v1/fleets/lab/releases", e.adminToken, `{"app": 7}`, 400},
			{"ReleaseArray", "POST", "/v1/fleets/lab/releases", e.adminToken, `[]`, 400},
			{"FleetTooBig", "POST", "/v1/fleets", e.adminToken, `{"name": "` + strings.Repeat("a", 2<<20) + `"}`, 413},
			{"FleetBadName", "POST", "/v1/fleets", e.adminToken, `{"name": "Lab Two"}`, 400},
			{"EnvTooBig", "PUT", "/v1/fleets/lab/env", e.adminToken, `{"vars": {"A": "` + strings.Repeat("a", 2<<20) + `"}}`, 413},
			{"EnvBadName", "PUT", "/v1/fleets/lab/env", e.adminToken, `{"vars": {"A=B": "1"}}`, 400},
			{"EnvNotStrings", "PUT", "/v1/fleets/lab/env", e.adminToken, `{"vars": {"A": 1}}`, 400},
			{"DeviceBadTags", "PATCH", "/v1/devices/" + d.ID, e.adminToken, `{"tags": ["ok", "not ok"], "notes": "x"}`, 400},
			{"StateTooBig", "PUT", "/v1/device/state", devTok, `{"apps": {"app": {"error": "` + strings.Repeat("e", 2<<20) + `"}}}`, 413},
			{"StateNotJSON", "PUT", "/v1/device/state", devTok, `{"apps": `, 400},
			{"StateBadApp", "PUT", "/v1/device/state", devTok, `{"apps": {"../etc": {}}}`, 400},
			{"RegisterNotJSON", "POST", "/v1/register", "", `provisioning_key=` + f.ProvisioningKey, 400},
			{"RegisterTooBig", "POST", "/v1/register", "", `{"provisioning_key": "` + f.ProvisioningKey + `", "name": "r2", "arch": "` + strings.Repeat("a", 2<<20) + `"}`, 413},
			{"RegisterLongArch", "POST", "/v1/register", "", `{"provisioning_key": "` + f.ProvisioningKey + `", "name": "r2", "arch": "` + strings.Repeat("a", 100) + `"}`, 400},
		} {
			t.Run(tc.name, func(t *testing.T) {
				got, _, resp := e.do(tc.method, tc.path, tc.token, bytes.NewBufferString(tc.body))
				if got != tc.want {
					t.Errorf("%d, want %d: %.200s", got, tc.want, resp)
				}
				errorOnly(t, tc.name, resp)
			})
		}

		if rs, _ := e.admin.Releases(ctx, "lab", "", 0); len(rs) != 0 {
			t.Errorf("%d releases stored", len(rs))
		}
		if fs, _ := e.admin.Fleets(ctx); len(fs) != 1 {
			t.Errorf("%d fleets", len(fs))
		}
		if l, _ := e.admin.Env(ctx, serverapi.EnvScope{Fleet: "lab"}); len(l.Vars) != 0 {
			t.Errorf("fleet env: %v", l.Vars)
		}
		after, _ := e.admin.Device(ctx, d.ID)
		if after.StateVersion != before.StateVersion || len(after.Tags) != 0 || after.Notes != "" || after.TargetVersion != before.TargetVersion {
			t.Errorf("the device changed: %+v, was %+v", after, before)
		}
		if ds, _ := e.admin.Devices(ctx, "lab", ""); len(ds) != 1 {
			t.Errorf("%d devices", len(ds))
		}
		if n := e.auditCount(); n != audits {
			t.Errorf("%d audit entries, were %d", n, audits)
		}
		// Unknown paths and methods answer JSON too.
		if code, _, body := e.do("GET", "/v1/nothing", e.adminToken, nil); code != http.StatusNotFound {
			t.Errorf("an unknown path: %d %s", code, body)
		} else {
			errorOnly(t, "unknown path", body)
		}
		if code, hdr, body := e.do("DELETE", "/v1/fleets", e.adminToken, nil); code != http.StatusMethodNotAllowed || hdr.Get("Allow") != "GET, POST" {
			t.Errorf("DELETE /v1/fleets: %d, Allow %q: %s", code, hdr.Get("Allow"), body)
		}
	})
}
