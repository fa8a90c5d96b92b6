// Package testlock serialises tests of different packages (go test runs
// packages in parallel processes) that would otherwise race on something
// the machine shares, such as the Docker Engine's build cache.
package testlock

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// ExampleBuild is held by every test that builds examples/robot or removes
// images built from it: removing a tagged image also removes its untagged
// parents, which another build may be taking from the cache at that moment
// ("unable to find image sha256:…").
const ExampleBuild = "berth-example-build"

// Hold takes the machine-wide lock called name for the rest of t, and
// releases it after t's other cleanups (registered later) have run.
func Hold(t testing.TB, name string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(os.TempDir(), name+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatalf("lock %s: %v", name, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		t.Fatalf("lock %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	})
}
