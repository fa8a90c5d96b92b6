// Package serverapi is the fleet server's HTTP API as its clients see it:
// the request and response types of /v1 and a client for them. The CLI uses
// it, and so will the agent's fleet mode, which is why it imports nothing of
// the server, the store or SQL: only the standard library, the release
// vocabulary, and for image content the exchange berthd links anyway
// (transfer, localapi). docs/api.md documents every endpoint.
package serverapi

import (
	"encoding/json"
	"maps"
	"time"

	"github.com/berth-robotics/berth/internal/release"
)

// Roles of users, from most to least power.
const (
	RoleAdmin    = "admin"    // everything: users, tokens, fleets, provisioning keys
	RoleDeployer = "deployer" // releases, assignments, pins, device settings
	RoleViewer   = "viewer"   // read only
)

// MaxWait is the longest a target long poll waits for a change.
const MaxWait = 60 * time.Second

// ErrorBody is the JSON body of every error response.
type ErrorBody struct {
	Error string `json:"error"`
}

// User is a person or a CI job holding API tokens.
type User struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Role    string    `json:"role"`
	Created time.Time `json:"created"`
}

// CreateUserRequest is the body of POST /v1/users.
type CreateUserRequest struct {
	Name string `json:"name"`
	Role string `json:"role"`
}

// Token is an API token as the server keeps it: the secret is gone, Prefix
// is left to recognize it by.
type Token struct {
	ID       string    `json:"id"`
	UserID   string    `json:"user_id"`
	Name     string    `json:"name"`
	Prefix   string    `json:"prefix"`
	Created  time.Time `json:"created"`
	Expires  time.Time `json:"expires,omitzero"`   // zero: never
	LastUsed time.Time `json:"last_used,omitzero"` // zero: never
}

// CreateTokenRequest is the body of POST /v1/users/{user}/tokens.
type CreateTokenRequest struct {
	Name string `json:"name"`
	// ExpiresIn, if set, makes the token expire that long from now.
	ExpiresIn release.Duration `json:"expires_in,omitempty"`
}

// NewToken answers a token's creation: the only time its secret is shown.
type NewToken struct {
	Token
	Secret string `json:"token"`
}

// Whoami says who a token belongs to.
type Whoami struct {
	User  User  `json:"user"`
	Token Token `json:"token"`
}

// Fleet is a group of devices released to together.
type Fleet struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// KeyPrefix is the start of the provisioning key; "" when revoked.
	KeyPrefix string    `json:"key_prefix"`
	Created   time.Time `json:"created"`
	// Apps are the releases new devices start with, by app (GET one only).
	Apps []AppRelease `json:"apps,omitempty"`
}

// AppRelease names an app's release.
type AppRelease struct {
	App     string `json:"app"`
	Release string `json:"release"`
}

// CreateFleetRequest is the body of POST /v1/fleets.
type CreateFleetRequest struct {
	Name string `json:"name"`
}

// FleetKey answers the creation of a fleet or of its provisioning key: the
// only time the key is shown.
type FleetKey struct {
	Fleet
	ProvisioningKey string `json:"provisioning_key"`
}

// RegisterRequest is the body of POST /v1/register, sent by a device.
type RegisterRequest struct {
	ProvisioningKey string `json:"provisioning_key"`
	Name            string `json:"name"`
	Arch            string `json:"arch,omitempty"`
	AgentVersion    string `json:"agent_version,omitempty"`
}

// Registration answers a device's registration: its token, shown once.
type Registration struct {
	Device Device `json:"device"`
	Token  string `json:"token"`
	// TrustedKeys are the fleet's release signing keys (ed25519:<base64>)
	// at registration, for an agent that pins them on first use.
	TrustedKeys []string `json:"trusted_keys,omitempty"`
}

// SigningKey is a public key that signs a fleet's releases. A fleet with
// at least one refuses releases not signed by one of them.
type SigningKey struct {
	ID        string    `json:"id"`         // 16 hex digits of the SHA-256 of the key
	PublicKey string    `json:"public_key"` // ed25519:<base64>
	Created   time.Time `json:"created"`
	CreatedBy string    `json:"created_by"`
}

// AddSigningKeyRequest is the body of POST /v1/fleets/{fleet}/keys.
type AddSigningKeyRequest struct {
	PublicKey string `json:"public_key"`
}

// Signature is a release's ed25519 signature (base64) over
// signing.Message(fleet name, release ID), and the ID of its key.
type Signature struct {
	KeyID     string `json:"key_id"`
	Signature string `json:"signature"`
}

// Device is a registered robot as operators see it.
type Device struct {
	ID      string    `json:"id"`
	FleetID string    `json:"fleet_id"`
	Fleet   string    `json:"fleet"`
	Name    string    `json:"name"`
	Tags    []string  `json:"tags"`
	Notes   string    `json:"notes"`
	Created time.Time `json:"created"`
	// LastSeen is when the device last polled or reported; Online says it
	// did so within three poll intervals.
	LastSeen time.Time `json:"last_seen,omitzero"`
	Online   bool      `json:"online"`
	// Agent, Apps, Disk and Reported come from the device's last state
	// report; Apps has the shape of `berth status --json`'s apps.
	Agent    *release.AgentInfo          `json:"agent,omitempty"`
	Apps     map[string]release.AppState `json:"apps"`
	Disk     *release.Disk               `json:"disk,omitempty"`
	Reported time.Time                   `json:"reported,omitzero"`
	// Target is what the device should run, by app (GET one only).
	Target map[string]TargetApp `json:"target,omitempty"`
	// Status is, by app (of the target, and of the report), where the
	// device stands with it: see AppStatusOf.
	Status        map[string]AppStatus `json:"status,omitempty"`
	TargetVersion int64                `json:"target_version"`
	StateVersion  int64                `json:"state_version"`
}

// TargetApp is one app of a device's target as operators see it.
type TargetApp struct {
	Release    string    `json:"release"`
	Pinned     bool      `json:"pinned"`
	Updated    time.Time `json:"updated"`
	Generation int64     `json:"generation,omitempty"`
}

// UpdateDeviceRequest is the body of PATCH /v1/devices/{device}: the fields
// given are replaced, the others left alone.
type UpdateDeviceRequest struct {
	Name  *string   `json:"name,omitempty"`
	Tags  *[]string `json:"tags,omitempty"`
	Notes *string   `json:"notes,omitempty"`
}

// EnvLayer is one layer of environment variables. Layers apply in the
// order fleet < service < device < device-service, the later winning.
type EnvLayer struct {
	Fleet   string            `json:"fleet"`
	Device  string            `json:"device,omitempty"`
	Service string            `json:"service,omitempty"`
	Vars    map[string]string `json:"vars"`
	Updated time.Time         `json:"updated,omitzero"`
}

// SetEnvRequest is the body of PUT …/env: it replaces the layer; no
// variables delete it.
type SetEnvRequest struct {
	Vars map[string]string `json:"vars"`
}

// PinRequest is the body of POST /v1/devices/{device}/pin: keep the device
// on this release of its app, whatever is assigned to the fleet.
type PinRequest struct {
	Release string `json:"release"`
	App     string `json:"app,omitempty"` // if given, must be the release's
}

// Release is an immutable release of an app, kept by a fleet.
type Release struct {
	ID        string        `json:"id"`
	FleetID   string        `json:"fleet_id"`
	App       string        `json:"app"`
	Version   string        `json:"version"`
	Spec      *release.Spec `json:"spec,omitempty"` // absent in lists
	Created   time.Time     `json:"created"`
	CreatedBy string        `json:"created_by"`
	// Signature and KeyID sign the release; "" when unsigned.
	Signature string `json:"signature,omitempty"`
	KeyID     string `json:"key_id,omitempty"`
}

// CreateReleaseRequest is the body of POST /v1/fleets/{fleet}/releases.
type CreateReleaseRequest struct {
	App     string       `json:"app"`
	Version string       `json:"version"`
	Spec    release.Spec `json:"spec"`
	// Images pins image references to image IDs (sha256:…) for the
	// services that use them and name no ImageID yet.
	Images map[string]string `json:"images,omitempty"`
	// Content says where devices get the pinned images: from the server
	// (ContentServer, the default: each must have been uploaded, else 409)
	// or elsewhere (ContentExternal: a registry, a LAN push, preloaded; not
	// checked). It is not part of the release: the same release either way.
	Content string `json:"content,omitempty"`
	// Signature (base64) and KeyID sign the release: ed25519 over
	// signing.Message(fleet name, release ID), the ID the server seals from
	// app, version, spec and images. Required when the fleet has signing
	// keys; then KeyID must name one of them.
	Signature string `json:"signature,omitempty"`
	KeyID     string `json:"key_id,omitempty"`
}

// Release is the release the request makes, as the server seals it: the
// images pinned to the services that use them and name no ImageID yet, the
// ID the digest of app, version and spec (release.Seal). A client signs
// this ID. It checks nothing; the server does.
func (req CreateReleaseRequest) Release() release.Release {
	rel := release.Release{App: req.App, Version: req.Version, Spec: req.Spec}
	if len(req.Images) > 0 && req.Spec.Services != nil {
		rel.Spec.Services = maps.Clone(req.Spec.Services)
		for ref, id := range req.Images {
			for name, svc := range rel.Spec.Services {
				if svc.Image == ref && svc.ImageID == "" {
					svc.ImageID = id
					rel.Spec.Services[name] = svc
				}
			}
		}
	}
	if rel.Spec.Services != nil {
		// services that join another's namespace, or restart with it, follow
		// its spec (as the agent binds a deploy's)
		rel.Spec.Services = maps.Clone(rel.Spec.Services)
		_ = rel.Spec.Bind() // a cycle fails validation, which names it
	}
	rel.Seal()
	return rel
}

// Values of CreateReleaseRequest.Content.
const (
	ContentServer   = ""
	ContentExternal = "external"
)

// AssignRequest is the body of POST …/releases/{release}/assign: the
// devices (IDs or names) to move to the release, or all of the fleet's.
type AssignRequest struct {
	Devices []string `json:"devices,omitempty"`
	All     bool     `json:"all,omitempty"`
}

// Assignment answers an assignment.
type Assignment struct {
	Release string `json:"release"`
	App     string `json:"app"`
	// Changed are the IDs of the devices whose target moved; the others
	// were there already, or are pinned to another release of the app.
	Changed   []string `json:"changed"`
	Unchanged int      `json:"unchanged"`
	// Renewed are the devices that were there already: their assignment
	// was made again, which ends a LAN override and tries the release
	// again where it failed or was refused.
	Renewed []string `json:"renewed,omitempty"`
}

// Target is what a device should run: per app the release, its services'
// environment merged with the fleet's layers. Version is its ETag.
type Target struct {
	Version int64 `json:"version"`
	release.TargetState
	// Signatures are the signatures of the apps' releases, by app; an
	// unsigned release has none. They sign the release's ID (the digest of
	// the release as stored, before the environment layers are merged) and
	// the fleet's name.
	Signatures map[string]Signature `json:"signatures,omitempty"`
	// Fleet is the device's fleet, by name.
	Fleet string `json:"fleet,omitempty"`
	// Generations are, by app, the target version at which the app was
	// last assigned to the device (an assignment, a rollout's move, a pin,
	// a retry). A newer generation ends a LAN override and tries a release
	// again that failed or was refused under an older one; changes of
	// environment layers or signatures leave it as it is.
	Generations map[string]int64 `json:"generations,omitempty"`
}

// StateReport answers a state report.
type StateReport struct {
	StateVersion int64 `json:"state_version"`
}

// AuditEntry is one thing someone did.
type AuditEntry struct {
	ID      int64           `json:"id"`
	Time    time.Time       `json:"time"`
	Actor   string          `json:"actor"`
	Action  string          `json:"action"`
	Object  string          `json:"object"`
	Details json.RawMessage `json:"details,omitempty"`
}

// AuditQuery selects audit entries; empty fields select all.
type AuditQuery struct {
	Actor, Action, Object string
	Since, Until          time.Time
	Before                int64 // entries with an ID below this: the last ID of the previous page
	Limit                 int
}
