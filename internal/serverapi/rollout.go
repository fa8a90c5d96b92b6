package serverapi

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/berth-robotics/berth/internal/release"
)

// Rollout statuses. Running and paused are active: one per fleet and app.
const (
	RolloutRunning   = "running"
	RolloutPaused    = "paused"
	RolloutCompleted = "completed"
	RolloutAborted   = "aborted"
)

// The statuses of a device in a rollout.
const (
	RolloutDevicePending  = "pending"  // its stage has not come (or the rollout stopped before it)
	RolloutDeviceUpdating = "updating" // moved to the release; no verdict yet
	RolloutDeviceHealthy  = "healthy"  // reported the release running and verified healthy
	RolloutDeviceFailed   = "failed"   // reported it rolled the release back, or no healthy report within the stage timeout
	RolloutDeviceSkipped  = "skipped"  // pinned to another release when its stage came, or moved elsewhere meanwhile
	RolloutDeviceReverted = "reverted" // dealt with by an abort: returned to the release it had before
)

// Rollout defaults, for the fields a StartRolloutRequest leaves out.
const (
	DefaultCanary       = "1"
	DefaultBatch        = 10
	DefaultMaxFailures  = 1
	DefaultStageTimeout = 10 * time.Minute
)

// StartRolloutRequest is the body of POST /v1/fleets/{fleet}/rollouts:
// move the fleet's devices (or those the filters pick) to a release in
// stages, canary first.
type StartRolloutRequest struct {
	Release string `json:"release"`
	// Canary is the first stage: "N" devices, or "P%" of the rollout's
	// (rounded up); "0" for none. Default "1".
	Canary string `json:"canary,omitempty"`
	// Batch is how many devices each later stage moves. Default 10.
	Batch int `json:"batch,omitempty"`
	// MaxFailures failed devices pause the rollout. Default 1.
	MaxFailures int `json:"max_failures,omitempty"`
	// StageTimeout is how long a device has, from its move, to report the
	// release healthy; then it counts as failed. Default 10m.
	StageTimeout release.Duration `json:"stage_timeout,omitempty"`
	// Devices (names or IDs) and Tag, if given, narrow the rollout to
	// those devices of the fleet (both: devices that are both).
	Devices []string `json:"devices,omitempty"`
	Tag     string   `json:"tag,omitempty"`
}

// RolloutParams are a rollout's settings as the server took them: the
// request's, defaults filled in.
type RolloutParams struct {
	Canary string `json:"canary"`
	// CanaryDevices is how many devices the canary stage holds.
	CanaryDevices int              `json:"canary_devices"`
	Batch         int              `json:"batch"`
	MaxFailures   int              `json:"max_failures"`
	StageTimeout  release.Duration `json:"stage_timeout"`
	Devices       []string         `json:"devices,omitempty"`
	Tag           string           `json:"tag,omitempty"`
}

// Rollout is a rollout as operators see it.
type Rollout struct {
	ID      string `json:"id"`
	FleetID string `json:"fleet_id"`
	Fleet   string `json:"fleet"`
	Release string `json:"release"`
	App     string `json:"app"`
	Version string `json:"version"`
	Status  string `json:"status"`
	// Reason says why it paused or was aborted (while it is so).
	Reason string        `json:"reason,omitempty"`
	Params RolloutParams `json:"params"`
	// Stage is the stage under way (or where it stopped); Stages counts
	// each stage's devices by status, stage 0 first.
	Stage  int            `json:"stage"`
	Stages []RolloutStage `json:"stages"`
	// Progress counts all of its devices by status.
	Progress RolloutCounts `json:"progress"`
	// Failures is how many failed devices count against max_failures:
	// those a resume acknowledged do not.
	Failures  int       `json:"failures"`
	CreatedBy string    `json:"created_by"`
	Created   time.Time `json:"created"`
	Updated   time.Time `json:"updated"`
	// Devices are its devices, by stage (GET one only).
	Devices []RolloutDevice `json:"devices,omitempty"`
}

// RolloutCounts counts devices by their status in a rollout.
type RolloutCounts struct {
	Total    int `json:"total"`
	Pending  int `json:"pending"`
	Updating int `json:"updating"`
	Healthy  int `json:"healthy"`
	Failed   int `json:"failed"`
	Skipped  int `json:"skipped"`
	Reverted int `json:"reverted"`
}

// Add counts one device of status.
func (c *RolloutCounts) Add(status string) {
	c.Total++
	switch status {
	case RolloutDevicePending:
		c.Pending++
	case RolloutDeviceUpdating:
		c.Updating++
	case RolloutDeviceHealthy:
		c.Healthy++
	case RolloutDeviceFailed:
		c.Failed++
	case RolloutDeviceSkipped:
		c.Skipped++
	case RolloutDeviceReverted:
		c.Reverted++
	}
}

// RolloutStage is one stage of a rollout.
type RolloutStage struct {
	Stage  int  `json:"stage"`
	Canary bool `json:"canary,omitempty"`
	RolloutCounts
}

// RolloutDevice is one device's part in a rollout.
type RolloutDevice struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Stage  int    `json:"stage"`
	Status string `json:"status"`
	// Detail says why it failed (the device's own reason, or the
	// timeout), was skipped, or what an abort did with it.
	Detail string `json:"detail,omitempty"`
	// PreviousRelease is the release of the app it had when the rollout
	// moved it ("" for none); an abort returns it there.
	PreviousRelease string    `json:"previous_release,omitempty"`
	Updated         time.Time `json:"updated"`
	Online          bool      `json:"online"`
	// From its last state report, for the app: the phase, the fleet
	// release it runs, and its error.
	Phase        string `json:"phase,omitempty"`
	FleetRelease string `json:"fleet_release,omitempty"`
	Error        string `json:"error,omitempty"`
}

// RolloutActionRequest is the (optional) body of pause and abort.
type RolloutActionRequest struct {
	Reason string `json:"reason,omitempty"`
}

func rolloutsPath(fleet string) string { return "/v1/fleets/" + esc(fleet) + "/rollouts" }

// StartRollout starts a rollout in a fleet.
func (c *Client) StartRollout(ctx context.Context, fleet string, req StartRolloutRequest) (*Rollout, error) {
	var r Rollout
	return &r, c.send(ctx, http.MethodPost, rolloutsPath(fleet), req, &r)
}

// Rollouts lists a fleet's rollouts, newest first; status, if set, keeps
// only those.
func (c *Client) Rollouts(ctx context.Context, fleet, status string, limit int) ([]Rollout, error) {
	v := url.Values{}
	if status != "" {
		v.Set("status", status)
	}
	if limit > 0 {
		v.Set("limit", strconv.Itoa(limit))
	}
	path := rolloutsPath(fleet)
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	var rs []Rollout
	return rs, c.get(ctx, path, &rs)
}

// Rollout returns one of a fleet's rollouts, with its devices.
func (c *Client) Rollout(ctx context.Context, fleet, id string) (*Rollout, error) {
	var r Rollout
	return &r, c.get(ctx, rolloutsPath(fleet)+"/"+esc(id), &r)
}

// PauseRollout stops a running rollout from moving more devices.
func (c *Client) PauseRollout(ctx context.Context, fleet, id, reason string) (*Rollout, error) {
	var r Rollout
	return &r, c.send(ctx, http.MethodPost, rolloutsPath(fleet)+"/"+esc(id)+"/pause", RolloutActionRequest{Reason: reason}, &r)
}

// ResumeRollout lets a paused rollout go on; the failures so far no
// longer count against its max_failures.
func (c *Client) ResumeRollout(ctx context.Context, fleet, id string) (*Rollout, error) {
	var r Rollout
	return &r, c.send(ctx, http.MethodPost, rolloutsPath(fleet)+"/"+esc(id)+"/resume", RolloutActionRequest{}, &r)
}

// AbortRollout ends a rollout and returns the devices it moved to the
// releases they had before. Asking again finishes an abort cut short.
func (c *Client) AbortRollout(ctx context.Context, fleet, id, reason string) (*Rollout, error) {
	var r Rollout
	return &r, c.send(ctx, http.MethodPost, rolloutsPath(fleet)+"/"+esc(id)+"/abort", RolloutActionRequest{Reason: reason}, &r)
}
