package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/berth-robotics/berth/internal/atomicfile"
	"github.com/berth-robotics/berth/internal/reconcile"
	"github.com/berth-robotics/berth/internal/release"
)

// appRecord is what the agent persists about one app, in apps/<app>/app.json.
type appRecord struct {
	Current string            `json:"current,omitempty"`
	Kept    []string          `json:"kept,omitempty"`   // release IDs, newest first, current included
	Failed  map[string]string `json:"failed,omitempty"` // release ID → why it was rolled back
	Phase   release.Phase     `json:"phase"`
	Error   string            `json:"error,omitempty"`
	Target  string            `json:"target,omitempty"` // the release last asked for
	Updated time.Time         `json:"updated"`
	// Fleet mode: the fleet release that runs with the generation of its
	// assignment, and a LAN deploy or removal standing in for it.
	FleetRelease string            `json:"fleet_release,omitempty"`
	Generation   int64             `json:"generation,omitempty"`
	Override     *release.Override `json:"override,omitempty"`
	// The device's last word on a fleet release it does not run: rolled
	// back here (FleetFailed) or refused as not signed by a trusted key
	// (FleetRefused), why, and under which assignment generation. It is
	// tried again only under a newer one (release.AppState says the same).
	FleetFailed     string `json:"fleet_failed,omitempty"`
	FleetRefused    string `json:"fleet_refused,omitempty"`
	FleetReason     string `json:"fleet_reason,omitempty"`
	FleetGeneration int64  `json:"fleet_generation,omitempty"`
	// TargetOrigin is where the switch to Target comes from while it is
	// under way, so that a restart books its outcome as the switch would.
	TargetOrigin *origin `json:"target_origin,omitempty"`
	// Interrupted counts, by release, switches a berthd restart cut short
	// (rolled back without blaming the release); a commit clears it.
	Interrupted map[string]int `json:"interrupted,omitempty"`
}

// clearFleetVerdict forgets the device's last word on a fleet release.
func (r *appRecord) clearFleetVerdict() {
	r.FleetFailed, r.FleetRefused, r.FleetReason, r.FleetGeneration = "", "", "", 0
}

// store keeps apps, releases and journals under the state directory.
// Every write is atomic: a temp file, fsync, rename, fsync of the directory.
type store struct{ dir string }

func (s store) appDir(app string) string  { return filepath.Join(s.dir, "apps", app) }
func (s store) lockDir(app string) string { return filepath.Join(s.appDir(app), "lock") }

func (s store) apps() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, "apps"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && release.ValidName(e.Name()) {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out, nil
}

func (s store) record(app string) (appRecord, error) {
	var r appRecord
	err := readJSON(filepath.Join(s.appDir(app), "app.json"), &r)
	if errors.Is(err, os.ErrNotExist) {
		return appRecord{Phase: release.PhaseIdle}, nil
	}
	return r, err
}

func (s store) saveRecord(app string, r appRecord) error {
	r.Updated = time.Now().UTC()
	return writeJSON(filepath.Join(s.appDir(app), "app.json"), r)
}

func releaseFile(id string) string {
	return strings.TrimPrefix(id, "sha256:") + ".json"
}

var releaseIDRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

func (s store) release(app, id string) (*release.Release, error) {
	if id == "" {
		return nil, nil
	}
	if !releaseIDRE.MatchString(id) || !release.ValidName(app) {
		return nil, fmt.Errorf("release %q of app %q: not a release ID kept on this device (berth releases lists them): %w", id, app, release.ErrNotFound)
	}
	var r release.Release
	if err := readJSON(filepath.Join(s.appDir(app), "releases", releaseFile(id)), &r); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("release %s of app %s is not kept on this device: %w", release.ShortID(id), app, release.ErrNotFound)
		}
		return nil, err
	}
	if r.App != app || r.ID != id {
		return nil, fmt.Errorf("release file %s names app %s release %s: %w", releaseFile(id), r.App, r.ID, release.ErrConflict)
	}
	return &r, nil
}

func (s store) saveRelease(r *release.Release) error {
	return writeJSON(filepath.Join(s.appDir(r.App), "releases", releaseFile(r.ID)), r)
}

func (s store) dropRelease(app, id string) error {
	err := os.Remove(filepath.Join(s.appDir(app), "releases", releaseFile(id)))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

func (s store) journal(app string) (*reconcile.Entry, error) {
	var e reconcile.Entry
	err := readJSON(filepath.Join(s.appDir(app), "journal.json"), &e)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &e, nil
}

func (s store) clearJournal(app string) error {
	err := os.Remove(filepath.Join(s.appDir(app), "journal.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s is corrupt: %v", path, err)
	}
	return nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, b)
}
