package build

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/berth-robotics/berth/internal/compose"
	"github.com/berth-robotics/berth/internal/release"
)

func TestNewPlan(t *testing.T) {
	p := &compose.Project{
		App: "robot",
		Spec: &release.Spec{Services: map[string]release.Service{
			"sensor": {Image: "robot-sensor"}, "ui": {Image: "lab/ui"}, "db": {Image: "postgres:16"},
		}},
		Builds: map[string]compose.Build{
			"sensor": {Context: "/src", Dockerfile: "sensor/Dockerfile"},
			"ui":     {Context: "/src", Dockerfile: "ui/Dockerfile", Image: "lab/ui"},
		},
	}
	v := Version{Describe: "v1.2.0-3-gabc", Revision: "abc"}
	tests := []struct {
		name     string
		services []string
		want     []string // service=tags
		err      string
	}{
		{"all", nil, []string{"sensor=robot-sensor:v1.2.0-3-gabc", "ui=robot-ui:v1.2.0-3-gabc,lab/ui"}, ""},
		{"named", []string{"ui", "ui"}, []string{"ui=robot-ui:v1.2.0-3-gabc,lab/ui"}, ""},
		{"no-build", []string{"db"}, nil, "service db has no build: section"},
		{"unknown", []string{"arm"}, nil, "no service arm in app robot"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plan, err := NewPlan(p, v, tt.services...)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, tg := range plan.Targets {
				got = append(got, tg.Service+"="+strings.Join(tg.Tags, ","))
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("targets (-want +got):\n%s", d)
			}
		})
	}
	plan, _ := NewPlan(p, v)
	spec := *p.Spec
	spec.Services = cloneMap(p.Spec.Services)
	plan.Pin(&spec)
	if spec.Services["sensor"].Image != "robot-sensor:v1.2.0-3-gabc" || spec.Services["db"].Image != "postgres:16" {
		t.Errorf("pinned %+v", spec.Services)
	}
}

func cloneMap[M ~map[K]V, K comparable, V any](m M) M {
	out := M{}
	for k, v := range m {
		out[k] = v
	}
	return out
}

func TestContextTar(t *testing.T) {
	dir := t.TempDir()
	for name, text := range map[string]string{
		".dockerignore":         "*.md\nsecret/\n**/*.log\n!keep.md\n",
		"Dockerfile":            "FROM scratch\n",
		"README.md":             "docs",
		"keep.md":               "kept",
		"main.go":               "package main",
		"secret/key":            "k",
		"sub/app.log":           "log",
		"sub/data.txt":          "d",
		"../outside/Dockerfile": "FROM scratch\nCOPY main.go /\n",
	} {
		p := filepath.Join(dir, "ctx", name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	list := func(dockerfile string) (string, []string) {
		var buf bytes.Buffer
		df, err := contextTar(&buf, filepath.Join(dir, "ctx"), dockerfile)
		if err != nil {
			t.Fatal(err)
		}
		if df != dockerfileInTar(filepath.Join(dir, "ctx"), dockerfile) {
			t.Errorf("dockerfile %q, dockerfileInTar says %q", df, dockerfileInTar(filepath.Join(dir, "ctx"), dockerfile))
		}
		var names []string
		tr := tar.NewReader(&buf)
		for h, err := tr.Next(); err == nil; h, err = tr.Next() {
			names = append(names, h.Name)
		}
		slices.Sort(names)
		return df, names
	}
	df, names := list("Dockerfile")
	want := []string{".dockerignore", "Dockerfile", "keep.md", "main.go", "sub/", "sub/data.txt"}
	if df != "Dockerfile" || !cmp.Equal(want, names) {
		t.Errorf("dockerfile %q, context %v, want %v", df, names, want)
	}
	df, names = list(filepath.Join(dir, "outside", "Dockerfile"))
	if !strings.HasPrefix(df, ".berth-dockerfile-") || !slices.Contains(names, df) {
		t.Errorf("a Dockerfile outside the context: %q in %v", df, names)
	}
}
