// Package store is the fleet server's persistence: users and their API
// tokens, fleets, devices, releases, rollouts, layered environment and the
// audit log, kept in SQLite (a file in the data directory, pure Go, no cgo)
// or in PostgreSQL (given a DSN), with one schema and one set of migrations.
//
// Both backends are driven through database/sql by the same queries:
// modernc.org/sqlite for SQLite and pgx's stdlib adapter for PostgreSQL. The
// adapter rather than pgxpool because one query text, one Scan path and one
// migration runner then serve both databases, and the conformance suite in
// store/storetest checks them alike; pgx's own API would buy COPY and
// batches, which this workload does not need. The places where the two
// dialects differ are few and listed in dialect.go. LISTEN, which needs a
// connection of its own, will open one with pgx directly from the same DSN.
//
// Conventions: secrets (API tokens, device tokens, provisioning keys) are
// never stored, only their SHA-256 and a short prefix to list them by; times
// are kept as microseconds since the Unix epoch in BIGINT columns on both
// backends (UTC, ordered, no time-zone or driver-format surprises); JSON is
// kept as TEXT and handed back as given (a release's spec compacted); IDs
// are random and opaque; text must be UTF-8 without NUL, as PostgreSQL
// wants, on both.
//
// Every change to what a device should run (its releases, its environment)
// gives the device a new target version, drawn from one counter that only
// grows. A long poll compares versions; TargetChanges lists what moved since
// a version; on PostgreSQL each such change also sends a NOTIFY on
// TargetsChannel when its transaction commits, so replicas can wake their
// waiters (on SQLite there is one server process, and Notify does nothing).
package store

import (
	"context"
	"encoding/json"
	"time"

	"github.com/berth-robotics/berth/internal/release"
)

// Errors, the same values as release's sentinels, so that the one function
// that turns errors into HTTP statuses needs to know only those. Check them
// with errors.Is; the store wraps them with what was asked.
var (
	// ErrNotFound: no such object, or not visible to whoever asked
	// (another fleet's release, another device's target).
	ErrNotFound = release.ErrNotFound
	// ErrConflict: a unique key is taken, an immutable object would change,
	// or a compare-and-set lost.
	ErrConflict = release.ErrConflict
	// ErrInvalid: an argument the store cannot take (empty name, unknown role,
	// malformed JSON).
	ErrInvalid = release.ErrInvalid
)

// TargetsChannel is the PostgreSQL notification channel on which a
// committed change of device targets is announced; the payload is the new
// target version, in decimal.
const TargetsChannel = "berth_targets"

// LogsChannel is the PostgreSQL notification channel on which new log
// lines of a device are announced (AppendLogs); the payload is the
// device's ID.
const LogsChannel = "berth_logs"

// AnyVersion, given to SetDeviceState, replaces the state whatever its version.
const AnyVersion int64 = -1

// StateReport is one device's state for SetDeviceStates; IfVersion is as
// SetDeviceState's ifVersion.
type StateReport struct {
	DeviceID  string
	State     json.RawMessage
	IfVersion int64
}

// StateResult is what became of one StateReport.
type StateResult struct {
	Version int64 // the device's new state version
	Err     error
}

// Store is what the fleet server keeps. Every method takes a context first
// and returns errors wrapping ErrNotFound, ErrConflict or ErrInvalid where
// those apply. *DB implements it on SQLite and PostgreSQL; storetest.Run is
// the conformance suite any implementation must pass.
type Store interface {
	// Close releases the database connections.
	Close() error

	// CreateUser adds a user; a taken name is ErrConflict.
	CreateUser(ctx context.Context, name string, role Role) (User, error)
	User(ctx context.Context, id string) (User, error)
	UserByName(ctx context.Context, name string) (User, error)
	// ListUsers returns every user, by name.
	ListUsers(ctx context.Context) ([]User, error)
	SetUserRole(ctx context.Context, id string, role Role) error
	// DeleteUser removes a user and its tokens; its audit entries stay.
	DeleteUser(ctx context.Context, id string) error

	// CreateToken records an API token for a user: the SHA-256 of secret
	// and its first characters, never the secret. A zero expires never expires.
	CreateToken(ctx context.Context, userID, name, secret string, expires time.Time) (Token, error)
	// TokenBySecret finds a token by the hash of secret. It does not check
	// expiry: Token.Expired does, with the caller's clock.
	TokenBySecret(ctx context.Context, secret string) (Token, error)
	// TouchToken records that a token was used now.
	TouchToken(ctx context.Context, id string) error
	// ListTokens returns a user's tokens, oldest first.
	ListTokens(ctx context.Context, userID string) ([]Token, error)
	DeleteToken(ctx context.Context, id string) error

	// CreateFleet adds a fleet whose devices register with provisioningKey
	// (stored hashed); a taken name is ErrConflict.
	CreateFleet(ctx context.Context, name, provisioningKey string) (Fleet, error)
	Fleet(ctx context.Context, id string) (Fleet, error)
	FleetByName(ctx context.Context, name string) (Fleet, error)
	// FleetByProvisioningKey finds the fleet a registering device names.
	FleetByProvisioningKey(ctx context.Context, key string) (Fleet, error)
	// ListFleets returns every fleet, by name.
	ListFleets(ctx context.Context) ([]Fleet, error)
	// SetProvisioningKey replaces a fleet's key; "" revokes it, so that no
	// device can register until a new one is set.
	SetProvisioningKey(ctx context.Context, fleetID, key string) (Fleet, error)
	// SetFleetRelease makes a release of the fleet the one its new devices
	// start with, for the release's app. Devices already registered keep
	// theirs: moving them is a rollout's job (AssignRelease).
	SetFleetRelease(ctx context.Context, fleetID, releaseID string) error
	// FleetReleases returns the fleet's release per app, by app.
	FleetReleases(ctx context.Context, fleetID string) ([]AppRelease, error)
	// AddFleetKey registers a public key that signs the fleet's releases
	// (ErrConflict if its ID is there already).
	AddFleetKey(ctx context.Context, k FleetKey) (FleetKey, error)
	// FleetKeys returns the fleet's release signing keys, by ID.
	FleetKeys(ctx context.Context, fleetID string) ([]FleetKey, error)
	// RemoveFleetKey removes a fleet's signing key (ErrNotFound if absent).
	RemoveFleetKey(ctx context.Context, fleetID, keyID string) error

	// CreateDevice registers a device in a fleet under a name unique in that
	// fleet (else ErrConflict), authenticated from then on by tokenSecret
	// (stored hashed). It starts with the fleet's releases (FleetReleases)
	// and a fresh target version.
	CreateDevice(ctx context.Context, fleetID, name, tokenSecret string) (Device, error)
	Device(ctx context.Context, id string) (Device, error)
	DeviceByName(ctx context.Context, fleetID, name string) (Device, error)
	// DeviceByToken finds a device by the hash of its token: all of it but
	// its state and tags (State nil, Tags empty), for authenticating its
	// requests.
	DeviceByToken(ctx context.Context, secret string) (Device, error)
	// ListDevices returns a fleet's devices by name, a page at a time.
	ListDevices(ctx context.Context, f DeviceFilter) ([]Device, error)
	SetDeviceName(ctx context.Context, id, name string) error
	SetDeviceNotes(ctx context.Context, id, notes string) error
	// SetDeviceTags replaces a device's tags (sorted, duplicates dropped).
	SetDeviceTags(ctx context.Context, id string, tags []string) error
	// SetDeviceToken replaces a device's token. Like DeleteDevice, it
	// takes a target version (and announces it), though no target
	// changes: servers that keep devices by token drop what they kept once
	// they see a newer version.
	SetDeviceToken(ctx context.Context, id, secret string) error
	// DeleteDevice removes a device with its releases, environment layers
	// and rollout progress, and takes a target version (SetDeviceToken).
	DeleteDevice(ctx context.Context, id string) error
	// TouchDevice records that the device was seen now.
	TouchDevice(ctx context.Context, id string) error
	// SetDeviceState stores the state a device reported and marks it seen.
	// Unless ifVersion is AnyVersion it must equal the stored state version
	// (else ErrConflict), so that replicas applying diffs lose none. It
	// returns the new state version.
	SetDeviceState(ctx context.Context, id string, state json.RawMessage, ifVersion int64) (int64, error)
	// DeviceState is a device's last reported state (nil if none) and its
	// state version, in one read.
	DeviceState(ctx context.Context, id string) (json.RawMessage, int64, error)
	// SetDeviceStates stores several devices' reports in one transaction
	// (one commit for many reports when many devices report at once). Each
	// report gets its own result: its new state version, or ErrNotFound,
	// ErrConflict or ErrInvalid as SetDeviceState would say; an error of
	// the database's own keeps none of them and is returned.
	SetDeviceStates(ctx context.Context, reports []StateReport) ([]StateResult, error)
	// TouchDevices marks devices seen now, in one transaction; IDs of
	// devices that no longer exist are passed by.
	TouchDevices(ctx context.Context, ids []string) error

	// DeviceApps returns what a device should run: a release per app, by app.
	DeviceApps(ctx context.Context, deviceID string) ([]DeviceApp, error)
	// TargetParts reads what the devices' targets are made of, by device
	// ID, in two statements however many devices: the release of each of
	// DeviceApps, by app, without its spec (Spec nil; Release reads one),
	// and the environment layers that reach the device, as EnvLayers. Read
	// at every wake-up, for the devices woken together.
	TargetParts(ctx context.Context, devices []Device) (map[string]TargetParts, error)
	// AssignRelease points the given devices of a fleet at one of the
	// fleet's releases, for the release's app, skipping devices pinned to
	// another release of that app, with a new generation. It returns the
	// IDs of the devices whose target changed and of those on the release
	// already (renewed). A device not in the fleet is ErrNotFound, and
	// then nothing changes.
	AssignRelease(ctx context.Context, fleetID, releaseID string, deviceIDs []string) (Assigned, error)
	// AssignFleet points every device of a fleet at one of the fleet's
	// releases, as AssignRelease does, and makes it the release the
	// fleet's new devices start with (SetFleetRelease), in one
	// transaction. It returns the devices it changed and renewed, and how
	// many devices the fleet has.
	AssignFleet(ctx context.Context, fleetID, releaseID string) (changed Assigned, devices int, err error)
	// PinRelease sets a device's release for the release's app and keeps it
	// there: AssignRelease passes the device by until UnpinApp.
	PinRelease(ctx context.Context, deviceID, releaseID string) error
	UnpinApp(ctx context.Context, deviceID, app string) error
	// RemoveApp takes an app off a device's target.
	RemoveApp(ctx context.Context, deviceID, app string) error
	// RenewApp assigns a device's app again, to the release it has: a new
	// generation, which ends a LAN override and tries a failed or refused
	// release again. It returns the new generation.
	RenewApp(ctx context.Context, deviceID, app string) (int64, error)
	// DevicesApps is DeviceApps of many devices at once, by device.
	DevicesApps(ctx context.Context, deviceIDs []string) (map[string][]DeviceApp, error)
	// DeviceRelease returns a release only if it is in the device's target;
	// otherwise ErrNotFound, whether or not the release exists.
	DeviceRelease(ctx context.Context, deviceID, releaseID string) (Release, error)

	// TargetVersion is the device's target version: it changes, upwards,
	// whenever DeviceApps or the device's environment changes.
	TargetVersion(ctx context.Context, deviceID string) (int64, error)
	// LatestTargetVersion is the highest target version handed out so far.
	LatestTargetVersion(ctx context.Context) (int64, error)
	// TargetChanges lists devices whose target version is above since, in
	// version order, at most limit of them.
	TargetChanges(ctx context.Context, since int64, limit int) ([]TargetChange, error)
	// Notify sends payload on a PostgreSQL notification channel; on SQLite
	// it does nothing.
	Notify(ctx context.Context, channel, payload string) error

	// CreateRelease stores an immutable release. Its ID is the digest the
	// caller computed over its content. Storing the same release again
	// returns the stored one and created=false; a different app, version or
	// spec under the same ID in the same fleet is ErrConflict.
	CreateRelease(ctx context.Context, r Release) (stored Release, created bool, err error)
	Release(ctx context.Context, fleetID, id string) (Release, error)
	// ListReleases returns a fleet's releases, newest first.
	ListReleases(ctx context.Context, f ReleaseFilter) ([]Release, error)

	// SetEnv replaces one environment layer; empty Vars deletes it. The
	// devices it reaches get a new target version.
	SetEnv(ctx context.Context, l EnvLayer) error
	// EnvLayers returns a fleet's layers that reach a device: the fleet's,
	// the services', and the device's own. With deviceID "", only the fleet
	// and service layers.
	EnvLayers(ctx context.Context, fleetID, deviceID string) ([]EnvLayer, error)

	// CreateRollout starts a rollout of a release over the given devices;
	// one running or paused rollout per fleet and app (else ErrConflict).
	CreateRollout(ctx context.Context, r Rollout, devices []RolloutDevice) (Rollout, error)
	Rollout(ctx context.Context, id string) (Rollout, error)
	// ListRollouts returns a fleet's rollouts, newest first.
	ListRollouts(ctx context.Context, fleetID string) ([]Rollout, error)
	// SetRolloutStatus moves a rollout from one status to another; if it is
	// not in from any more (another replica moved it), ErrConflict.
	SetRolloutStatus(ctx context.Context, id string, from, to RolloutStatus) (Rollout, error)
	// RolloutDevices returns a rollout's devices by stage, then device ID.
	RolloutDevices(ctx context.Context, rolloutID string) ([]RolloutDevice, error)
	// UpdateRolloutDevice records a device's progress (Status, Detail).
	UpdateRolloutDevice(ctx context.Context, d RolloutDevice) error
	// ActiveRollouts returns every running or paused rollout of every
	// fleet, oldest first: what the server's rollout engine looks after.
	ActiveRollouts(ctx context.Context) ([]Rollout, error)
	// UpdateRollout moves a rollout from one status to another as
	// SetRolloutStatus does (ErrConflict if it is not in from any more),
	// and replaces its State in the same write (nil State: kept).
	UpdateRollout(ctx context.Context, id string, from, to RolloutStatus, state json.RawMessage) (Rollout, error)
	// MoveRolloutStage moves the pending devices of one stage of a running
	// rollout to its release, in one transaction. The rollout must be at
	// that stage or the one before, and then advances to it; otherwise
	// (paused, aborted, or another replica is further on) ErrConflict and
	// nothing changes. Each pending device of the stage gets, at once:
	// PreviousRelease, the release of the app its target had ("" for
	// none); StateVersion, its state version then; its target pointed at
	// the release with a new target version and generation (Generation;
	// also where it had the release already: a renewal); and status
	// RolloutDeviceUpdating — or RolloutDeviceSkipped, untouched, if it
	// is pinned to another release of the app. It returns the devices it
	// moved; none when another replica moved them first.
	MoveRolloutStage(ctx context.Context, rolloutID string, stage int) ([]RolloutDevice, error)
	// SetRolloutDevice records a device's progress (Status, Detail) if its
	// status is still from; else ErrConflict (another replica recorded
	// something first), or ErrNotFound if the device is not in the rollout.
	SetRolloutDevice(ctx context.Context, d RolloutDevice, from string) error

	// AppendAudit records who did what; entries are never changed.
	AppendAudit(ctx context.Context, e AuditEntry) (AuditEntry, error)
	// ListAudit returns entries newest first, filtered and a page at a time.
	ListAudit(ctx context.Context, f AuditFilter) ([]AuditEntry, error)

	// AppendLogs stores a device's log lines, in order, then trims the
	// device's lines to the newest keep (0: no trim).
	AppendLogs(ctx context.Context, deviceID string, lines []LogLine, keep int) error
	// Logs returns a device's log lines, oldest first: the newest Limit
	// that match, or with After the first Limit stored after it.
	Logs(ctx context.Context, f LogFilter) ([]LogLine, error)
}

// Role is what a user may do.
type Role string

// Roles, from most to least power.
const (
	RoleAdmin    Role = "admin"    // everything, users and tokens included
	RoleDeployer Role = "deployer" // releases, rollouts, devices
	RoleViewer   Role = "viewer"   // read only
)

// Valid reports whether r is one of the roles.
func (r Role) Valid() bool {
	return r == RoleAdmin || r == RoleDeployer || r == RoleViewer
}

// User is a person or a CI job with API tokens.
type User struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Role    Role      `json:"role"`
	Created time.Time `json:"created"`
}

// Token is an API token as stored: its secret is gone, Prefix is what is
// left to recognize it by.
type Token struct {
	ID       string    `json:"id"`
	UserID   string    `json:"user_id"`
	Name     string    `json:"name"`
	Prefix   string    `json:"prefix"`
	Created  time.Time `json:"created"`
	Expires  time.Time `json:"expires,omitzero"`   // zero: never
	LastUsed time.Time `json:"last_used,omitzero"` // zero: never
}

// Expired reports whether the token has expired at now.
func (t Token) Expired(now time.Time) bool {
	return !t.Expires.IsZero() && !now.Before(t.Expires)
}

// Fleet is a group of devices released to together.
type Fleet struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// KeyPrefix is the start of the provisioning key; "" when revoked.
	KeyPrefix string    `json:"key_prefix"`
	Created   time.Time `json:"created"`
}

// AppRelease names the release of an app.
type AppRelease struct {
	App       string `json:"app"`
	ReleaseID string `json:"release_id"`
}

// Device is a registered robot.
type Device struct {
	ID       string    `json:"id"`
	FleetID  string    `json:"fleet_id"`
	Name     string    `json:"name"`
	Tags     []string  `json:"tags"`
	Notes    string    `json:"notes"`
	Created  time.Time `json:"created"`
	LastSeen time.Time `json:"last_seen,omitzero"` // zero: never
	// State is the last state the device reported (nil: none yet), and
	// StateVersion counts the reports.
	State        json.RawMessage `json:"state,omitempty"`
	StateVersion int64           `json:"state_version"`
	// TargetVersion changes whenever what the device should run changes.
	TargetVersion int64 `json:"target_version"`
}

// DeviceFilter selects devices for ListDevices.
type DeviceFilter struct {
	FleetID string // required
	Tag     string // only devices with this tag
	After   string // only devices named after this (the last name of the previous page)
	Limit   int    // at most this many; 0: 1000
}

// DeviceApp is one app of a device's target.
type DeviceApp struct {
	App       string    `json:"app"`
	ReleaseID string    `json:"release_id"`
	Pinned    bool      `json:"pinned"`
	Updated   time.Time `json:"updated"`
	// Generation is the target version at which the app was last assigned
	// to the device (serverapi.Target.Generations).
	Generation int64 `json:"generation"`
}

// Assigned says which devices an assignment moved to the release
// (Changed) and which were on it already and got a new generation
// (Renewed), each sorted by ID.
type Assigned struct {
	Changed, Renewed []string
}

// TargetChange says that a device's target moved to Version.
type TargetChange struct {
	DeviceID string `json:"device_id"`
	Version  int64  `json:"version"`
}

// Release is an immutable release as the server stores it. Spec is the
// release's JSON as the caller hashed it; the store keeps it compacted.
type Release struct {
	ID        string          `json:"id"`
	FleetID   string          `json:"fleet_id"`
	App       string          `json:"app"`
	Version   string          `json:"version"`
	Spec      json.RawMessage `json:"spec"`
	Created   time.Time       `json:"created"`
	CreatedBy string          `json:"created_by"`
	// Signature (base64) and KeyID are the release's ed25519 signature
	// (package signing) and its key's ID; "" for unsigned. They are not
	// part of the release's identity: creating the release again with
	// another signature replaces them.
	Signature string `json:"signature,omitempty"`
	KeyID     string `json:"key_id,omitempty"`
}

// FleetKey is a public key that signs a fleet's releases.
type FleetKey struct {
	FleetID   string    `json:"fleet_id"`
	ID        string    `json:"id"`
	PublicKey string    `json:"public_key"` // ed25519:<base64>
	Created   time.Time `json:"created"`
	CreatedBy string    `json:"created_by"`
}

// ReleaseFilter selects releases for ListReleases.
type ReleaseFilter struct {
	FleetID string // required
	App     string // only this app's
	Limit   int    // at most this many; 0: 100
}

// TargetParts is what a device's target is made of besides its version
// (Store.TargetParts).
type TargetParts struct {
	Releases    []Release        // by app
	Generations map[string]int64 // by app: DeviceApp.Generation
	Env         []EnvLayer       // the fleet's and services' layers, then the device's own
}

// EnvLayer is one layer of environment variables. Layers apply in the order
// fleet < service < device < device-service, the later winning: Service ""
// reaches every service, DeviceID "" every device of the fleet.
type EnvLayer struct {
	FleetID  string            `json:"fleet_id"`
	DeviceID string            `json:"device_id,omitempty"`
	Service  string            `json:"service,omitempty"`
	Vars     map[string]string `json:"vars"`
	Updated  time.Time         `json:"updated"`
}

// RolloutStatus is where a rollout stands.
type RolloutStatus string

// Rollout statuses. Running and paused are active: one per fleet and app.
const (
	RolloutRunning   RolloutStatus = "running"
	RolloutPaused    RolloutStatus = "paused"
	RolloutCompleted RolloutStatus = "completed"
	RolloutAborted   RolloutStatus = "aborted"
)

// Valid reports whether s is one of the statuses.
func (s RolloutStatus) Valid() bool {
	switch s {
	case RolloutRunning, RolloutPaused, RolloutCompleted, RolloutAborted:
		return true
	}
	return false
}

// Rollout moves a fleet's devices to a release in stages. Params (stages,
// canary, batch size, failure threshold) and State (what the server
// records as it goes) belong to the server; the store keeps them as given.
type Rollout struct {
	ID        string          `json:"id"`
	FleetID   string          `json:"fleet_id"`
	ReleaseID string          `json:"release_id"`
	App       string          `json:"app"` // the release's, filled in by CreateRollout
	Params    json.RawMessage `json:"params"`
	Status    RolloutStatus   `json:"status"`
	// Stage is the stage under way: 0 at first, moved on by MoveRolloutStage.
	Stage int `json:"stage"`
	// State is the server's JSON ("{}" at first), set with UpdateRollout.
	State     json.RawMessage `json:"state"`
	CreatedBy string          `json:"created_by"`
	Created   time.Time       `json:"created"`
	Updated   time.Time       `json:"updated"`
}

// RolloutDevice is one device's part in a rollout. Status is the server's
// word (pending, updating, healthy, failed, ...); PreviousRelease is what to
// return the device to on abort ("" for nothing).
type RolloutDevice struct {
	RolloutID       string    `json:"rollout_id"`
	DeviceID        string    `json:"device_id"`
	Stage           int       `json:"stage"`
	PreviousRelease string    `json:"previous_release,omitempty"`
	Status          string    `json:"status"`
	Detail          string    `json:"detail,omitempty"`
	Updated         time.Time `json:"updated"`
	// StateVersion is the device's state version when MoveRolloutStage
	// moved it: reports with a higher one were made after the move.
	StateVersion int64 `json:"state_version,omitempty"`
	// Generation is the assignment generation the move gave the device's
	// app: its reports judged under it or a later one are about the move.
	Generation int64 `json:"generation,omitempty"`
}

// The statuses of a rollout's device that the store sets itself; the
// server adds its own (healthy, failed, reverted, …).
const (
	RolloutDevicePending  = "pending"  // not reached yet: CreateRollout's default
	RolloutDeviceUpdating = "updating" // moved to the release by MoveRolloutStage
	RolloutDeviceSkipped  = "skipped"  // pinned to another release when its stage came
)

// AuditEntry is one thing someone did. ID grows with every entry.
type AuditEntry struct {
	ID      int64           `json:"id"`
	Time    time.Time       `json:"time"`
	Actor   string          `json:"actor"`  // "user:alice", "device:…", "system"
	Action  string          `json:"action"` // "release.create", "rollout.pause", …
	Object  string          `json:"object"` // "fleet/lab", "device/…", …
	Details json.RawMessage `json:"details,omitempty"`
}

// AuditFilter selects audit entries for ListAudit. Empty fields select all.
type AuditFilter struct {
	Actor  string
	Action string
	Object string
	Since  time.Time // at or after
	Until  time.Time // before
	Before int64     // only entries with an ID below this: the last ID of the previous page
	Limit  int       // at most this many; 0: 100
}
