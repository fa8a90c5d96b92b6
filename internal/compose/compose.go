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
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/schema"
	"github.com/compose-spec/compose-go/v2/tree"
	"github.com/compose-spec/compose-go/v2/types"
)

// Options steer Load. They are docker compose's project options.
type Options struct {
	// ProjectName is -p/--project-name; default: COMPOSE_PROJECT_NAME, the
	// files' name:, else the project directory's name, normalized.
	ProjectName string
	// WorkingDir is --project-directory; default: the first file's directory
	// (with no file given: the current directory).
	WorkingDir string
	// EnvFiles are --env-file; default: .env in the project directory, if any.
	EnvFiles []string
	// Env is the environment for ${VAR} substitution, env_file, COMPOSE_FILE,
	// COMPOSE_PROJECT_NAME and COMPOSE_PROFILES; nil means os.Environ().
	// Values of the env files fill in what it lacks.
	Env map[string]string
	// Profiles to enable; default: COMPOSE_PROFILES.
	Profiles []string
}

// Load reads the Compose files (later files override earlier ones, as docker
// compose does) and returns the app name and normalized spec. Every error
// about the files' content wraps release.ErrInvalid. With no files given it
// finds them as docker compose does: COMPOSE_FILE, else compose.yaml,
// compose.yml, docker-compose.yml or docker-compose.yaml (and its override
// file) in the project directory or the nearest parent that has one. A
// service with a build: section and no image gets the image
// "<app>-<service>"; LoadProject also returns the build sections.
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
	// Dir is the project directory (absolute); ComposeFiles the Compose
	// files read, in order (absolute).
	Dir          string
	ComposeFiles []string
	// Files are the sources of the runtime configs and secrets the
	// services use, by FileSource.Key.
	Files map[string]FileSource
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
	return load(ctx, files, opts)
}

// FileNames are the names docker compose looks for, in its order of
// preference, when no file is given.
var FileNames = cli.DefaultFileNames

// projectOptions are docker compose's project options, in the order its CLI
// applies them: the environment first, then the env files of the working
// directory, COMPOSE_FILE or the files found up the tree, the env files of
// the project directory those give, COMPOSE_PROFILES and the name.
func projectOptions(files []string, opts Options, load ...func(*loader.Options)) (*cli.ProjectOptions, error) {
	env := cli.WithOsEnv
	if opts.Env != nil {
		kv := make([]string, 0, len(opts.Env))
		for k, v := range opts.Env {
			kv = append(kv, k+"="+v)
		}
		env = cli.WithEnv(kv)
	}
	var abs []string
	for _, f := range files {
		a, err := filepath.Abs(f)
		if err != nil {
			return nil, fmt.Errorf("load compose %s: %w", f, err)
		}
		abs = append(abs, a)
	}
	name := opts.ProjectName
	if name != "" && name != loader.NormalizeProjectName(name) {
		return nil, fmt.Errorf("app name %q: use lower-case letters, digits, '-' and '_': %w", name, release.ErrInvalid)
	}
	po, err := cli.NewProjectOptions(abs,
		cli.WithWorkingDirectory(opts.WorkingDir),
		env,
		cli.WithEnvFiles(opts.EnvFiles...),
		cli.WithDotEnv,
		cli.WithConfigFileEnv,
		cli.WithDefaultConfigPath,
		cli.WithEnvFiles(opts.EnvFiles...),
		cli.WithDotEnv,
		cli.WithDefaultProfiles(opts.Profiles...),
		cli.WithName(name),
		cli.WithLoadOptions(load...),
	)
	if err != nil {
		return nil, fmt.Errorf("load compose: %w: %w", err, release.ErrInvalid)
	}
	if len(po.ConfigPaths) == 0 {
		dir, _ := po.GetWorkingDir()
		return nil, fmt.Errorf("no Compose file in %s or any parent directory (looked for %s); give one with -f or COMPOSE_FILE: %w",
			dir, strings.Join(FileNames, ", "), release.ErrInvalid)
	}
	return po, nil
}

// ProjectName is the name docker compose would give the project of these
// files and options (-p, COMPOSE_PROJECT_NAME, name:, the directory), without
// checking what berth can run.
func ProjectName(ctx context.Context, files []string, opts Options) (string, error) {
	po, err := projectOptions(files, opts, func(o *loader.Options) {
		o.SkipValidation, o.SkipConsistencyCheck, o.SkipResolveEnvironment = true, true, true
	})
	if err != nil {
		return "", err
	}
	p, err := po.LoadProject(ctx)
	if err != nil {
		return "", fmt.Errorf("load compose: %w: %w", err, release.ErrInvalid)
	}
	return p.Name, nil
}

func load(ctx context.Context, files []string, opts Options) (*Project, error) {
	var findings []loader.UnsupportedAttribute
	po, err := projectOptions(files, opts,
		loader.WithSupportedAttributes(supported(), func(f []loader.UnsupportedAttribute) { findings = f }))
	if err != nil {
		return nil, err
	}
	srcs := make([]source, 0, len(po.ConfigPaths))
	cwd, _ := os.Getwd()
	for _, f := range po.ConfigPaths {
		name := f
		if r, err := filepath.Rel(cwd, f); err == nil && !strings.HasPrefix(r, "..") {
			name = r
		}
		b, err := os.ReadFile(f)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("load compose: %w", err)
			}
			return nil, fmt.Errorf("load compose: %w: %w", err, release.ErrInvalid)
		}
		srcs = append(srcs, source{name: name, abs: f, content: b})
	}
	project, err := po.LoadProject(ctx)
	if ctx.Err() != nil {
		return nil, fmt.Errorf("load compose: %w", ctx.Err())
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
		} else if lerr := placeByValue(err, srcs, po.Environment); lerr != nil {
			err = lerr
		} else {
			err = fmt.Errorf("load compose: %w: %w", err, release.ErrInvalid)
		}
		return nil, errors.Join(refused.err(), err)
	}
	if !release.ValidName(project.Name) {
		return nil, fmt.Errorf("app name %q: use lower-case letters, digits, '-' and '_', or set name: in the file: %w", project.Name, release.ErrInvalid)
	}

	spec := &release.Spec{
		Services: make(map[string]release.Service, len(project.Services)),
		Networks: make(map[string]release.Network, len(project.Networks)),
		Volumes:  make(map[string]release.Volume, len(project.Volumes)),
	}
	builds := map[string]Build{}
	fileSrcs := map[string]FileSource{}
	for name, s := range project.Services {
		svc := service(name, s, srcs, &refused)
		var cfgs []types.FileReferenceConfig
		for _, c := range s.Configs {
			cfgs = append(cfgs, types.FileReferenceConfig(c))
		}
		var secs []types.FileReferenceConfig
		for _, c := range s.Secrets {
			secs = append(secs, types.FileReferenceConfig(c))
		}
		svc.Configs = fileRefs(project, name, release.KindConfig, cfgs, fileSrcs, srcs, &refused)
		svc.Secrets = fileRefs(project, name, release.KindSecret, secs, fileSrcs, srcs, &refused)
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
		spec.Networks[name] = network(name, n, explicit(name, n.Name, bool(n.External)), srcs, &refused)
	}
	for name, v := range project.Volumes {
		spec.Volumes[name] = release.Volume{
			Driver: v.Driver, External: bool(v.External), Name: explicit(name, v.Name, bool(v.External)),
			Labels: mapOrNil(v.Labels), DriverOpts: mapOrNil(v.DriverOpts),
		}
	}
	if len(refused) > 0 {
		return nil, refused.err()
	}
	spec.Services, spec.Networks, spec.Volumes = mapOrNil(spec.Services), mapOrNil(spec.Networks), mapOrNil(spec.Volumes)
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	return &Project{App: project.Name, Spec: spec, Builds: mapOrNil(builds), Dir: project.WorkingDir, ComposeFiles: po.ConfigPaths, Files: mapOrNil(fileSrcs)}, nil
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
	for _, ns := range []struct{ attr, v string }{{"network_mode", s.NetworkMode}, {"ipc", s.Ipc}, {"pid", s.Pid}} {
		if strings.HasPrefix(ns.v, "container:") {
			refused.add(srcs, at(ns.attr), "", fmt.Sprintf("%q: a container outside the app may be gone at the next switch; use service:NAME for one of the app's services, or host", ns.v))
		}
	}
	switch {
	case s.NetworkMode == "", s.NetworkMode == "host", s.NetworkMode == "none", strings.HasPrefix(s.NetworkMode, "service:"), strings.HasPrefix(s.NetworkMode, "container:"):
	default:
		refused.add(srcs, at("network_mode"), "", fmt.Sprintf("%q: use host, none or service:NAME, or attach the service to networks:", s.NetworkMode))
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
		case v.Type == types.VolumeTypeBind && !filepath.IsAbs(v.Source):
			refused.add(srcs, at("volumes", "[]", "source"), v.Target, fmt.Sprintf("bind source %q is not an absolute path", v.Source))
		case v.Bind != nil && !bool(v.Bind.CreateHostPath):
			refused.add(srcs, at("volumes", "[]", "bind", "create_host_path"), v.Target, "berth always creates a missing bind source; remove it")
		}
		m := release.Mount{Type: v.Type, Source: v.Source, Target: v.Target, ReadOnly: v.ReadOnly}
		if v.Volume != nil {
			m.NoCopy, m.Subpath = v.Volume.NoCopy, v.Volume.Subpath
		}
		if v.Bind != nil {
			m.Propagation, m.Selinux = v.Bind.Propagation, v.Bind.SELinux
		}
		if v.Tmpfs != nil {
			m.TmpfsSize, m.TmpfsMode = int64(v.Tmpfs.Size), v.Tmpfs.Mode
		}
		out.Mounts = append(out.Mounts, m)
	}
	for n, c := range s.Networks {
		var ref release.NetworkRef
		if c != nil {
			ref = release.NetworkRef{
				Aliases: sliceOrNil(c.Aliases), IPv4Address: c.Ipv4Address, IPv6Address: c.Ipv6Address,
				MacAddress: c.MacAddress, LinkLocalIPs: sliceOrNil(c.LinkLocalIPs), DriverOpts: mapOrNil(c.DriverOpts),
				Priority: c.Priority,
			}
		}
		out.Networks = setKey(out.Networks, n, ref)
	}
	for n, d := range s.DependsOn {
		out.DependsOn = setKey(out.DependsOn, n, release.Dependency{Condition: d.Condition, Required: d.Required, Restart: d.Restart})
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
	} else if s.LogDriver != "" || len(s.LogOpt) > 0 { // the legacy log_driver, log_opt
		out.Logging = &release.Logging{Driver: s.LogDriver, Options: mapOrNil(s.LogOpt)}
	}
	hostSettings(name, s, &out, srcs, refused)
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
		"ports.[].target", "ports.[].published", "ports.[].host_ip", "ports.[].protocol", "ports.[].mode", "ports.[].name", "ports.[].app_protocol",
		"expose", "volumes.[].type", "volumes.[].source", "volumes.[].target", "volumes.[].read_only",
		"volumes.[].bind.create_host_path", "volumes.[].bind.propagation", "volumes.[].bind.selinux",
		"volumes.[].volume.nocopy", "volumes.[].volume.subpath", "volumes.[].tmpfs.size", "volumes.[].tmpfs.mode",
		"volumes.[].consistency", "tmpfs",
		"networks.*.aliases", "networks.*.ipv4_address", "networks.*.ipv6_address", "networks.*.mac_address",
		"networks.*.link_local_ips", "networks.*.driver_opts", "networks.*.priority",
		"network_mode", "depends_on.*.condition", "depends_on.*.required", "depends_on.*.restart", "healthcheck", "restart",
		"labels", "user", "working_dir", "privileged", "devices", "cap_add", "cap_drop", "extra_hosts",
		"stop_signal", "stop_grace_period", "logging", "log_driver", "log_opt", "ulimits", "shm_size", "init", "hostname",
		"container_name", "ipc", "pid", "uts", "userns_mode", "cgroup", "cgroup_parent", "runtime", "platform",
		"tty", "stdin_open", "read_only", "group_add", "device_cgroup_rules", "security_opt", "sysctls",
		"dns", "dns_search", "dns_opt", "domainname", "mac_address", "annotations", "storage_opt", "oom_score_adj",
		"pull_policy", "mem_limit", "memswap_limit", "mem_reservation", "mem_swappiness", "cpus", "cpu_shares",
		"cpu_period", "cpu_quota", "cpu_rt_period", "cpu_rt_runtime", "cpuset", "pids_limit", "oom_kill_disable",
		"blkio_config.weight", "gpus", "scale",
		"deploy.mode", "deploy.replicas", "deploy.resources.limits.cpus", "deploy.resources.limits.memory",
		"deploy.resources.limits.pids", "deploy.resources.reservations.memory", "deploy.resources.reservations.devices",
		"deploy.restart_policy.condition", "deploy.restart_policy.max_attempts",
		"secrets", "configs",
		// docker compose up ignores these too: they steer its output and compose watch
		"attach", "develop",
	}
	prefixes := []string{"name", "version"}
	for _, a := range svc {
		prefixes = append(prefixes, "services.*."+a)
	}
	for _, a := range []string{"driver", "external", "name", "labels", "driver_opts"} {
		prefixes = append(prefixes, "networks.*."+a, "volumes.*."+a)
	}
	prefixes = append(prefixes, "networks.*.internal", "networks.*.ipam", "networks.*.enable_ipv6",
		"networks.*.enable_ipv4", "networks.*.attachable")
	for _, a := range []string{"context", "dockerfile", "args", "target", "labels", "platforms", "secrets"} {
		prefixes = append(prefixes, "services.*.build."+a)
	}
	// top-level secrets serve builds and services; configs serve services
	prefixes = append(prefixes, "secrets.*.file", "secrets.*.environment", "secrets.*.name", "secrets.*.external",
		"configs.*.file", "configs.*.environment", "configs.*.content", "configs.*.name", "configs.*.external")

	// the loader writes short syntax mounts with an empty volume: or tmpfs:
	// mapping; what goes inside them is refused
	out := []tree.Path{"services.*.volumes.[].volume", "services.*.volumes.[].tmpfs", "services.*.volumes.[].bind"}
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
	sub := ""
	if len(parts) >= 4 {
		sub = parts[3]
	}
	switch attr {
	case "build":
		return "berth builds context, dockerfile, target, args, labels, platforms and secrets"
	case "deploy":
		switch sub {
		case "placement", "endpoint_mode", "update_config", "rollback_config", "labels":
			return "it steers a swarm's scheduler and has no meaning on one device; berth's switch is set with the label " + release.LabelStrategy + "; remove it"
		case "restart_policy":
			return "delay and window are swarm's; the engine restarts with its own back-off (use restart: or condition and max_attempts)"
		case "resources":
			return "a CPU reservation or generic resource has no meaning for one container; use cpus, cpu_shares or deploy.resources.limits"
		}
		return "berth applies deploy.resources, deploy.restart_policy and replicas: 1; the rest is swarm's"
	case "cpu_count", "cpu_percent", "credential_spec", "isolation":
		return "Windows containers only"
	case "extends", "include":
		return "a remote file: copy it next to the Compose file"
	case "secrets", "configs":
		return "berth takes a config's or secret's value from a file:, an environment: variable or (a config) content:"
	case "links", "external_links":
		return "services reach each other by name on a shared network; use networks.<name>.aliases for another name"
	case "volumes_from":
		return "declare a named volume and mount it in both services"
	case "use_api_socket":
		return "bind-mount /var/run/docker.sock with volumes: if the service needs the engine"
	case "blkio_config":
		return "berth applies blkio_config.weight"
	case "networks":
		return "gw_priority and interface_name need Docker Engine 28"
	}
	return ""
}
