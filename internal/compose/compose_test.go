package compose

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
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
			"testdata/refuse.yaml:5: services.web.container_name: not supported by berth (berth names containers itself",
			"testdata/refuse.yaml:6: services.web.deploy: not supported by berth",
			"testdata/refuse.yaml:9: services.web.cpus: not supported by berth",
			"testdata/refuse.yaml:10: services.web.mem_limit:",
			"testdata/refuse.yaml:11: services.web.pid:",
			"testdata/refuse.yaml:12: services.web.ipc:",
			"testdata/refuse.yaml:13: services.web.sysctls:",
			"testdata/refuse.yaml:15: services.web.security_opt:",
			"testdata/refuse.yaml:16: services.web.secrets:",
			"testdata/refuse.yaml:17: services.web.configs:",
			`testdata/refuse.yaml:21: services.web.ports.[].mode: not supported by berth (mode "host"`,
			// short syntax: the line of the list, the attribute has none of its own
			"testdata/refuse.yaml:22: services.web.volumes.[].bind.selinux:",
			"testdata/refuse.yaml:22: services.web.volumes.[].volume.nocopy:",
			"testdata/refuse.yaml:25: services.web.volumes.[]: not supported by berth (anonymous volume at /anon",
			"testdata/refuse.yaml:28: services.web.networks.default.priority:",
			"testdata/refuse.yaml:32: services.web.depends_on.db.restart:",
			"testdata/refuse.yaml:35: services.db.scale:",
			"testdata/refuse.yaml:36: services.db.extends:",
			"testdata/refuse.yaml:41: configs:",
			"testdata/refuse.yaml:48: networks.default.ipam:",
		}},
		{"values", []string{"refuse-values.yaml"}, Options{}, []string{
			`testdata/refuse-values.yaml:7: services.web.ports.[].mode: not supported by berth (mode "host"`,
			"testdata/refuse-values.yaml:10: services.web.volumes.[]: not supported by berth (anonymous volume at /anon",
			"testdata/refuse-values.yaml:15: services.web.volumes.[].bind.create_host_path:",
			`testdata/refuse-values.yaml:16: services.web.volumes.[].type: not supported by berth (type "npipe"`,
			`testdata/refuse-values.yaml:21: services.side.network_mode: not supported by berth ("service:web"`,
			`testdata/refuse-values.yaml:24: services.other.network_mode: not supported by berth ("container:abc"`,
			`testdata/refuse-values.yaml:27: services.bridged.network_mode:`,
		}},
		{"profile-active", []string{"profiles.yaml"}, Options{Profiles: []string{"debug"}}, []string{
			"testdata/profiles.yaml:9: services.debug.build.cache_from: not supported by berth",
		}},
		{"second-file", []string{"minimal.yaml", "refuse-override.yaml"}, Options{}, []string{
			"testdata/refuse-override.yaml:4: services.app.stdin_open: not supported by berth",
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
