// Package goimage builds a FROM-scratch image from a Go main package with the
// machine's own Go toolchain, through the engine's classic builder. The
// quickstart and the tests use it: these machines, like robots in the field,
// cannot pull a base image from any registry.
package goimage

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Binary compiles the main package in dir (a path inside the current module)
// as a static linux binary for the host's architecture and returns its bytes.
func Binary(ctx context.Context, dir string) ([]byte, error) {
	tmp, err := os.MkdirTemp("", "berth-goimage-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, "app")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build %s: %v\n%s", dir, err, b)
	}
	return os.ReadFile(out)
}

// Context returns a docker build context (a tar stream) holding binary at
// /app and a Dockerfile FROM scratch that runs it; extra lines (ENV, LABEL,
// EXPOSE…) are appended to the Dockerfile.
func Context(binary []byte, extra ...string) (*bytes.Reader, error) {
	dockerfile := "FROM scratch\nCOPY app /app\nENTRYPOINT [\"/app\"]\n" + strings.Join(extra, "\n") + "\n"
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct {
		name string
		mode int64
		data []byte
	}{{"Dockerfile", 0o644, []byte(dockerfile)}, {"app", 0o755, binary}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data))}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return bytes.NewReader(buf.Bytes()), nil
}
