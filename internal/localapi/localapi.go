// Package localapi is the agent's local API: the request and response types
// and a client. The agent serves it as HTTP+JSON under /v1 on a unix socket;
// the CLI reaches it there directly, or over SSH through `berthd dial-stdio`.
package localapi

import (
	"time"

	"github.com/berth-robotics/berth/internal/release"
)

// DeployRequest asks the agent to switch an app to a new release.
type DeployRequest struct {
	Version string       `json:"version"`
	Spec    release.Spec `json:"spec"`
	// Force skips waiting for update locks and maintenance windows.
	Force bool `json:"force,omitempty"`
	// LockTimeout overrides how long to wait for update locks (0: agent default).
	LockTimeout release.Duration `json:"lock_timeout,omitempty"`
	// By says who deploys (user@host); a fleet device reports it with the
	// local override.
	By string `json:"by,omitempty"`
	// OverrideTTL, on a fleet device, returns the app to its fleet release
	// that long after this deploy (0: until the next fleet release).
	OverrideTTL release.Duration `json:"override_ttl,omitempty"`
	// Settle overrides, for this switch, how long a service without a
	// healthcheck must run without restarting to count as up (0: the
	// agent's policy). berth dev sets a short one.
	Settle release.Duration `json:"settle,omitempty"`
	// Files are the values of the spec's runtime configs and secrets, by
	// "config/NAME" and "secret/NAME". They never become part of the
	// release, and no answer holds them.
	Files map[string][]byte `json:"files,omitempty"`
}

// PlanResponse is what a deploy would do, answered without changing
// anything (berth deploy --dry-run).
type PlanResponse struct {
	App     string   `json:"app"`
	Version string   `json:"version"`
	Release string   `json:"release,omitempty"` // the release ID it would make; "" while images are still to be pulled
	Current string   `json:"current,omitempty"` // the release that runs now
	Pulls   []string `json:"pulls,omitempty"`   // images the agent would pull first
	Steps   []string `json:"steps,omitempty"`   // the switch, one step a line; none when nothing would change
	// NoChange: the release already runs.
	NoChange bool `json:"no_change"`
}

// RollbackRequest asks the agent to switch an app back to a kept release.
type RollbackRequest struct {
	Release string `json:"release,omitempty"` // default: the release before the current one
	Force   bool   `json:"force,omitempty"`
}

// OpResponse answers a deploy or rollback: the operation runs in the
// background; follow its events from Seq on.
type OpResponse struct {
	Op       uint64 `json:"op"`
	Release  string `json:"release"`
	Version  string `json:"version"`
	NoChange bool   `json:"no_change,omitempty"`
	Seq      uint64 `json:"seq"`
}

// KeptRelease is one release the agent keeps for an app.
type KeptRelease struct {
	ID       string    `json:"id"`
	Version  string    `json:"version"`
	Created  time.Time `json:"created"`
	Current  bool      `json:"current"`
	Failed   string    `json:"failed,omitempty"` // why it was rolled back, if it was
	Services []string  `json:"services"`
}

// LockRequest takes an app's update lock through the API.
type LockRequest struct {
	Holder string           `json:"holder"`
	TTL    release.Duration `json:"ttl"`
}

// RemoveResponse says what `berth rm` removed.
type RemoveResponse struct {
	Containers int      `json:"containers"`
	Volumes    []string `json:"volumes,omitempty"`
}

// Event is one thing that happened on the agent.
type Event struct {
	Seq     uint64        `json:"seq"`
	Time    time.Time     `json:"time"`
	Op      uint64        `json:"op,omitempty"`
	App     string        `json:"app,omitempty"`
	Release string        `json:"release,omitempty"`
	Phase   release.Phase `json:"phase,omitempty"`
	Message string        `json:"message"`
	Error   string        `json:"error,omitempty"`
	// Done marks the last event of an operation; Phase then says how it ended.
	Done bool `json:"done,omitempty"`
}

// ErrorBody is the JSON body of every error response.
type ErrorBody struct {
	Error string `json:"error"`
}

// ContentInfo is what a device holds, so a sender can work out what to send.
type ContentInfo struct {
	Layers     []string `json:"layers"` // diffIDs whose index and pieces are in the content store
	Chains     []string `json:"chains"` // chain IDs of the layer stacks in the engine
	Images     []string `json:"images"` // image IDs in the engine
	OS         string   `json:"os"`
	Arch       string   `json:"arch"`
	StateFree  uint64   `json:"state_free"`
	EngineFree uint64   `json:"engine_free"`
	MinFree    uint64   `json:"min_free"`
}

// PutPiecesResponse acknowledges one batch of pieces.
type PutPiecesResponse struct {
	Stored int   `json:"stored"`
	Bytes  int64 `json:"bytes"`
}

// LoadRequest asks the device to load images whose layers are in its
// content store or its engine.
type LoadRequest struct {
	Images []LoadImage `json:"images"`
}

// LoadImage is one image to load: its config and tags.
type LoadImage struct {
	Config []byte   `json:"config"`
	Tags   []string `json:"tags,omitempty"`
}

// LoadChainRequest asks the device to load a layer stack (diffIDs bottom
// first) from its content store ahead of the image it belongs to.
type LoadChainRequest struct {
	DiffIDs []string `json:"diff_ids"`
	Arch    string   `json:"arch,omitempty"`
}

// LoadResponse says what the engine loaded.
type LoadResponse struct {
	Images       []string `json:"images"`
	LayersLoaded int      `json:"layers_loaded"`
	BytesLoaded  int64    `json:"bytes_loaded"`
	Seconds      float64  `json:"seconds"`
}
