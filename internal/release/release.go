// Package release is berth's shared vocabulary: apps, releases, the target
// and current state of a device, and the sentinel errors every layer agrees on.
// It is plain Go with no I/O, so the planner, the agent, the CLI and later the
// fleet server can all speak it without pulling in Docker, SQL or HTTP.
package release

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"
)

// Sentinel errors, checked with errors.Is. Callers wrap them with context.
var (
	ErrNotFound     = errors.New("not found")
	ErrConflict     = errors.New("conflict")
	ErrInvalid      = errors.New("invalid")
	ErrUnauthorized = errors.New("unauthorized")
	ErrNoSpace      = errors.New("not enough free space")
	ErrLocked       = errors.New("update lock held")
)

// Release is one immutable version of an app: the normalized Compose model
// with every image pinned. Its ID is the digest of its canonical JSON.
type Release struct {
	ID      string    `json:"id"`
	App     string    `json:"app"`
	Version string    `json:"version"`
	Created time.Time `json:"created"`
	Spec    Spec      `json:"spec"`
}

// Spec is the normalized Compose model berth runs.
type Spec struct {
	Services map[string]Service `json:"services"`
	Networks map[string]Network `json:"networks,omitempty"`
	Volumes  map[string]Volume  `json:"volumes,omitempty"`
}

// Update strategies, chosen per service with the label berth.update.strategy.
const (
	StrategyDownloadThenKill   = "download-then-kill"
	StrategyKillThenDownload   = "kill-then-download"
	StrategyDeleteThenDownload = "delete-then-download"
	StrategyHandOver           = "hand-over"
)

// Labels on a Compose service that steer berth.
const (
	LabelStrategy        = "berth.update.strategy"
	LabelHandoverTimeout = "berth.update.handover-timeout"
)

// Dependency conditions of depends_on.
const (
	ConditionStarted               = "service_started"
	ConditionHealthy               = "service_healthy"
	ConditionCompletedSuccessfully = "service_completed_successfully"
)

// Service is one Compose service, normalized.
type Service struct {
	Image string `json:"image"`
	// ImageID pins Image to the engine's image ID (sha256:…); set by the agent.
	ImageID         string                `json:"image_id,omitempty"`
	Command         []string              `json:"command,omitempty"`
	Entrypoint      []string              `json:"entrypoint,omitempty"`
	Environment     map[string]string     `json:"environment,omitempty"`
	Ports           []Port                `json:"ports,omitempty"`
	Expose          []string              `json:"expose,omitempty"`
	Mounts          []Mount               `json:"mounts,omitempty"`
	Tmpfs           []string              `json:"tmpfs,omitempty"`
	Networks        map[string]NetworkRef `json:"networks,omitempty"`
	NetworkMode     string                `json:"network_mode,omitempty"`
	DependsOn       map[string]Dependency `json:"depends_on,omitempty"`
	Healthcheck     *Healthcheck          `json:"healthcheck,omitempty"`
	Restart         string                `json:"restart,omitempty"`
	Labels          map[string]string     `json:"labels,omitempty"`
	User            string                `json:"user,omitempty"`
	WorkingDir      string                `json:"working_dir,omitempty"`
	Privileged      bool                  `json:"privileged,omitempty"`
	Devices         []Device              `json:"devices,omitempty"`
	CapAdd          []string              `json:"cap_add,omitempty"`
	CapDrop         []string              `json:"cap_drop,omitempty"`
	ExtraHosts      []string              `json:"extra_hosts,omitempty"`
	StopSignal      string                `json:"stop_signal,omitempty"`
	StopGracePeriod *Duration             `json:"stop_grace_period,omitempty"`
	Logging         *Logging              `json:"logging,omitempty"`
	Ulimits         map[string]Ulimit     `json:"ulimits,omitempty"`
	ShmSize         int64                 `json:"shm_size,omitempty"`
	Init            *bool                 `json:"init,omitempty"`
	Hostname        string                `json:"hostname,omitempty"`

	// Settings of one Docker host, as the Compose attributes of the same
	// names. New fields are omitempty, so the canonical JSON (and the ID) of
	// a release that does not use them stays what it was.
	ContainerName     string            `json:"container_name,omitempty"`
	Ipc               string            `json:"ipc,omitempty"`
	Pid               string            `json:"pid,omitempty"`
	Uts               string            `json:"uts,omitempty"`
	UsernsMode        string            `json:"userns_mode,omitempty"`
	Cgroup            string            `json:"cgroup,omitempty"`
	CgroupParent      string            `json:"cgroup_parent,omitempty"`
	Runtime           string            `json:"runtime,omitempty"`
	Platform          string            `json:"platform,omitempty"`
	Tty               bool              `json:"tty,omitempty"`
	StdinOpen         bool              `json:"stdin_open,omitempty"`
	ReadOnly          bool              `json:"read_only,omitempty"`
	GroupAdd          []string          `json:"group_add,omitempty"`
	DeviceCgroupRules []string          `json:"device_cgroup_rules,omitempty"`
	SecurityOpt       []string          `json:"security_opt,omitempty"`
	Sysctls           map[string]string `json:"sysctls,omitempty"`
	DNS               []string          `json:"dns,omitempty"`
	DNSSearch         []string          `json:"dns_search,omitempty"`
	DNSOpt            []string          `json:"dns_opt,omitempty"`
	Domainname        string            `json:"domainname,omitempty"`
	MacAddress        string            `json:"mac_address,omitempty"`
	Annotations       map[string]string `json:"annotations,omitempty"`
	StorageOpt        map[string]string `json:"storage_opt,omitempty"`
	OomScoreAdj       int64             `json:"oom_score_adj,omitempty"`
	// PullPolicy is when the agent pulls Image from its registry: always,
	// missing, never, build or daily/weekly/every_<duration> ("" is missing,
	// as docker compose: pulled only when the engine lacks it).
	PullPolicy string     `json:"pull_policy,omitempty"`
	Resources  *Resources `json:"resources,omitempty"`
	// Configs and Secrets are the runtime configs and secrets the container
	// sees as files. Their values are never part of a spec: each reference
	// carries the digest the agent keys with its own secret, so a new value
	// makes a new container of exactly the services that use it.
	Configs []FileRef `json:"configs,omitempty"`
	Secrets []FileRef `json:"secrets,omitempty"`
	// Follows holds the spec hashes of the services whose containers this
	// one's joins (network_mode, ipc or pid service:NAME) or restarts with
	// (depends_on restart: true), so that a new container of those makes a
	// new one of this service too. Set by Spec.Bind, not by the file.
	Follows map[string]string `json:"follows,omitempty"`
}

// Joins returns the service whose namespace a network_mode, ipc or pid value
// of "service:NAME" names, or "".
func Joins(v string) string {
	if n, ok := strings.CutPrefix(v, "service:"); ok {
		return n
	}
	return ""
}

// Bind sets each service's Follows from the spec hashes of the services it
// joins or restarts with, in depends_on order (a service's hash includes
// what it follows). Call it after the images are pinned.
func (s *Spec) Bind() error {
	order, err := s.Order()
	if err != nil {
		return err
	}
	for _, name := range order {
		svc := s.Services[name]
		svc.Follows = nil
		add := func(dep string) {
			if d, ok := s.Services[dep]; ok && dep != name {
				if svc.Follows == nil {
					svc.Follows = map[string]string{}
				}
				svc.Follows[dep] = d.Hash()
			}
		}
		for _, v := range []string{svc.NetworkMode, svc.Ipc, svc.Pid} {
			if dep := Joins(v); dep != "" {
				add(dep)
			}
		}
		for dep, d := range svc.DependsOn {
			if d.Restart {
				add(dep)
			}
		}
		s.Services[name] = svc
	}
	return nil
}

// FileRef mounts one of the app's configs or secrets into a container: the
// file Target (absolute), owned by UID:GID with Mode, read-only.
type FileRef struct {
	Source string `json:"source"`
	Target string `json:"target"`
	UID    string `json:"uid,omitempty"`
	GID    string `json:"gid,omitempty"`
	Mode   uint32 `json:"mode,omitempty"` // 0: 0444
	// Digest names the value: an HMAC the agent keys with a secret of its
	// own, so it tells nothing of the value. Set by the agent.
	Digest string `json:"digest,omitempty"`
}

// Kinds of FileRef.
const (
	KindConfig = "config"
	KindSecret = "secret"
)

// FileName is the file that holds the value of ref of kind (config or
// secret) in the app's files directory on the device, with ref's owner and
// mode: one file per value, owner and mode, so a container's mount never
// changes under it.
func (f FileRef) FileName(kind string) string {
	mode := f.Mode
	if mode == 0 {
		mode = 0o444
	}
	d := f.Digest
	if i := strings.LastIndexByte(d, ':'); i >= 0 {
		d = d[i+1:]
	}
	if len(d) > 24 {
		d = d[:24]
	}
	return fmt.Sprintf("%s-%s-%s-%s-%s-%o", kind, f.Source, d, orZero(f.UID), orZero(f.GID), mode)
}

func orZero(s string) string {
	if s == "" {
		return "0"
	}
	return s
}

// Pull policies of a service's image.
const (
	PullAlways  = "always"
	PullMissing = "missing"
	PullNever   = "never"
	PullBuild   = "build"
)

// Resources are a container's cgroup limits and reservations: mem_limit,
// cpus, … and deploy.resources (which docker compose applies without swarm).
type Resources struct {
	Memory             int64           `json:"memory,omitempty"`             // bytes: mem_limit, deploy…limits.memory
	MemorySwap         int64           `json:"memory_swap,omitempty"`        // memswap_limit; -1 unlimited
	MemoryReservation  int64           `json:"memory_reservation,omitempty"` // mem_reservation, deploy…reservations.memory
	MemorySwappiness   *int64          `json:"memory_swappiness,omitempty"`
	NanoCPUs           int64           `json:"nano_cpus,omitempty"` // cpus, deploy…limits.cpus, in 1e-9 CPUs
	CPUShares          int64           `json:"cpu_shares,omitempty"`
	CPUPeriod          int64           `json:"cpu_period,omitempty"`
	CPUQuota           int64           `json:"cpu_quota,omitempty"`
	CPURealtimePeriod  int64           `json:"cpu_rt_period,omitempty"`
	CPURealtimeRuntime int64           `json:"cpu_rt_runtime,omitempty"`
	CpusetCpus         string          `json:"cpuset,omitempty"`
	PidsLimit          int64           `json:"pids_limit,omitempty"` // pids_limit, deploy…limits.pids
	OomKillDisable     bool            `json:"oom_kill_disable,omitempty"`
	BlkioWeight        uint16          `json:"blkio_weight,omitempty"`
	Devices            []DeviceRequest `json:"devices,omitempty"` // gpus, deploy…reservations.devices
}

// DeviceRequest asks the engine for devices by driver and capability, such
// as GPUs (the engine's DeviceRequests).
type DeviceRequest struct {
	Driver       string            `json:"driver,omitempty"`
	Count        int64             `json:"count,omitempty"` // -1: all
	DeviceIDs    []string          `json:"device_ids,omitempty"`
	Capabilities []string          `json:"capabilities,omitempty"`
	Options      map[string]string `json:"options,omitempty"`
}

// NeedsGPU reports whether the service asks for an NVIDIA GPU: a device
// request with the gpu capability or the nvidia driver, or runtime nvidia.
func (s Service) NeedsGPU() bool {
	if s.Runtime == "nvidia" {
		return true
	}
	if s.Resources == nil {
		return false
	}
	for _, d := range s.Resources.Devices {
		if d.Driver == "nvidia" {
			return true
		}
		for _, c := range d.Capabilities {
			if c == "gpu" {
				return true
			}
		}
	}
	return false
}

// Port publishes a container port on the host.
type Port struct {
	Target    uint32 `json:"target"`
	Published string `json:"published,omitempty"`
	HostIP    string `json:"host_ip,omitempty"`
	Protocol  string `json:"protocol,omitempty"`
}

// Mount is a named volume, a bind mount or a tmpfs mount.
type Mount struct {
	Type     string `json:"type"` // volume | bind | tmpfs
	Source   string `json:"source,omitempty"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"read_only,omitempty"`
	// Options of the long syntax.
	NoCopy      bool   `json:"nocopy,omitempty"`      // volume: do not copy the image's files in
	Subpath     string `json:"subpath,omitempty"`     // volume: mount this path inside it
	Propagation string `json:"propagation,omitempty"` // bind
	Selinux     string `json:"selinux,omitempty"`     // bind: z or Z
	TmpfsSize   int64  `json:"tmpfs_size,omitempty"`  // tmpfs: bytes
	TmpfsMode   uint32 `json:"tmpfs_mode,omitempty"`  // tmpfs: file mode
}

// NetworkRef attaches a service to one of the app's networks.
type NetworkRef struct {
	Aliases      []string          `json:"aliases,omitempty"`
	IPv4Address  string            `json:"ipv4_address,omitempty"`
	IPv6Address  string            `json:"ipv6_address,omitempty"`
	MacAddress   string            `json:"mac_address,omitempty"`
	LinkLocalIPs []string          `json:"link_local_ips,omitempty"`
	DriverOpts   map[string]string `json:"driver_opts,omitempty"`
	Priority     int               `json:"priority,omitempty"` // connected in order of priority, highest first
}

// Dependency is one depends_on entry.
type Dependency struct {
	Condition string `json:"condition"`
	Required  bool   `json:"required"`
	// Restart: a new container of the dependency means a new one of this
	// service too (docker compose's depends_on restart: true).
	Restart bool `json:"restart,omitempty"`
}

// Healthcheck mirrors the Compose healthcheck.
type Healthcheck struct {
	Test          []string  `json:"test,omitempty"`
	Interval      *Duration `json:"interval,omitempty"`
	Timeout       *Duration `json:"timeout,omitempty"`
	StartPeriod   *Duration `json:"start_period,omitempty"`
	StartInterval *Duration `json:"start_interval,omitempty"`
	Retries       *uint64   `json:"retries,omitempty"`
	Disable       bool      `json:"disable,omitempty"`
}

// Device maps a host device into the container.
type Device struct {
	Source      string `json:"source"`
	Target      string `json:"target,omitempty"`
	Permissions string `json:"permissions,omitempty"`
}

// Logging is the container's log driver.
type Logging struct {
	Driver  string            `json:"driver,omitempty"`
	Options map[string]string `json:"options,omitempty"`
}

// Ulimit is one resource limit; Single is used when Soft and Hard are unset.
type Ulimit struct {
	Single int `json:"single,omitempty"`
	Soft   int `json:"soft,omitempty"`
	Hard   int `json:"hard,omitempty"`
}

// Network is one of the app's networks.
type Network struct {
	Driver     string            `json:"driver,omitempty"`
	External   bool              `json:"external,omitempty"`
	Name       string            `json:"name,omitempty"`
	Internal   bool              `json:"internal,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
	DriverOpts map[string]string `json:"driver_opts,omitempty"`
	EnableIPv6 *bool             `json:"enable_ipv6,omitempty"`
	Attachable bool              `json:"attachable,omitempty"`
	IPAM       *IPAM             `json:"ipam,omitempty"`
}

// IPAM is a network's address management: its driver and subnets.
type IPAM struct {
	Driver  string            `json:"driver,omitempty"`
	Config  []IPAMPool        `json:"config,omitempty"`
	Options map[string]string `json:"options,omitempty"`
}

// IPAMPool is one subnet of a network.
type IPAMPool struct {
	Subnet       string            `json:"subnet,omitempty"`
	Gateway      string            `json:"gateway,omitempty"`
	IPRange      string            `json:"ip_range,omitempty"`
	AuxAddresses map[string]string `json:"aux_addresses,omitempty"`
}

// Volume is one of the app's named volumes. Volumes outlive releases.
type Volume struct {
	Driver     string            `json:"driver,omitempty"`
	External   bool              `json:"external,omitempty"`
	Name       string            `json:"name,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
	DriverOpts map[string]string `json:"driver_opts,omitempty"`
}

// Duration is a time.Duration that reads and writes as a Go duration string.
type Duration time.Duration

// D returns the duration.
func (d *Duration) D() time.Duration {
	if d == nil {
		return 0
	}
	return time.Duration(*d)
}

// MarshalJSON writes "1m30s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads "1m30s" or a number of nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var n int64
		if err := json.Unmarshal(b, &n); err != nil {
			return fmt.Errorf("duration: want a string like \"30s\": %w", ErrInvalid)
		}
		*d = Duration(n)
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, ErrInvalid)
	}
	*d = Duration(v)
	return nil
}

func numericOrEmpty(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return len(s) <= 10
}

var containerNameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$`)

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// ValidName reports whether s can name an app, service, network or volume:
// lower-case letters, digits, '-' and '_', starting with a letter or digit.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// Strategy returns the service's update strategy (download-then-kill unless labelled).
func (s Service) Strategy() string {
	if v := s.Labels[LabelStrategy]; v != "" {
		return v
	}
	return StrategyDownloadThenKill
}

// HandoverTimeout returns the hand-over deadline (default 1 minute).
func (s Service) HandoverTimeout() time.Duration {
	if v := s.Labels[LabelHandoverTimeout]; v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
	}
	return time.Minute
}

// Hash is the digest of the service's canonical JSON: two services with the
// same hash run the same container.
func (s Service) Hash() string { return digestJSON(s) }

// HandoverFile is the readiness file a hand-over service's new container
// creates once it may take over, relative to the app's lock directory
// (/run/berth inside the container; its full path is in the container's
// BERTH_HANDOVER_FILE). It names the spec, so the old container, which sees
// the same directory, cannot signal for the new one.
func HandoverFile(service, specHash string) string {
	return "handover-" + service + "-" + ShortID(specHash)
}

// Validate checks the release's structure. It does not touch any engine.
func (r *Release) Validate() error {
	if !ValidName(r.App) {
		return fmt.Errorf("app name %q: use lower-case letters, digits, '-' and '_': %w", r.App, ErrInvalid)
	}
	return r.Spec.Validate()
}

// Validate checks names, references between services and strategy labels.
func (s *Spec) Validate() error {
	if len(s.Services) == 0 {
		return fmt.Errorf("no services: %w", ErrInvalid)
	}
	for name, svc := range s.Services {
		if !ValidName(name) {
			return fmt.Errorf("service name %q: use lower-case letters, digits, '-' and '_': %w", name, ErrInvalid)
		}
		if svc.Image == "" {
			return fmt.Errorf("service %s: no image: %w", name, ErrInvalid)
		}
		switch svc.Strategy() {
		case StrategyDownloadThenKill, StrategyKillThenDownload, StrategyDeleteThenDownload, StrategyHandOver:
		default:
			return fmt.Errorf("service %s: label %s=%q: want one of %s, %s, %s, %s: %w", name, LabelStrategy, svc.Strategy(),
				StrategyDownloadThenKill, StrategyKillThenDownload, StrategyDeleteThenDownload, StrategyHandOver, ErrInvalid)
		}
		if v := svc.Labels[LabelHandoverTimeout]; v != "" {
			if d, err := time.ParseDuration(v); err != nil || d <= 0 {
				return fmt.Errorf("service %s: label %s=%q: want a duration like 30s: %w", name, LabelHandoverTimeout, v, ErrInvalid)
			}
		}
		for dep, d := range svc.DependsOn {
			if _, ok := s.Services[dep]; !ok {
				if !d.Required {
					continue
				}
				return fmt.Errorf("service %s depends on %s, which is not in the file: %w", name, dep, ErrInvalid)
			}
			switch d.Condition {
			case ConditionStarted, ConditionHealthy, ConditionCompletedSuccessfully:
			default:
				return fmt.Errorf("service %s: depends_on %s: condition %q: %w", name, dep, d.Condition, ErrInvalid)
			}
			// service_healthy on a service without a healthcheck in the file is
			// fine: its image may have one. The agent refuses it at run time if not.
			if d.Condition == ConditionHealthy {
				if hc := s.Services[dep].Healthcheck; hc != nil && hc.Disable {
					return fmt.Errorf("service %s waits for %s to be healthy, but %s disables its healthcheck: %w", name, dep, dep, ErrInvalid)
				}
			}
		}
		for kind, refs := range map[string][]FileRef{KindConfig: svc.Configs, KindSecret: svc.Secrets} {
			for _, f := range refs {
				if !ValidName(f.Source) || !strings.HasPrefix(f.Target, "/") || strings.Contains(f.Target, "..") || f.Mode > 0o777 ||
					!numericOrEmpty(f.UID) || !numericOrEmpty(f.GID) || strings.ContainsAny(f.Digest, "/\x00") {
					return fmt.Errorf("service %s: %s %q: want a name, an absolute target without '..', numeric uid and gid and a mode up to 0777: %w", name, kind, f.Source, ErrInvalid)
				}
			}
		}
		for _, v := range []string{svc.NetworkMode, svc.Ipc, svc.Pid} {
			if d := Joins(v); d != "" {
				if _, ok := s.Services[d]; !ok || d == name {
					return fmt.Errorf("service %s: %q names no other service of the app: %w", name, v, ErrInvalid)
				}
			}
		}
		if svc.ContainerName != "" && !containerNameRE.MatchString(svc.ContainerName) {
			return fmt.Errorf("service %s: container_name %q: use letters, digits, '_', '.' and '-', starting with a letter or digit: %w", name, svc.ContainerName, ErrInvalid)
		}
		for n := range svc.Networks {
			if _, ok := s.Networks[n]; !ok {
				return fmt.Errorf("service %s: network %s is not defined: %w", name, n, ErrInvalid)
			}
		}
		for _, m := range svc.Mounts {
			if m.Type == "volume" && m.Source != "" {
				if _, ok := s.Volumes[m.Source]; !ok {
					return fmt.Errorf("service %s: volume %s is not defined: %w", name, m.Source, ErrInvalid)
				}
			}
		}
	}
	if _, err := s.Order(); err != nil {
		return err
	}
	return nil
}

// Order returns the service names in depends_on order: every service after
// the services it depends on; ties broken by name so plans are stable.
func (s *Spec) Order() ([]string, error) {
	names := make([]string, 0, len(s.Services))
	for n := range s.Services {
		names = append(names, n)
	}
	sort.Strings(names)
	state := map[string]int{} // 0 unvisited, 1 visiting, 2 done
	var out []string
	var visit func(n string, path []string) error
	visit = func(n string, path []string) error {
		switch state[n] {
		case 1:
			return fmt.Errorf("depends_on cycle: %v: %w", append(path, n), ErrInvalid)
		case 2:
			return nil
		}
		state[n] = 1
		deps := make([]string, 0, len(s.Services[n].DependsOn))
		for d := range s.Services[n].DependsOn {
			if _, ok := s.Services[d]; ok {
				deps = append(deps, d)
			}
		}
		for _, v := range []string{s.Services[n].NetworkMode, s.Services[n].Ipc, s.Services[n].Pid} {
			if d := Joins(v); d != "" && s.Services[n].DependsOn[d] == (Dependency{}) {
				deps = append(deps, d)
			}
		}
		sort.Strings(deps)
		deps = slices.Compact(deps)
		for _, d := range deps {
			if err := visit(d, append(path, n)); err != nil {
				return err
			}
		}
		state[n] = 2
		out = append(out, n)
		return nil
	}
	for _, n := range names {
		if err := visit(n, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Seal sets the release's ID to the digest of the canonical JSON of its app,
// version and spec. The creation time is left out on purpose: deploying the
// same file twice yields the same release, which makes a no-change redeploy a
// no-op.
func (r *Release) Seal() {
	r.ID = digestJSON(struct {
		App     string `json:"app"`
		Version string `json:"version"`
		Spec    Spec   `json:"spec"`
	}{r.App, r.Version, r.Spec})
}

// ShortID is the first 12 hex digits of the ID.
func ShortID(id string) string {
	const p = "sha256:"
	if len(id) > len(p) && id[:len(p)] == p {
		id = id[len(p):]
	}
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// digestJSON hashes v's JSON. encoding/json writes map keys sorted, so the
// encoding of these plain structs is canonical.
func digestJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("release: marshal %T: %v", v, err)) // plain structs always marshal
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Decode reads a release from untrusted JSON and validates it.
func Decode(b []byte) (*Release, error) {
	var r Release
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("decode release: %v: %w", err, ErrInvalid)
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}
