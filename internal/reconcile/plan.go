// Package reconcile turns "this app should run release B" into steps and runs
// them. Plan and PlanRollback are pure functions of the releases and the
// containers observed on the engine, so a plan can be recomputed at any time
// (after a crash, say) and golden-tested without an engine. Apply runs a plan,
// recording a journal entry before every step.
package reconcile

import (
	"fmt"
	"sort"
	"strings"

	"github.com/berth-robotics/berth/internal/release"
)

// Kind is what a step does.
type Kind string

// The step kinds, in the order a switch usually runs them.
const (
	KindEnsureVolume  Kind = "ensure-volume"
	KindEnsureNetwork Kind = "ensure-network"
	KindFetch         Kind = "fetch"    // make the service's image present
	KindLock          Kind = "lock"     // wait for the app's update locks and maintenance window
	KindStop          Kind = "stop"     // stop a container, keeping it for rollback
	KindRemove        Kind = "remove"   // remove a stopped container (never volumes)
	KindStart         Kind = "start"    // create the service's container if missing, start it
	KindWait          Kind = "wait"     // wait until a service meets a depends_on condition
	KindHandover      Kind = "handover" // wait for the new container's readiness signal
	KindVerify        Kind = "verify"   // health-gate the whole release
	KindCommit        Kind = "commit"   // remove what the release does not use
)

// Step is one action of a plan. Container names an existing container;
// Service with a target release means "the target's container of Service".
type Step struct {
	Kind      Kind   `json:"kind"`
	Service   string `json:"service,omitempty"`
	Name      string `json:"name,omitempty"`
	Container string `json:"container,omitempty"`
	Image     string `json:"image,omitempty"`
	Condition string `json:"condition,omitempty"`
}

func (s Step) String() string {
	var b strings.Builder
	b.WriteString(string(s.Kind))
	for _, f := range []string{s.Service, s.Name, s.Condition} {
		if f != "" {
			b.WriteString(" " + f)
		}
	}
	if s.Container != "" {
		b.WriteString(" " + release.ShortID(s.Container))
	}
	return b.String()
}

// Phase is the app phase while this step runs.
func (s Step) Phase() release.Phase {
	switch s.Kind {
	case KindFetch:
		return release.PhaseDownloading
	case KindLock:
		return release.PhaseWaitingLock
	case KindVerify:
		return release.PhaseVerifying
	case KindCommit:
		return release.PhaseCommitting
	}
	return release.PhaseSwitching
}

// byService groups observed containers by service.
func byService(observed []release.Container) map[string][]release.Container {
	m := map[string][]release.Container{}
	for _, c := range observed {
		m[c.Service] = append(m[c.Service], c)
	}
	return m
}

// Plan returns the steps that switch an app from what is observed to target.
// It returns nil when the target already runs (every service's container up
// and nothing stale left): a no-change redeploy does nothing.
func Plan(target *release.Release, observed []release.Container) ([]Step, error) {
	order, err := target.Spec.Order()
	if err != nil {
		return nil, err
	}
	have := byService(observed)
	var prep, fetch, sw []Step
	prep = append(prep, resourceSteps(target)...)

	// Services the target drops stop first, so they free ports and devices.
	var gone []string
	for svc := range have {
		if _, ok := target.Spec.Services[svc]; !ok {
			gone = append(gone, svc)
		}
	}
	sort.Strings(gone)
	for _, svc := range gone {
		for _, c := range have[svc] {
			if c.State != "exited" && c.State != "created" && c.State != "dead" {
				sw = append(sw, Step{Kind: KindStop, Service: svc, Container: c.ID})
			}
		}
	}

	waits := waitedOn(target)
	changed := false
	for _, svc := range order {
		s := target.Spec.Services[svc]
		hash := s.Hash()
		var olds []release.Container
		var cur *release.Container
		for i, c := range have[svc] {
			if c.SpecHash == hash {
				cur = &have[svc][i]
			} else {
				olds = append(olds, c)
			}
		}
		upToDate := cur != nil && (cur.Running() || (cur.State == "exited" && cur.ExitCode == 0 && waits[svc] == release.ConditionCompletedSuccessfully))
		var running []release.Container
		for _, o := range olds {
			if o.State == "running" || o.State == "restarting" || o.State == "paused" {
				running = append(running, o)
			}
		}
		if upToDate && len(running) == 0 {
			continue
		}
		changed = true
		stopOld := func() {
			for _, o := range running {
				sw = append(sw, Step{Kind: KindStop, Service: svc, Container: o.ID})
			}
		}
		switch s.Strategy() {
		case release.StrategyKillThenDownload:
			stopOld()
			sw = append(sw, Step{Kind: KindFetch, Service: svc, Image: s.Image})
			sw = append(sw, Step{Kind: KindStart, Service: svc})
		case release.StrategyDeleteThenDownload:
			stopOld()
			for _, o := range olds {
				sw = append(sw, Step{Kind: KindRemove, Service: svc, Container: o.ID})
			}
			sw = append(sw, Step{Kind: KindFetch, Service: svc, Image: s.Image})
			sw = append(sw, Step{Kind: KindStart, Service: svc})
		case release.StrategyHandOver:
			fetch = append(fetch, Step{Kind: KindFetch, Service: svc, Image: s.Image})
			sw = append(sw, Step{Kind: KindStart, Service: svc})
			if len(running) > 0 {
				sw = append(sw, Step{Kind: KindHandover, Service: svc})
			}
			stopOld()
		default: // download-then-kill
			fetch = append(fetch, Step{Kind: KindFetch, Service: svc, Image: s.Image})
			stopOld()
			sw = append(sw, Step{Kind: KindStart, Service: svc})
		}
		if cond := waits[svc]; cond != "" && cond != release.ConditionStarted {
			sw = append(sw, Step{Kind: KindWait, Service: svc, Condition: cond})
		}
	}
	if !changed && len(gone) == 0 && !hasStale(observed, target) {
		return nil, nil
	}
	steps := append(prep, fetch...)
	steps = append(steps, Step{Kind: KindLock})
	steps = append(steps, sw...)
	steps = append(steps, Step{Kind: KindVerify}, Step{Kind: KindCommit})
	return steps, nil
}

// PlanRollback returns the steps that bring an app back to target, the last
// good release, from whatever is observed: containers of any other spec are
// stopped and removed, the target's own are started (created again if they
// are gone). A nil target removes the app's containers; volumes always stay.
func PlanRollback(target *release.Release, observed []release.Container) ([]Step, error) {
	have := byService(observed)
	var steps []Step
	keep := map[string]string{} // service → spec hash to keep
	var order []string
	if target != nil {
		var err error
		if order, err = target.Spec.Order(); err != nil {
			return nil, err
		}
		for svc, s := range target.Spec.Services {
			keep[svc] = s.Hash()
		}
		steps = append(steps, resourceSteps(target)...)
	}
	services := make([]string, 0, len(have))
	for svc := range have {
		services = append(services, svc)
	}
	sort.Strings(services)
	for _, svc := range services {
		for _, c := range have[svc] {
			if c.SpecHash != keep[svc] {
				steps = append(steps, Step{Kind: KindStop, Service: svc, Container: c.ID}, Step{Kind: KindRemove, Service: svc, Container: c.ID})
			}
		}
	}
	if target != nil {
		waits := waitedOn(target)
		for _, svc := range order {
			hash := keep[svc]
			upToDate := false
			for _, c := range have[svc] {
				if c.SpecHash == hash && (c.Running() || (c.State == "exited" && c.ExitCode == 0 && waits[svc] == release.ConditionCompletedSuccessfully)) {
					upToDate = true
				}
			}
			if !upToDate {
				steps = append(steps, Step{Kind: KindStart, Service: svc})
				if cond := waits[svc]; cond != "" && cond != release.ConditionStarted {
					steps = append(steps, Step{Kind: KindWait, Service: svc, Condition: cond})
				}
			}
		}
	}
	return append(steps, Step{Kind: KindCommit}), nil
}

// Restored checks that target runs as observed: each service's container
// of the target's spec up, or a one-shot job that others wait for exited 0.
func Restored(target *release.Release, observed []release.Container) error {
	waits := waitedOn(target)
	have := byService(observed)
	for _, svc := range sortedKeys(target.Spec.Services) {
		hash := target.Spec.Services[svc].Hash()
		state := "missing"
		for _, c := range have[svc] {
			if c.SpecHash != hash {
				continue
			}
			if c.Running() || (c.State == "exited" && c.ExitCode == 0 && waits[svc] == release.ConditionCompletedSuccessfully) {
				state = ""
				break
			}
			state = c.State
		}
		if state != "" {
			return &Failure{Service: svc, Reason: "not running after the rollback (" + state + ")"}
		}
	}
	return nil
}

func resourceSteps(target *release.Release) []Step {
	var steps []Step
	for _, v := range sortedKeys(target.Spec.Volumes) {
		steps = append(steps, Step{Kind: KindEnsureVolume, Name: v})
	}
	for _, n := range NetworksUsed(target) {
		steps = append(steps, Step{Kind: KindEnsureNetwork, Name: n})
	}
	return steps
}

// NetworksUsed lists the compose networks the release's services attach to,
// "default" included when a service names none.
func NetworksUsed(r *release.Release) []string {
	set := map[string]bool{}
	for _, s := range r.Spec.Services {
		if s.NetworkMode != "" {
			continue
		}
		if len(s.Networks) == 0 {
			set["default"] = true
		}
		for n := range s.Networks {
			set[n] = true
		}
	}
	return sortedKeys(set)
}

// waitedOn maps a service to the strongest condition a dependent waits for.
func waitedOn(r *release.Release) map[string]string {
	rank := map[string]int{release.ConditionStarted: 1, release.ConditionHealthy: 2, release.ConditionCompletedSuccessfully: 3}
	out := map[string]string{}
	for _, s := range r.Spec.Services {
		for dep, d := range s.DependsOn {
			if _, ok := r.Spec.Services[dep]; ok && rank[d.Condition] > rank[out[dep]] {
				out[dep] = d.Condition
			}
		}
	}
	return out
}

// hasStale reports containers of the app that the target does not use.
func hasStale(observed []release.Container, target *release.Release) bool {
	for _, c := range observed {
		s, ok := target.Spec.Services[c.Service]
		if !ok || c.SpecHash != s.Hash() {
			return true
		}
	}
	return false
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Describe renders a plan one step a line, for logs and golden files.
func Describe(steps []Step) string {
	var b strings.Builder
	for i, s := range steps {
		fmt.Fprintf(&b, "%2d %s\n", i+1, s)
	}
	return b.String()
}
