package compose

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/google/go-cmp/cmp"

	"github.com/berth-robotics/berth/internal/release"
)

// TestCorpus reads every Compose file of testdata/corpus (public projects,
// named in its SOURCES) as docker compose's own loader reads it and as
// berth does, and compares the two: of the files docker compose accepts on
// their own, how many berth reads to the same containers, which it refuses
// and why. The figures are the golden file testdata/corpus.golden.txt (go
// test -run TestCorpus -update); docs/compose.md quotes them.
func TestCorpus(t *testing.T) {
	root, err := filepath.Abs("testdata/corpus")
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && composeName.MatchString(d.Name()) {
			files = append(files, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	var (
		rejected, same, refusedN int
		differ                   []string
		reasons                  = map[string]int{}
		refusedFiles             []string
		rejects                  []string
	)
	for _, f := range files {
		rel, _ := filepath.Rel(root, f)
		dir := stage(t, f)
		file := filepath.Join(dir, filepath.Base(f))
		ref, err := reference(file)
		if err != nil {
			rejected++
			rejects = append(rejects, rel+": "+firstLine(err.Error()))
			continue
		}
		p, err := LoadProject(context.Background(), []string{file}, Options{Env: envMap(corpusEnv)})
		if err != nil {
			refusedN++
			refusedFiles = append(refusedFiles, rel)
			var r refusals
			if errors.As(err, &r) {
				seen := map[string]bool{}
				for _, x := range r {
					key := refusalKey(x.attr)
					if !seen[key] {
						reasons[key]++
						seen[key] = true
					}
				}
			} else {
				reasons["other: "+firstLine(err.Error())]++
			}
			continue
		}
		if d := compareWithModel(ref, p.Spec); len(d) > 0 {
			differ = append(differ, rel+": "+strings.Join(d, "; "))
			continue
		}
		same++
	}
	accepted := len(files) - rejected
	var b strings.Builder
	fmt.Fprintf(&b, "Compose files: %d; docker compose's loader accepts %d on their own (the rest need variables or files the corpus lacks, or are fragments)\n", len(files), accepted)
	fmt.Fprintf(&b, "berth reads %d of %d (%.0f%%) to the same containers; refuses %d; reads %d differently\n", same, accepted, 100*float64(same)/float64(max(accepted, 1)), refusedN, len(differ))
	b.WriteString("\nrefused, by attribute (files):\n")
	keys := make([]string, 0, len(reasons))
	for k := range reasons {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if reasons[keys[i]] != reasons[keys[j]] {
			return reasons[keys[i]] > reasons[keys[j]]
		}
		return keys[i] < keys[j]
	})
	for _, k := range keys {
		fmt.Fprintf(&b, "  %3d %s\n", reasons[k], k)
	}
	b.WriteString("\nrefused files:\n")
	for _, f := range refusedFiles {
		fmt.Fprintf(&b, "  %s\n", f)
	}
	b.WriteString("\nrejected by docker compose's loader on their own:\n")
	for _, r := range rejects {
		fmt.Fprintf(&b, "  %s\n", r)
	}
	if len(differ) > 0 {
		b.WriteString("\nread differently:\n")
		for _, d := range differ {
			fmt.Fprintf(&b, "  %s\n", d)
		}
	}
	got := b.String()
	t.Log("\n" + got)
	golden := filepath.Join("testdata", "corpus.golden.txt")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -run TestCorpus -update)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("corpus report changed (-want +got; go test -run TestCorpus -update if on purpose):\n%s", diff)
	}
	if len(differ) > 0 {
		t.Errorf("%d files read differently from docker compose's model", len(differ))
	}
}

// corpusEnv is what a robot's shell has that the corpus's files require.
var corpusEnv = []string{"DISPLAY=:0", "SERIAL_PORT=/dev/ttyUSB0"}

func envMap(kv []string) map[string]string {
	m := map[string]string{}
	for _, e := range kv {
		k, v, _ := strings.Cut(e, "=")
		m[k] = v
	}
	return m
}

var composeName = regexp.MustCompile(`^(docker-)?compose[^/]*\.ya?ml$`)

// stage copies the file's directory (its Compose and .env files) to a
// temporary one and makes the env_file files it names, empty, where the
// corpus lacks them: the corpus keeps no other files.
func stage(t *testing.T, file string) string {
	dir := t.TempDir()
	src := filepath.Dir(file)
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Type().IsRegular() {
			b, err := os.ReadFile(filepath.Join(src, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	po, err := referenceOptions(filepath.Join(dir, filepath.Base(file)), func(o *loader.Options) {
		o.SkipResolveEnvironment, o.SkipValidation, o.SkipConsistencyCheck = true, true, true
	})
	if err != nil {
		return dir
	}
	p, err := po.LoadProject(context.Background())
	if err != nil {
		return dir
	}
	for _, s := range p.Services {
		for _, ef := range s.EnvFiles {
			path := ef.Path
			if !filepath.IsAbs(path) {
				path = filepath.Join(dir, path)
			}
			if strings.HasPrefix(path, dir) {
				if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
					_ = os.MkdirAll(filepath.Dir(path), 0o755)
					_ = os.WriteFile(path, nil, 0o644)
				}
			}
		}
	}
	return dir
}

func referenceOptions(file string, load ...func(*loader.Options)) (*cli.ProjectOptions, error) {
	return cli.NewProjectOptions([]string{file},
		cli.WithEnv(corpusEnv), cli.WithEnvFiles(), cli.WithDotEnv, cli.WithDefaultProfiles(), cli.WithLoadOptions(load...))
}

// reference is the project as docker compose loads it.
func reference(file string) (*types.Project, error) {
	po, err := referenceOptions(file)
	if err != nil {
		return nil, err
	}
	return po.LoadProject(context.Background())
}

func refusalKey(attr string) string {
	parts := strings.Split(attr, ".")
	if len(parts) >= 3 && parts[0] == "services" {
		parts = append([]string{"services.*"}, parts[2:]...)
	}
	if len(parts) >= 2 && (parts[0] == "networks" || parts[0] == "volumes" || parts[0] == "secrets" || parts[0] == "configs") {
		parts = append([]string{parts[0] + ".*"}, parts[2:]...)
	}
	for i, p := range parts {
		if i > 0 && parts[i-1] == "networks" && p != "[]" {
			parts[i] = "*"
		}
	}
	return strings.Join(parts, ".")
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return regexp.MustCompile(`/tmp/\S+/`).ReplaceAllString(s, "")
}

// compareWithModel lists where berth's spec of a service differs from the
// loader's model in what the container runs.
func compareWithModel(p *types.Project, spec *release.Spec) []string {
	var out []string
	diff := func(svc, what string, want, got any) {
		if d := cmp.Diff(want, got); d != "" {
			out = append(out, fmt.Sprintf("%s.%s: %s", svc, what, strings.Join(strings.Fields(d), " ")))
		}
	}
	if len(p.Services) != len(spec.Services) {
		out = append(out, fmt.Sprintf("%d services, want %d", len(spec.Services), len(p.Services)))
	}
	for name, s := range p.Services {
		b, ok := spec.Services[name]
		if !ok {
			out = append(out, name+": missing")
			continue
		}
		if s.Image != "" {
			diff(name, "image", s.Image, b.Image)
		}
		diff(name, "command", sliceOrNil([]string(s.Command)), b.Command)
		diff(name, "entrypoint", sliceOrNil([]string(s.Entrypoint)), b.Entrypoint)
		env := map[string]string{}
		for k, v := range s.Environment {
			if v != nil {
				env[k] = *v
			}
		}
		diff(name, "environment", mapOrNil(env), b.Environment)
		for _, kv := range []struct{ what, want, got string }{
			{"container_name", s.ContainerName, b.ContainerName}, {"ipc", s.Ipc, b.Ipc}, {"pid", s.Pid, b.Pid},
			{"network_mode", s.NetworkMode, b.NetworkMode}, {"runtime", s.Runtime, b.Runtime}, {"user", s.User, b.User},
			{"working_dir", s.WorkingDir, b.WorkingDir}, {"hostname", s.Hostname, b.Hostname}, {"platform", s.Platform, b.Platform},
		} {
			diff(name, kv.what, kv.want, kv.got)
		}
		if s.Restart != "" {
			diff(name, "restart", s.Restart, b.Restart)
		}
		diff(name, "tty", s.Tty, b.Tty)
		diff(name, "stdin_open", s.StdinOpen, b.StdinOpen)
		diff(name, "privileged", s.Privileged, b.Privileged)
		diff(name, "read_only", s.ReadOnly, b.ReadOnly)
		var ports []string
		for _, p := range s.Ports {
			ports = append(ports, fmt.Sprintf("%s:%s:%d/%s", p.HostIP, p.Published, p.Target, p.Protocol))
		}
		var bports []string
		for _, p := range b.Ports {
			bports = append(bports, fmt.Sprintf("%s:%s:%d/%s", p.HostIP, p.Published, p.Target, p.Protocol))
		}
		diff(name, "ports", ports, bports)
		var mounts, bmounts []string
		for _, v := range s.Volumes {
			mounts = append(mounts, fmt.Sprintf("%s:%s:%s:%v", v.Type, v.Source, v.Target, v.ReadOnly))
		}
		for _, m := range b.Mounts {
			bmounts = append(bmounts, fmt.Sprintf("%s:%s:%s:%v", m.Type, m.Source, m.Target, m.ReadOnly))
		}
		diff(name, "volumes", mounts, bmounts)
		var devs, bdevs []string
		for _, d := range s.Devices {
			devs = append(devs, d.Source+":"+d.Target)
		}
		for _, d := range b.Devices {
			bdevs = append(bdevs, d.Source+":"+d.Target)
		}
		diff(name, "devices", devs, bdevs)
		diff(name, "cap_add", sliceOrNil(s.CapAdd), b.CapAdd)
		diff(name, "labels", mapOrNil(map[string]string(s.Labels)), b.Labels)
		var deps, bdeps []string
		for d := range s.DependsOn {
			deps = append(deps, d)
		}
		for d := range b.DependsOn {
			bdeps = append(bdeps, d)
		}
		slices.Sort(deps)
		slices.Sort(bdeps)
		diff(name, "depends_on", deps, bdeps)
		var secrets, bsecrets []string
		for _, r := range s.Secrets {
			target := r.Target
			if target == "" {
				target = r.Source
			}
			if !strings.HasPrefix(target, "/") {
				target = "/run/secrets/" + target
			}
			secrets = append(secrets, r.Source+":"+target)
		}
		for _, r := range b.Secrets {
			bsecrets = append(bsecrets, r.Source+":"+r.Target)
		}
		diff(name, "secrets", secrets, bsecrets)
		mem := int64(s.MemLimit)
		if s.Deploy != nil && s.Deploy.Resources.Limits != nil && s.Deploy.Resources.Limits.MemoryBytes != 0 {
			mem = int64(s.Deploy.Resources.Limits.MemoryBytes)
		}
		var bmem int64
		if b.Resources != nil {
			bmem = b.Resources.Memory
		}
		diff(name, "memory", mem, bmem)
		if s.HealthCheck != nil {
			if b.Healthcheck == nil {
				out = append(out, name+".healthcheck: missing")
			} else {
				diff(name, "healthcheck.test", sliceOrNil([]string(s.HealthCheck.Test)), b.Healthcheck.Test)
			}
		}
	}
	return out
}

// TestCompareWithModelFinds: the comparison of TestCorpus sees a change.
func TestCompareWithModelFinds(t *testing.T) {
	file := filepath.Join("testdata", "full.yaml")
	ref, err := reference(file)
	if err != nil {
		t.Skipf("full.yaml needs its variables: %v", err)
	}
	_, spec, err := Load(context.Background(), []string{file}, Options{Env: map[string]string{}})
	if err != nil {
		t.Fatal(err)
	}
	if d := compareWithModel(ref, spec); len(d) > 0 {
		t.Fatalf("full.yaml differs: %v", d)
	}
	for name, s := range spec.Services {
		s.Environment = map[string]string{"X": "1"}
		s.Ports = nil
		spec.Services[name] = s
		break
	}
	if d := compareWithModel(ref, spec); len(d) == 0 {
		t.Error("a changed spec compares equal")
	}
}
