package cli

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/engine"
	"github.com/berth-robotics/berth/internal/goimage"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/transfer"
)

// requireEngine skips under -short outside CI; in CI a missing engine fails.
func requireEngine(t *testing.T) *engine.Client {
	t.Helper()
	if testing.Short() && os.Getenv("CI") == "" {
		t.Skip("needs the Docker Engine (runs without -short)")
	}
	eng, err := engine.New(context.Background(), "", "berth-cli-test")
	if err != nil {
		t.Fatalf("the Docker Engine is needed: %v", err)
	}
	t.Cleanup(func() { eng.Close() })
	return eng
}

// buildImage builds a FROM scratch image holding payload at /app.
func buildImage(t *testing.T, eng *engine.Client, tag string, payload []byte) string {
	t.Helper()
	ctx := context.Background()
	bctx, err := goimage.Context(payload, "LABEL berth.test=release-create")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := eng.BuildImage(ctx, bctx, tag); err != nil {
		t.Fatal(err)
	}
	id, err := eng.ImageID(ctx, tag)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = eng.RemoveImage(context.Background(), id) })
	return id
}

// TestReleaseCreateUploads: `berth release create` uploads the images of
// the Compose file from the real engine and pins them; a device whose
// target has the release pulls them whole; the next build, a few bytes
// changed, uploads a few KiB; an image the engine lacks stops it.
func TestReleaseCreateUploads(t *testing.T) {
	eng := requireEngine(t)
	cliEnv(t)
	t.Setenv("BERTH_CACHE", t.TempDir())
	ctx := context.Background()
	url, dir, _ := startServer(t)
	must(t, "login", "--server", url, "--token", strings.TrimSpace(readFileT(t, filepath.Join(dir, "admin.token"))))
	key := decodeJSON[serverapi.FleetKey](t, must(t, "fleet", "create", "lab", "--json")).ProvisioningKey

	payload := make([]byte, 512<<10)
	rand.Read(payload)
	var run [4]byte
	rand.Read(run[:])
	tag := "berth-test/release-create:" + hex.EncodeToString(run[:])
	v1 := buildImage(t, eng, tag+"-v1", payload)
	compose := filepath.Join(t.TempDir(), "compose.yaml")
	write := func(tag string) {
		if err := os.WriteFile(compose, []byte("services:\n  app:\n    image: "+tag+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(tag + "-v1")

	type created struct {
		serverapi.Release
		Upload uploadResult `json:"upload"`
	}
	out, errOut, code := berth(t, "release", "create", "-f", compose, "--fleet", "lab", "--app", "hello", "--version", "v1", "--json")
	if code != 0 {
		t.Fatalf("release create: exit %d\n%s%s", code, out, errOut)
	}
	r1 := decodeJSON[created](t, out)
	if !strings.HasPrefix(r1.ID, "sha256:") || r1.Spec.Services["app"].ImageID != v1 || r1.Upload.Images[tag+"-v1"] != v1 {
		t.Fatalf("release create --json: %+v", r1)
	}
	if r1.Upload.BytesChanged < 512<<10 || r1.Upload.BytesSent == 0 {
		t.Errorf("the first upload: %d changed, %d sent", r1.Upload.BytesChanged, r1.Upload.BytesSent)
	}

	// A device with the release pulls the image whole.
	anon, _ := serverapi.New(url, serverapi.Options{})
	reg, err := anon.Register(ctx, serverapi.RegisterRequest{ProvisioningKey: key, Name: "robot-1"})
	if err != nil {
		t.Fatal(err)
	}
	must(t, "release", "assign", r1.ID, "--fleet", "lab", "--all")
	dev, _ := serverapi.New(url, serverapi.Options{Token: reg.Token})
	robot, err := content.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer robot.Close()
	p := &transfer.Puller{Store: robot, Source: dev.Source()}
	imgs, _, err := p.Pull(ctx, []string{v1}, func(string) bool { return false })
	if err != nil || len(imgs) != 1 || imgs[0].ID != v1 {
		t.Fatalf("pull: %+v, %v", imgs, err)
	}
	checkLayers(t, eng, robot, v1)

	// The same again: nothing to upload, the same release.
	out, errOut, code = berth(t, "release", "create", "-f", compose, "--fleet", "lab", "--app", "hello", "--version", "v1")
	if code != 0 || !strings.Contains(out, "already there") || !strings.Contains(errOut, "on the server already") {
		t.Errorf("release create again: exit %d\n%s%s", code, out, errOut)
	}

	// The next build: a few bytes of the binary changed. A few KiB go up,
	// and down to the device.
	copy(payload[300<<10:], "a rebuilt binary differs here")
	v2 := buildImage(t, eng, tag+"-v2", payload)
	write(tag + "-v2")
	r2 := decodeJSON[created](t, must(t, "release", "create", "-f", compose, "--fleet", "lab", "--app", "hello", "--version", "v2", "--json"))
	if r2.Spec.Services["app"].ImageID != v2 || r2.Upload.BytesSent > 32<<10 || r2.Upload.BytesChanged == 0 {
		t.Errorf("release v2: image %s, %d bytes sent for %d changed; want %s, a few KiB", r2.Spec.Services["app"].ImageID, r2.Upload.BytesSent, r2.Upload.BytesChanged, v2)
	}
	must(t, "release", "assign", r2.ID, "--fleet", "lab", "--all")
	_, sum, err := p.Pull(ctx, []string{v2}, func(string) bool { return false })
	if err != nil {
		t.Fatal(err)
	}
	checkLayers(t, eng, robot, v2)
	if sum.BytesSent > 32<<10 {
		t.Errorf("the device pulled %d bytes for a few bytes changed", sum.BytesSent)
	}
	t.Logf("v2, a few bytes changed: %d bytes up, %d down", r2.Upload.BytesSent, sum.BytesSent)

	// Without --json: progress and a summary on stderr, the release on stdout.
	copy(payload[100<<10:], "and here")
	buildImage(t, eng, tag+"-v3", payload)
	write(tag + "-v3")
	out, errOut, code = berth(t, "release", "create", "-f", compose, "--fleet", "lab", "--app", "hello", "--version", "v3")
	if code != 0 || !strings.Contains(errOut, "from the local engine") || !strings.Contains(errOut, "done:") ||
		!strings.Contains(errOut, "uploaded 1 of 1 images") || !strings.Contains(out, "created") {
		t.Errorf("release create v3: exit %d\n%s\n%s", code, errOut, out)
	}

	// An image the engine lacks: refused, nothing created, a clear word.
	write("berth-test/not-built:" + hex.EncodeToString(run[:]))
	_, errOut, code = berth(t, "release", "create", "-f", compose, "--fleet", "lab", "--app", "hello", "--version", "v4")
	if code == 0 || !strings.Contains(errOut, "not in the local engine") || !strings.Contains(errOut, "--no-upload") {
		t.Errorf("an image not built: exit %d\n%s", code, errOut)
	}
	if rs := decodeJSON[[]serverapi.Release](t, must(t, "release", "list", "--fleet", "lab", "--json")); len(rs) != 3 {
		t.Errorf("%d releases, want 3", len(rs))
	}
}

// checkLayers checks that a device's store rebuilds each layer of the
// local engine's image id byte for byte.
func checkLayers(t *testing.T, eng *engine.Client, st *content.Store, id string) {
	t.Helper()
	img, err := eng.Image(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range img.DiffIDs {
		d, _ := content.ParseDigest(l)
		ix, err := st.Index(d)
		if err != nil {
			t.Fatalf("layer %s: %v", l, err)
		}
		h := sha256.New()
		if err := content.Rebuild(ix, st.Get, h); err != nil || "sha256:"+hex.EncodeToString(h.Sum(nil)) != l {
			t.Fatalf("layer %s rebuilt wrong: %v", l, err)
		}
	}
}

// TestPinUploaded: a release pins what the upload registered — the
// config's digest — also when the engine names the image by its manifest's
// digest (the containerd image store), where pinning the engine's ID made
// the server answer 409.
func TestPinUploaded(t *testing.T) {
	cfg, manifest := "sha256:"+strings.Repeat("c", 64), "sha256:"+strings.Repeat("e", 64)
	classic := "sha256:" + strings.Repeat("a", 64)
	pins := map[string]string{"app:1": manifest, "db:1": classic}
	engineID := map[string]string{"app:1": manifest, "db:1": classic}
	pinUploaded(pins, engineID, []pushResult{{Source: "app:1 db:1", Summary: &transfer.Summary{PerImage: []transfer.ImageSummary{
		{ID: cfg, EngineID: manifest},
		{ID: classic, EngineID: classic},
	}}}})
	if pins["app:1"] != cfg || pins["db:1"] != classic {
		t.Errorf("pins %v, want app:1 %s, db:1 %s", pins, cfg, classic)
	}
}
