package server

import (
	"fmt"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/store"
)

func TestCanaryCount(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want int
		bad  bool
	}{
		{"1", 10, 1, false},
		{"0", 10, 0, false},
		{"25", 10, 10, false},
		{"10%", 10, 1, false},
		{"5%", 10, 1, false}, // rounded up: a canary, not none
		{"33%", 3, 1, false},
		{"34%", 3, 2, false},
		{"0%", 10, 0, false},
		{"100%", 7, 7, false},
		{"12.5%", 8, 1, false},
		{"", 10, 0, true},
		{"-1", 10, 0, true},
		{"101%", 10, 0, true},
		{"half", 10, 0, true},
		{"%", 10, 0, true},
	} {
		t.Run(fmt.Sprintf("%s_of_%d", tc.in, tc.n), func(t *testing.T) {
			got, err := canaryCount(tc.in, tc.n)
			if (err != nil) != tc.bad || got != tc.want {
				t.Errorf("canaryCount(%q, %d) = %d, %v; want %d, error %v", tc.in, tc.n, got, err, tc.want, tc.bad)
			}
		})
	}
}

// TestPlanStages: online devices first, then by name; the canary is stage
// 0, batches follow.
func TestPlanStages(t *testing.T) {
	var ds []store.Device
	for _, n := range []string{"e", "a", "d", "c", "b", "f"} {
		ds = append(ds, store.Device{ID: "id-" + n, Name: n})
	}
	offline := map[string]bool{"a": true, "c": true}
	online := func(d store.Device) bool { return !offline[d.Name] }
	for _, tc := range []struct {
		canary string
		batch  int
		want   []string // "name:stage" in order
	}{
		{"1", 2, []string{"b:0", "d:1", "e:1", "f:2", "a:2", "c:3"}},
		{"0", 4, []string{"b:0", "d:0", "e:0", "f:0", "a:1", "c:1"}},
		{"50%", 10, []string{"b:0", "d:0", "e:0", "f:1", "a:1", "c:1"}},
		{"9", 1, []string{"b:0", "d:0", "e:0", "f:0", "a:0", "c:0"}},
	} {
		t.Run(tc.canary, func(t *testing.T) {
			p := serverapi.RolloutParams{Canary: tc.canary, Batch: tc.batch}
			plan, err := planStages(ds, online, &p)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, d := range plan {
				got = append(got, fmt.Sprintf("%s:%d", d.DeviceID[3:], d.Stage))
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("plan (-want +got):\n%s", d)
			}
		})
	}
}

// TestRolloutParams: defaults, and what is refused.
func TestRolloutParams(t *testing.T) {
	p, err := rolloutParams(serverapi.StartRolloutRequest{Release: "x"})
	if err != nil || p.Canary != "1" || p.Batch != 10 || p.MaxFailures != 1 || p.StageTimeout.D() != serverapi.DefaultStageTimeout {
		t.Errorf("defaults: %+v, %v", p, err)
	}
	for name, req := range map[string]serverapi.StartRolloutRequest{
		"BadCanary":      {Canary: "x"},
		"NegativeBatch":  {Batch: -2},
		"NegativeMax":    {MaxFailures: -1},
		"TinyTimeout":    {StageTimeout: 1},
		"EndlessTimeout": {StageTimeout: 1 << 62},
		"BadTag":         {Tag: "no spaces"},
	} {
		if _, err := rolloutParams(req); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// The store's device statuses are the API's.
func TestRolloutStatusWords(t *testing.T) {
	for st, api := range map[string]string{
		store.RolloutDevicePending:  serverapi.RolloutDevicePending,
		store.RolloutDeviceUpdating: serverapi.RolloutDeviceUpdating,
		store.RolloutDeviceSkipped:  serverapi.RolloutDeviceSkipped,
	} {
		if st != api {
			t.Errorf("the store says %q, the API %q", st, api)
		}
	}
	for _, s := range []store.RolloutStatus{store.RolloutRunning, store.RolloutPaused, store.RolloutCompleted, store.RolloutAborted} {
		if !slices.Contains([]string{serverapi.RolloutRunning, serverapi.RolloutPaused, serverapi.RolloutCompleted, serverapi.RolloutAborted}, string(s)) {
			t.Errorf("rollout status %q is not the API's", s)
		}
	}
}
