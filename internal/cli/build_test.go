package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/testlock"
)

// TestBuildCommand: berth build builds the services with build: (a FROM
// scratch image, so no base image is needed), tags them
// <app>-<service>:<version>, prints a summary or JSON, and fails naming the
// service whose build failed; a service with a build secret is built with
// BuildKit, and a secret that cannot be read fails before any build.
func TestBuildCommand(t *testing.T) {
	eng := requireEngine(t)
	testlock.Hold(t, testlock.ExampleBuild)
	since := time.Now().Add(-time.Second)
	t.Cleanup(func() { // the BuildKit build's cache records
		if ids, err := eng.BuildCacheSince(context.Background(), since); err == nil {
			_, _ = eng.PruneBuildCache(context.Background(), ids)
		}
	})
	dir := t.TempDir()
	write := func(name, text string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	app := "berthtest-cli-" + strings.ToLower(randomHex(t))
	write("payload.txt", "hello\n")
	write("Dockerfile", "FROM scratch\nCOPY payload.txt /\nCMD [\"/payload.txt\"]\n")
	write("Dockerfile.bad", "FROM scratch\nCOPY nothing-here /\n")
	write("compose.yaml", "name: "+app+"\nservices:\n  good:\n    build: .\n  other:\n    image: busybox\n")
	tag := app + "-good:v1"
	t.Cleanup(func() { _ = eng.RemoveImage(context.Background(), tag) })
	run := func(args ...string) (string, int) {
		var out bytes.Buffer
		code := Main(context.Background(), "test", args, &out, &out)
		return out.String(), code
	}
	f := filepath.Join(dir, "compose.yaml")
	out, code := run("build", "-f", f, "--version", "v1")
	if code != 0 || !strings.Contains(out, "good | Successfully tagged "+tag) || !strings.Contains(out, app+" v1: 1 built, 0 failed") {
		t.Fatalf("build: exit %d\n%s", code, out)
	}
	info, err := eng.Image(context.Background(), tag)
	if err != nil || info.Labels["org.opencontainers.image.version"] != "v1" {
		t.Fatalf("image %s: %+v %v", tag, info, err)
	}
	var stdout, stderr bytes.Buffer
	if code := Main(context.Background(), "test", []string{"build", "-f", f, "--version", "v1", "--json", "good"}, &stdout, &stderr); code != 0 {
		t.Fatalf("build --json: exit %d\n%s%s", code, stdout.String(), stderr.String())
	}
	var res struct {
		Images []struct {
			Service, Image, ID string
		} `json:"images"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil || len(res.Images) != 1 || res.Images[0].Image != tag || res.Images[0].ID != info.ID {
		t.Fatalf("build --json: %v\n%s", err, stdout.String())
	}
	if out, code := run("build", "-f", f, "other"); code == 0 || !strings.Contains(out, "service other has no build: section") {
		t.Fatalf("build of a service without build: exit %d\n%s", code, out)
	}

	write("compose.yaml", "name: "+app+"\nservices:\n  bad:\n    build: {context: ., dockerfile: Dockerfile.bad}\n")
	if out, code := run("build", "-f", f, "--version", "v1"); code == 0 || !strings.Contains(out, "--- full log of bad ---") || !strings.Contains(out, "build of "+app+" failed: bad") {
		t.Fatalf("failed build: exit %d\n%s", code, out)
	}
	write("compose.yaml", "name: "+app+"\nservices:\n  s:\n    build:\n      context: .\n      secrets: [tok]\nsecrets:\n  tok:\n    environment: BERTH_TEST_CLI_TOKEN\n")
	if out, code := run("build", "-f", f, "--version", "v1"); code == 0 || !strings.Contains(out, "BERTH_TEST_CLI_TOKEN is not set") || !strings.Contains(out, "nothing was built") {
		t.Fatalf("unset secret: exit %d\n%s", code, out)
	}
	t.Setenv("BERTH_TEST_CLI_TOKEN", "s3cret")
	if out, code := run("build", "-f", f, "--version", "v1", "--builder", "classic"); code == 0 || !strings.Contains(out, "which the classic builder would leave in a layer") {
		t.Fatalf("secret with --builder classic: exit %d\n%s", code, out)
	}
	t.Setenv("BERTH_BUILDER", "buildx")
	if out, code := run("build", "-f", f, "--version", "v1"); code == 0 || !strings.Contains(out, "BERTH_BUILDER: builder \"buildx\"") {
		t.Fatalf("BERTH_BUILDER=buildx: exit %d\n%s", code, out)
	}
	t.Setenv("BERTH_BUILDER", "")
	stag := app + "-s:v1"
	t.Cleanup(func() { _ = eng.RemoveImage(context.Background(), stag) })
	stdout.Reset()
	stderr.Reset()
	if code := Main(context.Background(), "test", []string{"build", "-f", f, "--version", "v1", "--json"}, &stdout, &stderr); code != 0 || !strings.Contains(stderr.String(), "s | #1 ") {
		t.Fatalf("build with a secret: exit %d\n%s%s", code, stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), `"builder": "buildkit"`) {
		t.Errorf("build with a secret, not with BuildKit:\n%s", stdout.String())
	}
	if _, err := eng.Image(context.Background(), stag); err != nil {
		t.Error(err)
	}
}

func randomHex(t *testing.T) string {
	t.Helper()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
