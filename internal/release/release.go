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
	"sort"
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
}

// NetworkRef attaches a service to one of the app's networks.
type NetworkRef struct {
	Aliases []string `json:"aliases,omitempty"`
}

// Dependency is one depends_on entry.
type Dependency struct {
	Condition string `json:"condition"`
	Required  bool   `json:"required"`
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
		sort.Strings(deps)
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
