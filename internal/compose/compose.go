// Package compose loads Compose files into berth's release.Spec.
//
// It uses the Compose Specification's own loader (compose-go), so merging of
// several files, ${VAR} substitution, env_file, profiles and the schema are
// exactly those of docker compose. Berth runs a subset of Compose: every
// attribute outside that subset is refused by name, with the file and line it
// appears on, never silently ignored. Extension keys (x-*) are allowed and
// ignored.
//
// Normalization: empty maps and lists become nil; environment variables
// declared without a value and not set in the environment are dropped (the
// container does not see them, as with docker compose); extra_hosts become
// sorted "host:ip" entries; networks and volumes without an explicit name get
// docker compose's "<app>_<key>" name, so data moves over from docker compose.
package compose

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/schema"
	"github.com/compose-spec/compose-go/v2/tree"
	"github.com/compose-spec/compose-go/v2/types"
)

// Options steer Load.
type Options struct {
	ProjectName string            // app name; default: compose `name:` or the directory name, normalized
	WorkingDir  string            // default: directory of the first file
	Env         map[string]string // variables for ${VAR} substitution and env_file; nil means os.Environ()
	Profiles    []string
}

// Load reads the Compose files (later files override earlier ones, as docker
// compose does) and returns the app name and normalized spec. Every error
// about the files' content wraps release.ErrInvalid. A service with a build:
// section and no image gets the image "<app>-<service>"; LoadProject also
// returns the build sections.
func Load(ctx context.Context, files []string, opts Options) (app string, spec *release.Spec, err error) {
	p, err := LoadProject(ctx, files, opts)
	if err != nil {
		return "", nil, err
	}
	return p.App, p.Spec, nil
}

// Project is a loaded Compose file: the app, its normalized spec and the
// services' build: sections.
type Project struct {
	App    string
	Spec   *release.Spec
	Builds map[string]Build // by service; nil when no service has build:
}

// Build is a service's build: section, as berth builds it.
type Build struct {
	Context    string            // absolute directory
	Dockerfile string            // relative to Context, or absolute; default Dockerfile
	Target     string            // multi-stage target; "" is the last stage
	Args       map[string]string // build args (set ones only)
	Labels     map[string]string
	Platforms  []string // from the file; the robot's platform is chosen among them
	Secrets    []Secret
	Image      string // the service's image: name, "" when the file sets none
}

// Secret is a build secret: a file or an environment variable of the
// machine that builds, never part of the image.
type Secret struct {
	ID   string // what the Dockerfile names (RUN --mount=type=secret,id=…)
	File string // absolute path, or ""
	Env  string // environment variable, or ""
}

// LoadProject is Load that also returns the services' build: sections.
func LoadProject(ctx context.Context, files []string, opts Options) (*Project, error) {
	app, spec, builds, err := load(ctx, files, opts)
	if err != nil {
		return nil, err
	}
	return &Project{App: app, Spec: spec, Builds: builds}, nil
}

func load(ctx context.Context, files []string, opts Options) (app string, spec *release.Spec, builds map[string]Build, err error) {
	if len(files) == 0 {
		return "", nil, nil, fmt.Errorf("load compose: no file given: %w", release.ErrInvalid)
	}
	srcs := make([]source, len(files))
	details := types.ConfigDetails{WorkingDir: opts.WorkingDir, Environment: environment(opts.Env)}
	for i, f := range files {
		abs, err := filepath.Abs(f)
		if err != nil {
			return "", nil, nil, fmt.Errorf("load compose %s: %w", f, err)
		}
		b, err := os.ReadFile(abs)
		if err != nil {
			return "", nil, nil, fmt.Errorf("load compose: %w", err)
		}
		srcs[i] = source{name: f, abs: abs, content: b}
		details.ConfigFiles = append(details.ConfigFiles, types.ConfigFile{Filename: abs, Content: b})
	}
	if details.WorkingDir == "" {
		details.WorkingDir = filepath.Dir(details.ConfigFiles[0].Filename)
	} else if details.WorkingDir, err = filepath.Abs(details.WorkingDir); err != nil {
		return "", nil, nil, fmt.Errorf("load compose: working directory: %w", err)
	}

	var findings []loader.UnsupportedAttribute
	project, err := loader.LoadWithContext(ctx, details,
		func(o *loader.Options) {
			if opts.ProjectName != "" {
				o.SetProjectName(opts.ProjectName, true)
			} else {
				o.SetProjectName(loader.NormalizeProjectName(filepath.Base(details.WorkingDir)), false)
			}
			o.SkipExtends = true // left in the model, so they are refused by name
			o.SkipInclude = true
		},
		loader.WithProfiles(opts.Profiles),
		loader.WithSupportedAttributes(supported(), func(f []loader.UnsupportedAttribute) { findings = f }),
	)
	if ctx.Err() != nil {
		return "", nil, nil, fmt.Errorf("load compose: %w", ctx.Err())
	}
	var refused refusals
	for _, f := range findings {
		if project != nil && isDisabled(project, f.Path) {
			continue // a service outside the active profiles is dropped, as docker compose does
		}
		var parts []string
		for _, p := range f.Path.Parts() {
			parts = append(parts, tree.Path(p).String()) // a key holding dots
		}
		refused.add(srcs, parts, "", hintFor(f.Path))
	}
	if err != nil {
		if lerr := withLine(err, srcs); lerr != nil {
			err = lerr
		} else {
			err = fmt.Errorf("load compose: %w: %w", err, release.ErrInvalid)
		}
		return "", nil, nil, errors.Join(refused.err(), err)
	}
	if !release.ValidName(project.Name) {
		return "", nil, nil, fmt.Errorf("app name %q: use lower-case letters, digits, '-' and '_', or set name: in the file: %w", project.Name, release.ErrInvalid)
	}

	spec = &release.Spec{
		Services: make(map[string]release.Service, len(project.Services)),
		Networks: make(map[string]release.Network, len(project.Networks)),
		Volumes:  make(map[string]release.Volume, len(project.Volumes)),
	}
	builds = map[string]Build{}
	for name, s := range project.Services {
		svc := service(name, s, srcs, &refused)
		if s.Build != nil {
			b := buildOf(name, s, project, srcs, &refused)
			if svc.Image == "" {
				svc.Image = project.Name + "-" + name
			}
			builds[name] = b
		}
		spec.Services[name] = svc
	}
	// compose-go names every network and volume <app>_<key>. berth keeps only
	// names the file sets: the agent prefixes its own instance name, so that
	// two agents on one engine never share a volume.
	explicit := func(key, name string, external bool) string {
		if !external && name == project.Name+"_"+key {
			return ""
		}
		return name
	}
	for name, n := range project.Networks {
		spec.Networks[name] = release.Network{
			Driver: n.Driver, External: bool(n.External), Name: explicit(name, n.Name, bool(n.External)), Internal: n.Internal,
			Labels: mapOrNil(n.Labels), DriverOpts: mapOrNil(n.DriverOpts),
		}
	}
	for name, v := range project.Volumes {
		spec.Volumes[name] = release.Volume{
			Driver: v.Driver, External: bool(v.External), Name: explicit(name, v.Name, bool(v.External)),
			Labels: mapOrNil(v.Labels), DriverOpts: mapOrNil(v.DriverOpts),
		}
	}
	if len(refused) > 0 {
		return "", nil, nil, refused.err()
	}
	spec.Services, spec.Networks, spec.Volumes = mapOrNil(spec.Services), mapOrNil(spec.Networks), mapOrNil(spec.Volumes)
	if err := spec.Validate(); err != nil {
		return "", nil, nil, err
	}
	return project.Name, spec, mapOrNil(builds), nil
}

// environment copies env (the loader writes into it) or reads os.Environ.
func environment(env map[string]string) map[string]string {
	if env != nil {
		m := make(map[string]string, len(env))
		for k, v := range env {
			m[k] = v
		}
		return m
	}
	m := map[string]string{}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

// service maps one Compose service, refusing the values berth cannot run.
func service(name string, s types.ServiceConfig, srcs []source, refused *refusals) release.Service {
	at := func(attr ...string) []string { return append([]string{"services", name}, attr...) }
	out := release.Service{
		Image:       s.Image,
		Command:     sliceOrNil(s.Command),
		Entrypoint:  sliceOrNil(s.Entrypoint),
		Expose:      sliceOrNil(s.Expose),
		Tmpfs:       sliceOrNil(s.Tmpfs),
		NetworkMode: s.NetworkMode,
		Restart:     s.Restart,
		Labels:      mapOrNil(s.Labels),
		User:        s.User,
		WorkingDir:  s.WorkingDir,
		Privileged:  s.Privileged,
		CapAdd:      sliceOrNil(s.CapAdd),
		CapDrop:     sliceOrNil(s.CapDrop),
		ExtraHosts:  sliceOrNil(s.ExtraHosts.AsList(":")),
		StopSignal:  s.StopSignal,
		ShmSize:     int64(s.ShmSize),
		Init:        s.Init,
		Hostname:    s.Hostname,
	}
	slices.Sort(out.ExtraHosts)
	switch {
	case s.NetworkMode == "", s.NetworkMode == "host", s.NetworkMode == "none":
	default:
		refused.add(srcs, at("network_mode"), "", fmt.Sprintf("%q: use host or none, or attach the service to networks:", s.NetworkMode))
	}
	for k, v := range s.Environment {
		if v != nil {
			out.Environment = setKey(out.Environment, k, *v)
		}
	}
	for _, p := range s.Ports {
		if p.Mode != "" && p.Mode != "ingress" {
			refused.add(srcs, at("ports", "[]", "mode"), fmt.Sprint(p.Target), fmt.Sprintf("mode %q is for swarm; remove it", p.Mode))
		}
		out.Ports = append(out.Ports, release.Port{Target: p.Target, Published: p.Published, HostIP: p.HostIP, Protocol: p.Protocol})
	}
	for _, v := range s.Volumes {
		switch {
		case v.Type != types.VolumeTypeVolume && v.Type != types.VolumeTypeBind && v.Type != types.VolumeTypeTmpfs:
			refused.add(srcs, at("volumes", "[]", "type"), v.Target, fmt.Sprintf("type %q: use volume, bind or tmpfs", v.Type))
		case v.Type == types.VolumeTypeVolume && v.Source == "":
			refused.add(srcs, at("volumes", "[]"), v.Target, fmt.Sprintf("anonymous volume at %s: name it and declare it under the top-level volumes:", v.Target))
		case v.Type == types.VolumeTypeBind && !filepath.IsAbs(v.Source):
			refused.add(srcs, at("volumes", "[]", "source"), v.Target, fmt.Sprintf("bind source %q is not an absolute path", v.Source))
		case v.Bind != nil && !bool(v.Bind.CreateHostPath):
			refused.add(srcs, at("volumes", "[]", "bind", "create_host_path"), v.Target, "berth always creates a missing bind source; remove it")
		}
		out.Mounts = append(out.Mounts, release.Mount{Type: v.Type, Source: v.Source, Target: v.Target, ReadOnly: v.ReadOnly})
	}
	for n, c := range s.Networks {
		var ref release.NetworkRef
		if c != nil {
			ref = release.NetworkRef{Aliases: sliceOrNil(c.Aliases)}
		}
		out.Networks = setKey(out.Networks, n, ref)
	}
	for n, d := range s.DependsOn {
		out.DependsOn = setKey(out.DependsOn, n, release.Dependency{Condition: d.Condition, Required: d.Required})
	}
	if h := s.HealthCheck; h != nil {
		out.Healthcheck = &release.Healthcheck{
			Test: sliceOrNil(h.Test), Interval: duration(h.Interval), Timeout: duration(h.Timeout),
			StartPeriod: duration(h.StartPeriod), StartInterval: duration(h.StartInterval),
			Retries: h.Retries, Disable: h.Disable,
		}
	}
	for _, d := range s.Devices {
		out.Devices = append(out.Devices, release.Device{Source: d.Source, Target: d.Target, Permissions: d.Permissions})
	}
	out.StopGracePeriod = duration(s.StopGracePeriod)
	if l := s.Logging; l != nil && (l.Driver != "" || len(l.Options) > 0) {
		out.Logging = &release.Logging{Driver: l.Driver, Options: mapOrNil(l.Options)}
	}
	for n, u := range s.Ulimits {
		if u != nil {
			out.Ulimits = setKey(out.Ulimits, n, release.Ulimit{Single: u.Single, Soft: u.Soft, Hard: u.Hard})
		}
	}
	return out
}

func duration(d *types.Duration) *release.Duration {
	if d == nil {
		return nil
	}
	r := release.Duration(*d)
	return &r
}

func setKey[K comparable, V any](m map[K]V, k K, v V) map[K]V {
	if m == nil {
		m = map[K]V{}
	}
	m[k] = v
	return m
}

func mapOrNil[M ~map[K]V, K comparable, V any](m M) map[K]V {
	if len(m) == 0 {
		return nil
	}
	return m
}

func sliceOrNil[S ~[]E, E any](s S) []E {
	if len(s) == 0 {
		return nil
	}
	return s
}

// isDisabled reports whether p lies inside a service outside the active profiles.
func isDisabled(p *types.Project, attr tree.Path) bool {
	parts := attr.Parts()
	if len(parts) < 2 || parts[0] != "services" {
		return false
	}
	_, ok := p.DisabledServices[parts[1]]
	return ok
}

// supported returns the attribute paths berth maps: those of the Compose
// Specification under one of these prefixes. Anything else in a file is
// reported by the loader and refused.
func supported() []tree.Path {
	svc := []string{
		"image", "command", "entrypoint", "environment", "env_file", "label_file", "profiles",
		"ports.[].target", "ports.[].published", "ports.[].host_ip", "ports.[].protocol", "ports.[].mode",
		"expose", "volumes.[].type", "volumes.[].source", "volumes.[].target", "volumes.[].read_only",
		"volumes.[].bind.create_host_path", "tmpfs", "networks.*.aliases",
		"network_mode", "depends_on.*.condition", "depends_on.*.required", "healthcheck", "restart",
		"labels", "user", "working_dir", "privileged", "devices", "cap_add", "cap_drop", "extra_hosts",
		"stop_signal", "stop_grace_period", "logging", "ulimits", "shm_size", "init", "hostname",
	}
	prefixes := []string{"name", "version"}
	for _, a := range svc {
		prefixes = append(prefixes, "services.*."+a)
	}
	for _, a := range []string{"driver", "external", "name", "labels", "driver_opts"} {
		prefixes = append(prefixes, "networks.*."+a, "volumes.*."+a)
	}
	prefixes = append(prefixes, "networks.*.internal")
	for _, a := range []string{"context", "dockerfile", "args", "target", "labels", "platforms", "secrets"} {
		prefixes = append(prefixes, "services.*.build."+a)
	}
	// top-level secrets serve builds only: a service's runtime secrets: stay refused
	prefixes = append(prefixes, "secrets.*.file", "secrets.*.environment")

	// the loader writes short syntax mounts with an empty volume: or tmpfs:
	// mapping; what goes inside them is refused
	out := []tree.Path{"services.*.volumes.[].volume", "services.*.volumes.[].tmpfs"}
	for _, p := range schema.AttributePaths() {
		for _, pre := range prefixes {
			if string(p) == pre || strings.HasPrefix(string(p), pre+".") {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

// hintFor says what to do instead of an unsupported attribute.
func hintFor(p tree.Path) string {
	parts := p.Parts()
	attr := parts[0]
	if attr == "services" && len(parts) >= 3 {
		attr = parts[2]
	}
	switch attr {
	case "build":
		return "berth builds context, dockerfile, target, args, labels, platforms and secrets"
	case "container_name":
		return "berth names containers itself; remove it"
	case "deploy":
		return "it configures swarm; remove it"
	case "scale":
		return "berth runs one container per service; remove it"
	case "extends", "include":
		return "pass the files to berth in order instead; later files override earlier ones"
	case "secrets", "configs":
		if parts[0] == "secrets" {
			return "a top-level secret is a file or an environment variable, for builds"
		}
		return "bind-mount the file with volumes: instead"
	case "links", "external_links":
		return "services reach each other by name on a shared network"
	}
	return ""
}
