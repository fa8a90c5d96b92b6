package berthtest

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-robotics/berth/internal/goimage"
	"github.com/berth-robotics/berth/internal/transfer"
)

// TestPushSendsOnlyTheChange pushes a robot-like image, then two updates:
// a one-line change in the app's source (the binary rebuilt), and one file
// edited in a layer of 3,000 files. Each update must cost kilobytes on the
// exchange, not the changed layer.
func TestPushSendsOnlyTheChange(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	robot := env.NewDevice(t)
	dir := t.TempDir()
	cache := t.TempDir()
	rng := rand.New(rand.NewSource(42))

	// A "runtime" layer of many small source-like files.
	runtime := filepath.Join(dir, "ctx", "runtime")
	for i := 0; i < 3000; i++ {
		var b strings.Builder
		for j := 0; j < 40; j++ {
			fmt.Fprintf(&b, "func f%d_%d(x int) int { return x*%d + %d }\n", i, j, rng.Intn(1000), rng.Intn(1000))
		}
		p := filepath.Join(runtime, fmt.Sprintf("pkg%02d", i%50), fmt.Sprintf("file%04d.go", i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		write(t, p, b.String())
	}
	app := filepath.Join(dir, "app")
	os.MkdirAll(app, 0o755)
	write(t, filepath.Join(app, "go.mod"), "module app\ngo 1.22\n")
	src := "package main\n\nimport (\"fmt\"; \"net/http\")\n\nfunc main() {\n\tfmt.Println(\"GREETING\")\n\thttp.ListenAndServe(\":8080\", nil)\n}\n"
	tags := []string{}
	t.Cleanup(func() {
		for _, tag := range tags {
			docker("rmi", "-f", tag)
		}
	})
	build := func(version, greeting string) string {
		t.Helper()
		write(t, filepath.Join(app, "main.go"), strings.Replace(src, "GREETING", greeting, 1))
		bin, err := goimage.Binary(context.Background(), app)
		if err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, "ctx", "app"), string(bin))
		os.Chmod(filepath.Join(dir, "ctx", "app"), 0o755)
		write(t, filepath.Join(dir, "ctx", "Dockerfile"), "FROM scratch\nCOPY runtime /runtime\nCOPY app /app\n")
		tag := "berthtest/delta:" + version + "-" + randomID()
		if out, err := docker("build", "-q", "-t", tag, filepath.Join(dir, "ctx")); err != nil {
			t.Fatal(err, out)
		}
		tags = append(tags, tag)
		return tag
	}
	push := func(tag string) transfer.Summary {
		t.Helper()
		// The device's engine is this engine: remove the image so it must be loaded.
		archive := filepath.Join(dir, "image.tar")
		if out, err := docker("save", "-o", archive, tag); err != nil {
			t.Fatal(err, out)
		}
		if out, err := docker("rmi", tag); err != nil {
			t.Fatal(err, out)
		}
		out, err := robot.BerthEnv(t, []string{"BERTH_CACHE=" + cache}, "push", archive, "--json")
		if err != nil {
			t.Fatal(err, out)
		}
		var res []struct{ Summary transfer.Summary }
		if err := json.Unmarshal([]byte(out[strings.Index(out, "["):]), &res); err != nil {
			t.Fatal(err, out)
		}
		if _, err := docker("image", "inspect", tag); err != nil {
			t.Fatalf("%s not loaded on the device", tag)
		}
		return res[0].Summary
	}

	first := push(build("v1", "hello"))
	t.Logf("first push: %d KiB sent, %d KiB changed", first.BytesSent>>10, first.BytesChanged>>10)

	s1 := push(build("v2", "hello, robot"))
	t.Logf("binary rebuilt after a one-line change: %.1f KiB sent (%d files as deltas), %d KiB changed", float64(s1.BytesSent)/1024, s1.DeltaFiles, s1.BytesChanged>>10)
	if s1.DeltaFiles < 1 || s1.BytesSent > 64<<10 {
		t.Errorf("S1: %+v", s1)
	}

	f := filepath.Join(runtime, "pkg07", "file0007.go")
	b, _ := os.ReadFile(f)
	write(t, f, string(b)+"// one more line\n")
	s2 := push(build("v3", "hello, robot"))
	t.Logf("one file edited in a 3,000-file layer: %.1f KiB sent (index %.1f KiB), %d KiB changed", float64(s2.BytesSent)/1024, float64(s2.IndexBytes)/1024, s2.BytesChanged>>10)
	if s2.BytesSent > 64<<10 {
		t.Errorf("S2: %+v", s2)
	}
}
