package compose

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/berth-robotics/berth/internal/release"
)

// FuzzLoad feeds arbitrary bytes to Load as a compose.yaml. Load must not
// panic; every error must wrap release.ErrInvalid; a spec it returns must
// validate and marshal. Seeds, some of them real Compose files, are in
// testdata/fuzz/FuzzLoad.
func FuzzLoad(f *testing.F) {
	dir := f.TempDir() // one per fuzz worker process; each input overwrites the file
	file := filepath.Join(dir, "compose.yaml")
	f.Fuzz(func(t *testing.T, data []byte) {
		// env_file and label_file read any path: keep the fuzzer off
		// device files such as /dev/zero that never end
		if bytes.Contains(data, []byte("_file")) || bytes.Contains(data, []byte("include")) || bytes.Contains(data, []byte("extends")) || bytes.Contains(data, []byte("file")) {
			for _, p := range []string{"/dev", "/proc", "/sys"} {
				if bytes.Contains(data, []byte(p)) {
					t.Skip("may read a device file")
				}
			}
		}
		if err := os.WriteFile(file, data, 0o644); err != nil {
			t.Fatal(err)
		}
		app, spec, err := Load(context.Background(), []string{file}, Options{ProjectName: "fuzz", Env: map[string]string{}})
		if err != nil {
			if !errors.Is(err, release.ErrInvalid) {
				t.Fatalf("error does not wrap release.ErrInvalid: %v", err)
			}
			return
		}
		if app != "fuzz" {
			t.Errorf("app = %q, want fuzz", app)
		}
		if err := spec.Validate(); err != nil {
			t.Fatalf("Load returned a spec that does not validate: %v", err)
		}
		if _, err := json.Marshal(spec); err != nil {
			t.Fatalf("marshal spec: %v", err)
		}
	})
}
