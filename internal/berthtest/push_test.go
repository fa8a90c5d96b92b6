package berthtest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/berth-robotics/berth/internal/imagetar/ocitest"
)

// TestPushArchive: an image saved to a file and removed from the engine is
// pushed to the device: its pieces go into the device's content store, the
// engine loads it, and a second push sends nothing.
func TestPushArchive(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	robot := env.NewDevice(t)
	tag := "berthtest/pushed:" + randomID()
	// A fresh image: the test image with one more layer, saved and removed.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM "+env.Images["a"]+"\nCOPY payload /payload\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	payload := strings.Repeat("berth pushes only what changed\n", 40000)
	if err := os.WriteFile(filepath.Join(dir, "payload"), []byte(payload), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := docker("build", "-q", "-t", tag, dir); err != nil {
		t.Fatal(err, out)
	}
	archive := filepath.Join(dir, "image.tar")
	if out, err := docker("save", "-o", archive, tag); err != nil {
		t.Fatal(err, out)
	}
	id, _ := docker("image", "inspect", "-f", "{{.Id}}", tag)
	if out, err := docker("rmi", tag); err != nil {
		t.Fatal(err, out)
	}
	t.Cleanup(func() { docker("rmi", "-f", strings.TrimSpace(id)) })

	cache := t.TempDir()
	push := func() map[string]any {
		t.Helper()
		out, err := robot.BerthEnv(t, []string{"BERTH_CACHE=" + cache}, "push", archive, "--json")
		if err != nil {
			t.Fatal(err, out)
		}
		var res []map[string]any
		if err := json.Unmarshal([]byte(out[strings.Index(out, "["):]), &res); err != nil {
			t.Fatal(err, out)
		}
		return res[0]["summary"].(map[string]any)
	}
	first := push()
	if first["layers_needed"].(float64) != 1 {
		t.Errorf("first push: want only the new layer loaded, got %v", first)
	}
	if sent := first["bytes_sent"].(float64); sent > 200<<10 {
		t.Errorf("first push sent %v bytes for a highly compressible 1.2 MB layer", sent)
	}
	if got, _ := docker("image", "inspect", "-f", "{{.Id}}", tag); strings.TrimSpace(got) != strings.TrimSpace(id) {
		t.Fatalf("after push the engine has %q, want %q", got, id)
	}
	second := push()
	if second["pieces_sent"].(float64) != 0 || second["layers_needed"].(float64) != 0 {
		t.Errorf("second push sent again: %v", second)
	}
}

// TestPushOCILayout: an OCI layout directory with images for two platforms
// (as buildx --output type=oci writes it): the device gets the image for its
// own architecture, under the layout's name; a layout without one is
// refused with the platforms it has.
func TestPushOCILayout(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	robot := env.NewDevice(t)
	name := "berthtest/oci:" + randomID()
	arch := runtime.GOARCH
	other := "arm64"
	if arch == "arm64" {
		other = "amd64"
	}
	dir := filepath.Join(t.TempDir(), "layout")
	if err := ocitest.WriteLayout(dir, name, other, arch); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { docker("rmi", "-f", name) })
	out, err := robot.BerthEnv(t, []string{"BERTH_CACHE=" + t.TempDir()}, "push", dir)
	if err != nil {
		t.Fatal(err, out)
	}
	got, err := docker("image", "inspect", "-f", "{{.Architecture}}", name)
	if err != nil || strings.TrimSpace(got) != arch {
		t.Fatalf("pushed %s: architecture %q (%v); want %s\n%s", name, got, err, arch, out)
	}

	only := filepath.Join(t.TempDir(), "layout")
	if err := ocitest.WriteLayout(only, name+"x", other); err != nil {
		t.Fatal(err)
	}
	out, err = robot.BerthEnv(t, []string{"BERTH_CACHE=" + t.TempDir()}, "push", only)
	if err == nil {
		t.Fatalf("a layout with no %s image was pushed:\n%s", arch, out)
	}
	Contains(t, out, "none for "+arch, other)
}
