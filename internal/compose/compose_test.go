package compose

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func TestLoadGolden(t *testing.T) {
	tests := []struct {
		name  string
		files []string
		opts  Options
	}{
		{"full", []string{"full.yaml"}, Options{Env: map[string]string{"WEB_TOKEN": "tok"}}},
		{"robot", []string{"robot.yaml"}, Options{Env: map[string]string{}}},
		{"minimal", []string{"minimal.yaml"}, Options{Env: map[string]string{}}},
		{"minimal-named", []string{"minimal.yaml"}, Options{ProjectName: "robot_app", Env: map[string]string{}}},
		{"override", []string{"base.yaml", "override.yaml"}, Options{Env: map[string]string{}}},
		{"profiles-none", []string{"profiles.yaml"}, Options{Env: map[string]string{}}},
		{"profiles-metrics", []string{"profiles.yaml"}, Options{Env: map[string]string{}, Profiles: []string{"metrics"}}},
	}
	testdata, err := filepath.Abs("testdata")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			app, spec, err := Load(context.Background(), paths(tt.files...), tt.opts)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			got, err := json.MarshalIndent(struct {
				App  string        `json:"app"`
				Spec *release.Spec `json:"spec"`
			}{app, spec}, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			// bind sources are absolute: keep the golden files machine independent
			got = append(bytes.ReplaceAll(got, []byte(testdata), []byte("$TESTDATA")), '\n')
			golden := filepath.Join("testdata", tt.name+".golden.json")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update)", err)
			}
			if diff := cmp.Diff(string(want), string(got)); diff != "" {
				t.Errorf("spec mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLoadValues(t *testing.T) {
	env := map[string]string{"WEB_TOKEN": "from-env", "MISSING": ""}
	app, spec, err := Load(context.Background(), paths("full.yaml"), Options{Env: env})
	if err != nil {
		t.Fatal(err)
	}
	if app != "full-app" {
		t.Errorf("app = %q, want full-app", app)
	}
	want := map[string]string{
		"PLAIN":     "value",      // environment wins over env_file
		"FROM_FILE": "file-value", // from env_file
		"FROM_ENV":  "from-env",   // ${WEB_TOKEN}
		"DEFAULTED": "fallback",   // ${MISSING:-fallback}: set but empty
	}
	if diff := cmp.Diff(want, spec.Services["web"].Environment); diff != "" {
		t.Errorf("environment (-want +got):\n%s", diff)
	}
	if _, ok := env["COMPOSE_PROJECT_NAME"]; ok {
		t.Error("Load wrote into the caller's Env")
	}
}

func TestLoadOSEnviron(t *testing.T) {
	t.Setenv("ROS_DOMAIN_ID", "42")
	_, spec, err := Load(context.Background(), paths("robot.yaml"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := spec.Services["driver"].Environment["ROS_DOMAIN_ID"]; got != "42" {
		t.Errorf("ROS_DOMAIN_ID = %q, want 42 from the process environment", got)
	}
}

func TestLoadRefused(t *testing.T) {
	tests := []struct {
		name  string
		files []string
		opts  Options
		want  []string
	}{
		{"attributes", []string{"refuse.yaml"}, Options{}, []string{
			"testdata/refuse.yaml:4: services.web.build.cache_from: not supported by berth (berth builds context, dockerfile, target, args, labels, platforms and secrets)",
			"testdata/refuse.yaml:6: services.web.deploy.labels: not supported by berth (it steers a swarm's scheduler and has no meaning on one device",
			"testdata/refuse.yaml:8: services.web.deploy.placement: not supported by berth (it steers a swarm's scheduler",
			"testdata/refuse.yaml:10: services.web.deploy.replicas: not supported by berth (3 replicas: berth runs one container per service",
			"testdata/refuse.yaml:11: services.web.cpu_count: not supported by berth (Windows containers only)",
			"testdata/refuse.yaml:14: services.web.links: not supported by berth (services reach each other by name",
			"testdata/refuse.yaml:15: services.web.volumes_from:",
			"testdata/refuse.yaml:16: services.web.use_api_socket:",
			`testdata/refuse.yaml:20: services.web.ports.[].mode: not supported by berth (mode "host"`,
			"testdata/refuse.yaml:23: services.web.networks.default.gw_priority:",
			"testdata/refuse.yaml:26: services.db.scale: not supported by berth (scale 2",
			"testdata/refuse.yaml:28: services.db.blkio_config.device_read_bps: not supported by berth (berth applies blkio_config.weight)",
		}},
		{"values", []string{"refuse-values.yaml"}, Options{}, []string{
			`testdata/refuse-values.yaml:7: services.web.ports.[].mode: not supported by berth (mode "host"`,
			"testdata/refuse-values.yaml:14: services.web.volumes.[].bind.create_host_path:",
			`testdata/refuse-values.yaml:15: services.web.volumes.[].type: not supported by berth (type "npipe"`,
			`testdata/refuse-values.yaml:23: services.other.network_mode: not supported by berth ("container:abc": a container outside the app`,
			`testdata/refuse-values.yaml:24: services.other.ipc: not supported by berth ("container:abc"`,
			`testdata/refuse-values.yaml:27: services.bridged.network_mode:`,
		}},
		{"profile-active", []string{"profiles.yaml"}, Options{Profiles: []string{"debug"}}, []string{
			"testdata/profiles.yaml:9: services.debug.build.cache_from: not supported by berth",
		}},
		{"second-file", []string{"minimal.yaml", "refuse-override.yaml"}, Options{}, []string{
			"testdata/refuse-override.yaml:4: services.app.cpu_percent: not supported by berth",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Env = map[string]string{}
			_, _, err := Load(context.Background(), paths(tt.files...), tt.opts)
			if !errors.Is(err, release.ErrInvalid) {
				t.Fatalf("Load error = %v, want release.ErrInvalid", err)
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tt.want) {
				t.Errorf("got %d refusals, want %d:\n%v", len(lines), len(tt.want), err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q", w)
				}
			}
			if t.Failed() {
				t.Logf("error:\n%v", err)
			}
		})
	}
}

func TestLoadInvalid(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		opts Options
		want string
	}{
		{"malformed", "services:\n  web:\n    image: [a\n", Options{}, "compose.yaml"},
		{"malformed-line", "services:\n  web:\n   image: a\n  bad\n", Options{}, "line 4"},
		{"unknown-key", "services:\n  web:\n    image: a\n    imagee: b\n", Options{}, "compose.yaml:4: services.web.imagee: not a Compose attribute"},
		{"unknown-top-level", "services:\n  web:\n    image: a\nfoo: 1\n", Options{}, "compose.yaml:4: foo: not a Compose attribute"},
		{"wrong-type", "services:\n  web:\n    image: a\n    ports:\n      - {target: x}\n", Options{}, "compose.yaml:5: services.web.ports.[].target"},
		{"missing-image", "services:\n  web:\n    command: run\n", Options{}, "neither an image nor a build context"},
		{"depends-on-missing", "services:\n  web:\n    image: a\n    depends_on: [db]\n", Options{}, "db"},
		{"healthy-but-healthcheck-disabled", "services:\n  web:\n    image: a\n    depends_on:\n      db: {condition: service_healthy}\n  db:\n    image: b\n    healthcheck: {disable: true}\n", Options{}, "disables its healthcheck"},
		{"bad-strategy", "services:\n  web:\n    image: a\n    labels: {berth.update.strategy: yolo}\n", Options{}, "yolo"},
		{"bad-service-name", "services:\n  Web:\n    image: a\n", Options{}, `service name "Web"`},
		{"bad-app-name", "services:\n  web:\n    image: a\n", Options{ProjectName: "Bad Name"}, "Bad Name"},
		{"no-services", "name: x\n", Options{}, "no services"},
		{"empty", "", Options{}, "empty compose file"},
		{"not-a-mapping", "- a\n", Options{}, "mapping"},
		{"missing-variable", "services:\n  web:\n    image: ${IMAGE:?set IMAGE}\n", Options{}, "set IMAGE"},
		{"missing-env-file", "services:\n  web:\n    image: a\n    env_file: nope.env\n", Options{}, "nope.env"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "compose.yaml")
			if err := os.WriteFile(file, []byte(tt.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			if tt.opts.ProjectName == "" {
				tt.opts.ProjectName = "app"
			}
			tt.opts.Env = map[string]string{}
			_, _, err := Load(context.Background(), []string{file}, tt.opts)
			if !errors.Is(err, release.ErrInvalid) {
				t.Fatalf("Load error = %v, want release.ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Load error = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestLoadNoFiles(t *testing.T) {
	if _, _, err := Load(context.Background(), nil, Options{}); !errors.Is(err, release.ErrInvalid) {
		t.Errorf("Load(nil) = %v, want release.ErrInvalid", err)
	}
	_, _, err := Load(context.Background(), paths("does-not-exist.yaml"), Options{})
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing file) = %v, want os.ErrNotExist", err)
	}
}

func paths(names ...string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = filepath.Join("testdata", n)
	}
	return out
}

// TestLoadDiscover loads a project as docker compose does: file names,
// override files, .env, --env-file, COMPOSE_FILE, COMPOSE_PROJECT_NAME,
// COMPOSE_PROFILES, a project directory, the search up the tree, extends.
func TestLoadDiscover(t *testing.T) {
	dir, err := filepath.Abs("testdata/discover")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		cwd     string
		files   []string
		opts    Options
		app     string
		image   string
		env     map[string]string
		mount   string
		enabled []string
	}{
		{name: "here", cwd: dir, app: "discover", image: "app:7",
			env: map[string]string{"MODE": "base", "OVERRIDDEN": "yes"}, mount: "/srv/data", enabled: []string{"app", "worker"}},
		{name: "up-the-tree", cwd: filepath.Join(dir, "sub", "deeper"), app: "discover", image: "app:7", mount: "/srv/data"},
		{name: "env-file", cwd: dir, opts: Options{EnvFiles: []string{filepath.Join(dir, "prod.env")}}, app: "discover", image: "app:8",
			env: map[string]string{"MODE": "prod", "OVERRIDDEN": "yes"}, mount: "/srv/other"},
		{name: "os-env-wins", cwd: dir, opts: Options{Env: map[string]string{"TAG": "9"}}, app: "discover", image: "app:9", mount: "/srv/data"},
		{name: "project-name-env", cwd: dir, opts: Options{Env: map[string]string{"COMPOSE_PROJECT_NAME": "lab"}}, app: "lab", image: "app:7"},
		{name: "project-name-flag", cwd: dir, opts: Options{ProjectName: "flag", Env: map[string]string{"COMPOSE_PROJECT_NAME": "lab"}}, app: "flag", image: "app:7"},
		{name: "profiles-env", cwd: dir, opts: Options{Env: map[string]string{"COMPOSE_PROFILES": "debug"}}, app: "discover", image: "app:7",
			enabled: []string{"app", "tools", "worker"}},
		{name: "compose-file-env", cwd: t.TempDir(), opts: Options{Env: map[string]string{"COMPOSE_FILE": filepath.Join(dir, "docker-compose.yml")}},
			app: "discover", image: "app:7", env: map[string]string{"MODE": "base"}}, // COMPOSE_FILE names no override
		{name: "project-directory", cwd: t.TempDir(), opts: Options{WorkingDir: dir}, app: "discover", image: "app:7",
			env: map[string]string{"MODE": "base", "OVERRIDDEN": "yes"}},
		{name: "explicit-files", cwd: t.TempDir(), files: []string{filepath.Join(dir, "docker-compose.yml")}, app: "discover", image: "app:7",
			env: map[string]string{"MODE": "base"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Chdir(tt.cwd)
			if tt.opts.Env == nil {
				tt.opts.Env = map[string]string{}
			}
			p, err := LoadProject(context.Background(), tt.files, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			if p.App != tt.app {
				t.Errorf("app = %q, want %q", p.App, tt.app)
			}
			if p.Dir != dir {
				t.Errorf("project directory = %q, want %q", p.Dir, dir)
			}
			app := p.Spec.Services["app"]
			if app.Image != tt.image {
				t.Errorf("image = %q, want %q", app.Image, tt.image)
			}
			if tt.env != nil {
				if diff := cmp.Diff(tt.env, app.Environment); diff != "" {
					t.Errorf("environment (-want +got):\n%s", diff)
				}
			}
			if tt.mount != "" && (len(app.Mounts) != 1 || app.Mounts[0].Source != tt.mount) {
				t.Errorf("mounts = %+v, want source %s", app.Mounts, tt.mount)
			}
			if tt.enabled != nil {
				var got []string
				for _, n := range sortedKeys(p.Spec.Services) {
					got = append(got, n)
				}
				if diff := cmp.Diff(tt.enabled, got); diff != "" {
					t.Errorf("services (-want +got):\n%s", diff)
				}
			}
			w := p.Spec.Services["worker"]
			if w.Ipc != "host" || w.Environment["FROM_BASE"] != "1" || w.Image != strings.Replace(tt.image, "app", "worker", 1) || w.Command[0] != "work" {
				t.Errorf("worker (extends common.yaml) = %+v", w)
			}
		})
	}
}

// TestLoadErrorsNameFileAndLine: a variable the .env lacks makes the loader
// fail deep in its conversion; the error still names the file and line.
func TestLoadErrorsNameFileAndLine(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "compose.yaml"), []byte("services:\n  app:\n    image: a\n    volumes:\n      - ${DATA_DIR}:/media/\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	_, _, err := Load(context.Background(), nil, Options{Env: map[string]string{}})
	if !errors.Is(err, release.ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
	if !strings.Contains(err.Error(), "compose.yaml:5:") || !strings.Contains(err.Error(), "DATA_DIR not set") {
		t.Errorf("err = %v, want it to name compose.yaml:5", err)
	}
}

func TestLoadNoFileFound(t *testing.T) {
	t.Chdir(t.TempDir())
	_, _, err := Load(context.Background(), nil, Options{Env: map[string]string{}})
	if !errors.Is(err, release.ErrInvalid) || !strings.Contains(err.Error(), "compose.yaml, compose.yml, docker-compose.yml, docker-compose.yaml") {
		t.Errorf("err = %v, want a no-file error naming the names looked for", err)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
