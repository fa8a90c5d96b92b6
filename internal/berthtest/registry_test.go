package berthtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/transfer"
)

// TestDockerPush: the real Docker Engine logs in to a real berth server
// with an API token and pushes an image built here; the server registers
// it, a second push finds every layer there already, `berth release
// create` pins it without uploading, and a device pulls layers that
// rebuild byte for byte to what the engine holds.
func TestDockerPush(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	srv := env.NewServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// A fresh image: the test image and one more layer.
	dir := t.TempDir()
	write(t, filepath.Join(dir, "Dockerfile"), "FROM "+env.Images["a"]+"\nCOPY payload /payload\n")
	write(t, filepath.Join(dir, "payload"), strings.Repeat("pushed with docker push\n", 30000)+randomID())
	ref := srv.addr + "/berthtest/x:" + randomID()
	if out, err := docker("build", "-q", "-t", ref, dir); err != nil {
		t.Fatal(err, out)
	}
	t.Cleanup(func() { docker("rmi", "-f", ref) })
	out, err := docker("image", "inspect", "-f", "{{.Id}} {{json .RootFS.Layers}}", ref)
	if err != nil {
		t.Fatal(err, out)
	}
	id, layersJSON, _ := strings.Cut(strings.TrimSpace(out), " ")
	var diffIDs []string
	if err := json.Unmarshal([]byte(layersJSON), &diffIDs); err != nil {
		t.Fatal(err, out)
	}

	// docker login and push with a client config of its own.
	cfg := t.TempDir()
	dockerAs := func(stdin string, args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "docker", append([]string{"--config", cfg}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		b, err := cmd.CombinedOutput()
		return string(b), err
	}
	if out, err := dockerAs("not-a-token", "login", srv.addr, "-u", "ci", "--password-stdin"); err == nil {
		t.Fatalf("docker login with a bad token succeeded: %s", out)
	}
	if out, err := dockerAs(srv.Token, "login", srv.addr, "-u", "ci", "--password-stdin"); err != nil {
		t.Fatalf("docker login: %v\n%s", err, out)
	}
	start := time.Now()
	if out, err := dockerAs("", "push", ref); err != nil {
		t.Fatalf("docker push: %v\n%s", err, out)
	}
	t.Logf("docker push: %v", time.Since(start))
	out, err = dockerAs("", "push", ref)
	if err != nil || strings.Count(out, "Layer already exists") != len(diffIDs) {
		t.Errorf("the second push: want every one of %d layers to exist already: %v\n%s", len(diffIDs), err, out)
	}

	admin, err := serverapi.New(srv.URL, serverapi.Options{Token: srv.Token})
	if err != nil {
		t.Fatal(err)
	}
	info, err := admin.Uploader().ContentInfo(ctx)
	if err != nil || !slices.Contains(info.Images, id) {
		t.Fatalf("the server's content after docker push: %+v, %v; want image %s", info, err, id)
	}

	// berth release create finds the image (by the Compose file's image:)
	// in the engine, and the server holding it all already.
	out, err = srv.Berth(t, "fleet", "create", "lab", "--json")
	if err != nil {
		t.Fatal(err, out)
	}
	var fl struct {
		Key string `json:"provisioning_key"`
	}
	if err := json.Unmarshal([]byte(out), &fl); err != nil {
		t.Fatal(err, out)
	}
	compose := filepath.Join(t.TempDir(), "compose.yaml")
	write(t, compose, strings.Replace(web(FreePort(t), "1"), "${IMG_A}", ref, 1))
	out, err = srv.Berth(t, "release", "create", "-f", compose, "--fleet", "lab", "--app", "app", "--version", "v1", "--json")
	if err != nil {
		t.Fatal(err, out)
	}
	var rel serverapi.Release
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &rel); err != nil || rel.Spec == nil {
		t.Fatalf("release create --json: %v\n%s", err, out)
	}
	var up struct {
		Upload struct {
			BytesChanged int64 `json:"bytes_changed"`
		} `json:"upload"`
	}
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &up); err != nil || up.Upload.BytesChanged != 0 {
		t.Errorf("release create after docker push uploaded %d bytes, want none (%v)", up.Upload.BytesChanged, err)
	}
	if got := rel.Spec.Services["web"].ImageID; got != id {
		t.Fatalf("the release pins %q, want the pushed %s", got, id)
	}

	// A device pulls it; its layers rebuild to the engine's diffIDs.
	reg, err := admin.Register(ctx, serverapi.RegisterRequest{ProvisioningKey: fl.Key, Name: "robot-1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Assign(ctx, "lab", rel.ID, serverapi.AssignRequest{Devices: []string{reg.Device.ID}}); err != nil {
		t.Fatal(err)
	}
	dev, err := serverapi.New(srv.URL, serverapi.Options{Token: reg.Token})
	if err != nil {
		t.Fatal(err)
	}
	robot, err := content.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer robot.Close()
	p := &transfer.Puller{Store: robot, Source: dev.Source()}
	if _, _, err := p.Pull(ctx, []string{id}, func(string) bool { return false }); err != nil {
		t.Fatalf("pull: %v", err)
	}
	for _, l := range diffIDs {
		d, _ := content.ParseDigest(l)
		ix, err := robot.Index(d)
		if err != nil {
			t.Fatalf("layer %s: %v", l, err)
		}
		h := sha256.New()
		if err := content.Rebuild(ix, robot.Get, h); err != nil {
			t.Fatal(err)
		}
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != l {
			t.Errorf("layer %s rebuilt as %s", l, got)
		}
	}
	if _, err := os.Stat(filepath.Join(srv.DataDir, "content", "registry", "state.json")); err != nil {
		t.Errorf("registry state: %v", err)
	}
}
