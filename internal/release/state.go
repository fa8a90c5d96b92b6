package release

import "time"

// Phase is where an app is in its release lifecycle.
type Phase string

// The phases an app goes through. Idle, RolledBack and Failed are at rest.
const (
	PhaseIdle        Phase = "idle"
	PhasePreflight   Phase = "preflight"
	PhaseDownloading Phase = "downloading"
	PhaseLoading     Phase = "loading"
	PhaseWaitingLock Phase = "waiting for lock"
	PhaseSwitching   Phase = "switching"
	PhaseVerifying   Phase = "verifying"
	PhaseCommitting  Phase = "committing"
	PhaseRollingBack Phase = "rolling back"
	PhaseRolledBack  Phase = "rolled back"
	PhaseFailed      Phase = "failed"
	PhaseRemoving    Phase = "removing"
)

// AtRest reports whether the phase ends a switch.
func (p Phase) AtRest() bool {
	return p == PhaseIdle || p == PhaseRolledBack || p == PhaseFailed
}

// Health values of a service.
const (
	HealthHealthy   = "healthy"
	HealthUnhealthy = "unhealthy"
	HealthStarting  = "starting"
	HealthNone      = "none"
)

// TargetState is what a device should run: app name → release.
type TargetState struct {
	Apps map[string]*Release `json:"apps"`
}

// CurrentState is what a device reports. Field names are a contract with
// scripts (`berth status --json`); add fields, never rename them.
type CurrentState struct {
	Agent    AgentInfo           `json:"agent"`
	Apps     map[string]AppState `json:"apps"`
	Disk     *Disk               `json:"disk,omitempty"`
	Reported time.Time           `json:"reported"`
	// Stopped is set in the last report of an agent that stops (a
	// service stop, a reboot): the device is offline from then on.
	Stopped *time.Time `json:"stopped,omitempty"`
}

// AgentInfo names the agent and the engine it drives.
type AgentInfo struct {
	Name          string `json:"name"`
	Version       string `json:"version"`
	EngineVersion string `json:"engine_version,omitempty"`
	EngineAPI     string `json:"engine_api,omitempty"`
	Arch          string `json:"arch,omitempty"`
}

// Disk is free space where the agent and the engine keep their data.
type Disk struct {
	StateDirFree  uint64 `json:"state_dir_free"`
	EngineDirFree uint64 `json:"engine_dir_free,omitempty"`
}

// AppState is one app's current state.
type AppState struct {
	Release string `json:"release"`
	Version string `json:"version"`
	Phase   Phase  `json:"phase"`
	Error   string `json:"error"`
	Target  string `json:"target,omitempty"`
	// In fleet mode: the fleet server's ID of the release that runs (its
	// services' environment merged on the device, so Release differs), and
	// of the last fleet release that was tried here and rolled back (Error
	// says why). A LAN deploy over a fleet release leaves FleetRelease empty
	// and sets Override.
	FleetRelease string `json:"fleet_release,omitempty"`
	FleetFailed  string `json:"fleet_failed,omitempty"`
	// FleetRefused is the fleet release the device would not run (not
	// signed by a key it trusts). FleetFailed and FleetRefused are the
	// device's last word on a fleet release it does not run: only one is
	// set, with its reason in FleetReason, and the generation of the
	// assignment it was judged under in FleetGeneration (it is judged
	// again only under a newer one).
	FleetRefused    string `json:"fleet_refused,omitempty"`
	FleetReason     string `json:"fleet_reason,omitempty"`
	FleetGeneration int64  `json:"fleet_generation,omitempty"`
	// Generation is the app's assignment generation in the last target the
	// device took (serverapi.Target.Generations).
	Generation int64                   `json:"generation,omitempty"`
	Override   *Override               `json:"override,omitempty"`
	Lock       *LockInfo               `json:"lock,omitempty"`
	Services   map[string]ServiceState `json:"services"`
	// Kept are the releases kept on the device to roll back to, newest
	// first, the one that runs included.
	Kept    []KeptRelease `json:"kept,omitempty"`
	Updated time.Time     `json:"updated"`
}

// KeptRelease is a release kept on a device.
type KeptRelease struct {
	ID      string `json:"id"`
	Version string `json:"version"`
}

// Override says that an app of a fleet device runs a release deployed over
// the LAN instead of its fleet release: who, when, and until when (then the
// agent returns to the fleet release).
//
// An override lasts until its Until, or until the server assigns the app
// again (a new release, a rollout, a pin, `berth device reclaim`): that
// is a newer assignment generation than Generation, the one in force when
// the override was made. Removed says the app was removed over the LAN
// (`berth rm`) rather than deployed.
type Override struct {
	By         string     `json:"by"`
	Since      time.Time  `json:"since"`
	Until      *time.Time `json:"until,omitempty"`
	Generation int64      `json:"generation,omitempty"`
	Removed    bool       `json:"removed,omitempty"`
}

// LockInfo says who holds an app's update lock.
type LockInfo struct {
	Holder  string     `json:"holder"`
	Since   *time.Time `json:"since,omitempty"`
	Expires *time.Time `json:"expires,omitempty"`
}

// ServiceState is one service's container as the engine reports it.
type ServiceState struct {
	Container string `json:"container"`
	State     string `json:"state"`
	Health    string `json:"health"`
	Restarts  int    `json:"restarts"`
	Release   string `json:"release"`
	Image     string `json:"image,omitempty"`
	ExitCode  int    `json:"exit_code,omitempty"`
}

// Container is one of an agent's containers as the engine reports it.
type Container struct {
	ID        string
	Name      string
	App       string
	Service   string
	Release   string
	SpecHash  string
	State     string // created, running, exited, restarting, …
	Health    string // healthy, unhealthy, starting, none
	HealthLog string // output of the last failed health probe
	Restarts  int
	ExitCode  int
	StartedAt time.Time
	Image     string
}

// Running reports whether the container is up (restarting counts as not up).
func (c Container) Running() bool { return c.State == "running" }
