package guard

import (
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata/berthd-deps.txt")

const module = "github.com/berth-robotics/berth"

func goList(t *testing.T, args ...string) []string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list"}, args...)...)
	cmd.Dir = filepath.Join("..", "..")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %v: %v", args, err)
	}
	return strings.Fields(string(out))
}

// TestPureLayers: the release vocabulary and the planner import no Docker,
// SQL or HTTP, directly or not.
func TestPureLayers(t *testing.T) {
	for _, pkg := range []string{"./internal/release", "./internal/reconcile"} {
		for _, dep := range goList(t, "-deps", pkg) {
			for _, banned := range []string{"github.com/docker/", "github.com/moby/", "database/sql", "net/http", "github.com/jackc/", "modernc.org/sqlite"} {
				if strings.HasPrefix(dep, banned) {
					t.Errorf("%s imports %s", pkg, dep)
				}
			}
		}
	}
}

// TestBuildKitOnlyInCLI: moby/buildkit (with gRPC and protobuf) is linked
// into the laptop CLI alone, by internal/buildkit; the engine package, which
// berthd links, knows nothing of it.
func TestBuildKitOnlyInCLI(t *testing.T) {
	for _, dep := range goList(t, "-deps", "./internal/engine") {
		if strings.HasPrefix(dep, "github.com/moby/buildkit") || strings.HasPrefix(dep, "google.golang.org/grpc") || strings.HasSuffix(dep, "/internal/buildkit") {
			t.Errorf("internal/engine imports %s", dep)
		}
	}
	var cli bool
	for _, dep := range goList(t, "-deps", "./cmd/berth") {
		cli = cli || dep == "github.com/moby/buildkit/session"
	}
	if !cli {
		t.Error("berth does not link github.com/moby/buildkit/session: is this guard still about anything?")
	}
}

// TestPackageDocs: every package has a doc comment.
func TestPackageDocs(t *testing.T) {
	cmd := exec.Command("go", "list", "-f", "{{.ImportPath}}\t{{.Doc}}", "./...")
	cmd.Dir = filepath.Join("..", "..")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		path, doc, _ := strings.Cut(line, "\t")
		if strings.TrimSpace(doc) == "" {
			t.Errorf("package %s has no doc comment", path)
		}
	}
}

// TestBerthdDeps keeps berthd lean: the packages it links are pinned in
// testdata/berthd-deps.txt (standard library left out). A change there is a
// decision to put more on every robot: look at it, then run with -update.
func TestBerthdDeps(t *testing.T) {
	got := goList(t, "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "./cmd/berthd")
	for _, dep := range got {
		for _, banned := range []string{"database/sql", "github.com/jackc/", "modernc.org/", "/internal/server", "/internal/store", "/internal/dashboard", "/internal/cli", "github.com/spf13/cobra",
			// BuildKit's client session and its gRPC: for the CLI's builds only
			"github.com/moby/buildkit", "google.golang.org/grpc", "github.com/tonistiigi/fsutil", "/internal/buildkit", "/internal/build"} {
			// a package or its subpackages: /internal/server, not /internal/serverapi
			if strings.HasSuffix(dep, banned) || strings.Contains(dep, banned+"/") || (!strings.HasPrefix(banned, "/") && strings.Contains(dep, banned)) {
				t.Errorf("berthd links %s", dep)
			}
		}
	}
	path := filepath.Join("testdata", "berthd-deps.txt")
	slices.Sort(got) // the set matters, not go list's order
	text := strings.Join(got, "\n") + "\n"
	if *update {
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(string(want), text); d != "" {
		t.Errorf("berthd's dependencies changed (-want +got); if on purpose, go test ./internal/guard -update:\n%s", d)
	}
}
