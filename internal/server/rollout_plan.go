package server

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/store"
)

// rolloutParams checks a start request and fills in the defaults; the
// canary's device count waits for the devices (planStages).
func rolloutParams(req serverapi.StartRolloutRequest) (serverapi.RolloutParams, error) {
	p := serverapi.RolloutParams{
		Canary: req.Canary, Batch: req.Batch, MaxFailures: req.MaxFailures, StageTimeout: req.StageTimeout,
		Devices: req.Devices, Tag: req.Tag,
	}
	if p.Canary == "" {
		p.Canary = serverapi.DefaultCanary
	}
	if _, err := canaryCount(p.Canary, 1); err != nil {
		return p, err
	}
	if p.Batch == 0 {
		p.Batch = serverapi.DefaultBatch
	}
	if p.MaxFailures == 0 {
		p.MaxFailures = serverapi.DefaultMaxFailures
	}
	if p.StageTimeout == 0 {
		p.StageTimeout = release.Duration(serverapi.DefaultStageTimeout)
	}
	switch {
	case p.Batch < 0 || p.Batch > 100000:
		return p, fmt.Errorf("batch %d: want a number of devices from 1 to 100000: %w", p.Batch, release.ErrInvalid)
	case p.MaxFailures < 0:
		return p, fmt.Errorf("max_failures %d: want 1 or more (failures that pause the rollout): %w", p.MaxFailures, release.ErrInvalid)
	case p.StageTimeout.D() < time.Second || p.StageTimeout.D() > 7*24*time.Hour:
		return p, fmt.Errorf("stage_timeout %s: want from 1s to 168h: %w", p.StageTimeout.D(), release.ErrInvalid)
	case len(p.Devices) > 100000:
		return p, fmt.Errorf("more than 100000 devices named: %w", release.ErrInvalid)
	case p.Tag != "" && !validName(p.Tag):
		return p, fmt.Errorf("tag %q: use 1 to 63 letters, digits, '.', '-' and '_': %w", p.Tag, release.ErrInvalid)
	}
	return p, nil
}

// canaryCount reads a canary size, "N" devices or "P%" of n (rounded up,
// at least one if P > 0), at most n.
func canaryCount(s string, n int) (int, error) {
	bad := fmt.Errorf("canary %q: want a number of devices (\"2\") or a percentage (\"5%%\"); \"0\" for none: %w", s, release.ErrInvalid)
	if pct, ok := strings.CutSuffix(s, "%"); ok {
		p, err := strconv.ParseFloat(pct, 64)
		if err != nil || p < 0 || p > 100 {
			return 0, bad
		}
		c := int(p * float64(n) / 100)
		if float64(c)*100 < p*float64(n) {
			c++ // round up: 5% of 10 devices is one canary, not none
		}
		return min(c, n), nil
	}
	c, err := strconv.Atoi(s)
	if err != nil || c < 0 || c > 100000 {
		return 0, bad
	}
	return min(c, n), nil
}

// planStages orders a rollout's devices and gives each its stage: the
// canary (stage 0, if any), then batches. Online devices go first, so that
// the canary is a device that can answer; then by name, so that the plan
// is the same whoever asks.
func planStages(devices []store.Device, online func(store.Device) bool, p *serverapi.RolloutParams) ([]store.RolloutDevice, error) {
	ds := slices.Clone(devices)
	slices.SortStableFunc(ds, func(a, b store.Device) int {
		if oa, ob := online(a), online(b); oa != ob {
			if oa {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.Name, b.Name)
	})
	canary, err := canaryCount(p.Canary, len(ds))
	if err != nil {
		return nil, err
	}
	p.CanaryDevices = canary
	out := make([]store.RolloutDevice, len(ds))
	for i, d := range ds {
		stage := 0
		if i >= canary {
			stage = (i - canary) / p.Batch
			if canary > 0 {
				stage++
			}
		}
		out[i] = store.RolloutDevice{DeviceID: d.ID, Stage: stage}
	}
	return out, nil
}

// rolloutState is what the server records in a rollout as it goes (the
// store's Rollout.State).
type rolloutState struct {
	// Reason says why it is paused or aborted.
	Reason string `json:"reason,omitempty"`
	// Acked failures were there when it was last resumed: they no longer
	// count against max_failures.
	Acked int `json:"acked_failures,omitempty"`
}

func (st rolloutState) encode() json.RawMessage {
	b, _ := json.Marshal(st)
	return b
}

// decodeRollout reads a stored rollout's params and state; what does not
// decode reads as the zero value (defaults apply), never as an error: a
// rollout must stay readable and abortable.
func decodeRollout(ro store.Rollout) (serverapi.RolloutParams, rolloutState) {
	var p serverapi.RolloutParams
	var st rolloutState
	_ = json.Unmarshal(ro.Params, &p)
	_ = json.Unmarshal(ro.State, &st)
	if p.MaxFailures <= 0 {
		p.MaxFailures = serverapi.DefaultMaxFailures
	}
	if p.StageTimeout <= 0 {
		p.StageTimeout = release.Duration(serverapi.DefaultStageTimeout)
	}
	return p, st
}

// moved reports whether a device status means the rollout changed the
// device's target (and an abort must return it).
func moved(status string) bool {
	switch status {
	case serverapi.RolloutDeviceUpdating, serverapi.RolloutDeviceHealthy, serverapi.RolloutDeviceFailed:
		return true
	}
	return false
}

// settled reports whether a device of a stage has its verdict.
func settled(status string) bool {
	switch status {
	case serverapi.RolloutDeviceHealthy, serverapi.RolloutDeviceFailed, serverapi.RolloutDeviceSkipped, serverapi.RolloutDeviceReverted:
		return true
	}
	return false
}
