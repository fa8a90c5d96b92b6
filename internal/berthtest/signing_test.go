package berthtest

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/release"
)

// TestFleetDeviceRefusesUnsigned: a device that pins a release signing key
// at provisioning (berthd --trusted-key) runs a release signed with it, and
// refuses an unsigned one and one signed by another key, even from a fleet
// that requires no signatures: its state says why, and the running release
// keeps running.
func TestFleetDeviceRefusesUnsigned(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	srv := env.NewServer(t)
	port := FreePort(t)

	key := srv.CreateFleet(t, "lab")
	keys := t.TempDir()
	trusted, other := filepath.Join(keys, "trusted"), filepath.Join(keys, "other")
	out, err := srv.Berth(t, "keys", "generate", "--out", trusted)
	if err != nil {
		t.Fatal(err, out)
	}
	pub := strings.SplitN(out, "\n", 2)[0]
	if out, err := srv.Berth(t, "keys", "generate", "--out", other); err != nil {
		t.Fatal(err, out)
	}

	// create creates (and assigns to all) a release of version v, with
	// these extra flags.
	create := func(v string, flags ...string) string {
		t.Helper()
		compose := filepath.Join(t.TempDir(), "compose.yaml")
		write(t, compose, strings.Replace(web(port, v), "${IMG_A}", env.Images["a"], 1))
		id := createRelease(t, srv, compose, v, flags...)
		if out, err := srv.Berth(t, "release", "assign", id, "--fleet", "lab", "--all"); err != nil {
			t.Fatal(err, out)
		}
		return id
	}

	robot := env.NewFleetDevice(t, srv.URL, key, "--trusted-key", pub)
	v1 := create("1", "--sign-key", filepath.Join(trusted, "berth-release.key"))
	robot.Await(t, "app", 60*time.Second, "the signed release committed", func(a release.AppState) bool {
		return a.FleetRelease == v1 && a.Phase == release.PhaseIdle
	})
	if got, _ := Get("http://127.0.0.1:" + port + "/"); got != "version=1\n" {
		t.Fatalf("v1 answers %q", got)
	}

	for _, tc := range []struct {
		version string
		flags   []string
		why     string
	}{
		{"2", nil, "is not signed"},
		{"3", []string{"--sign-key", filepath.Join(other, "berth-release.key")}, "not trusted"},
	} {
		id := create(tc.version, tc.flags...)
		a := robot.Await(t, "app", 30*time.Second, "release "+tc.version+" refused", func(a release.AppState) bool {
			return strings.Contains(a.Error, release.ShortID(id))
		})
		if !strings.Contains(a.Error, "is not signed by a trusted key") || !strings.Contains(a.Error, tc.why) || !strings.Contains(a.Error, "nothing changed") {
			t.Errorf("v%s: error %q", tc.version, a.Error)
		}
		if a.FleetRelease != v1 || a.Phase != release.PhaseIdle {
			t.Errorf("v%s: state %+v; want v1 still running", tc.version, a)
		}
		if got, _ := Get("http://127.0.0.1:" + port + "/"); got != "version=1\n" {
			t.Fatalf("after v%s: the app answers %q; want v1 untouched", tc.version, got)
		}
	}
	// The server sees the refusal in the device's report.
	awaitDevice(t, srv, robot, "the refusal reported", func(d fleetDevice) bool {
		return strings.Contains(d.Apps["app"].Error, "is not signed by a trusted key")
	})
	// Back to the signed release that runs: the refusal is over.
	if out, err := srv.Berth(t, "release", "assign", v1, "--fleet", "lab", "--all"); err != nil {
		t.Fatal(err, out)
	}
	robot.Await(t, "app", 30*time.Second, "the refusal cleared", func(a release.AppState) bool {
		return a.Error == "" && a.FleetRelease == v1
	})
}
