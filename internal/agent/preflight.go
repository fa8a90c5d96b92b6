package agent

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"

	"github.com/docker/docker/api/types/versions"

	"github.com/berth-robotics/berth/internal/localapi"
	"github.com/berth-robotics/berth/internal/reconcile"
	"github.com/berth-robotics/berth/internal/release"
)

// resolveImages pins every service's image to the engine's image ID,
// pulling it from its registry first where the service's pull_policy asks
// (always and the refresh kinds: every deploy; missing, if_not_present: when
// the engine lacks it). An unset pull_policy is berth's own: the laptop or
// server sends the images, and a missing one is refused. With plan set
// nothing is pulled; what would be is returned.
func (a *Agent) resolveImages(ctx context.Context, spec *release.Spec, plan bool) (pulls []string, err error) {
	var missing []string
	for _, name := range sortedNames(spec.Services) {
		s := spec.Services[name]
		policy := s.PullPolicy
		id, err := a.eng.ImageID(ctx, s.Image)
		if err != nil && !errors.Is(err, release.ErrNotFound) {
			return nil, err
		}
		present := err == nil
		pull := false
		switch {
		case policy == release.PullNever, policy == release.PullBuild, policy == "":
		case policy == release.PullMissing, policy == "if_not_present":
			pull = !present
		default: // always, refresh, daily, weekly, every_…: a deploy is when berth refreshes
			pull = s.ImageID == ""
		}
		if pull {
			pulls = append(pulls, fmt.Sprintf("%s (service %s, pull_policy %s)", s.Image, name, policy))
			if plan {
				continue
			}
			pid, perr := a.eng.Pull(ctx, s.Image, s.Platform, "")
			if perr != nil {
				if present {
					a.log.Warn("pull failed; using the image the engine has", "image", s.Image, "error", perr)
				} else {
					return nil, fmt.Errorf("service %s: image %s is not on the device and pulling it failed: %v; nothing changed; check the registry and the agent's Docker config (docker login as the agent's user), or send the image (berth push): %w", name, s.Image, perr, release.ErrNotFound)
				}
			} else {
				id, present = pid, true
			}
		}
		if !present {
			if plan && pull {
				continue
			}
			hint := ""
			if policy == "" {
				hint = " (or set pull_policy: missing to let the device pull it from its registry)"
			}
			missing = append(missing, fmt.Sprintf("%s (service %s)%s", s.Image, name, hint))
			continue
		}
		if s.ImageID != "" && s.ImageID != id {
			return nil, fmt.Errorf("service %s: image %s is %s on the device, not %s as pinned: %w", name, s.Image, release.ShortID(id), release.ShortID(s.ImageID), release.ErrConflict)
		}
		s.ImageID = id
		spec.Services[name] = s
	}
	if len(missing) > 0 {
		return pulls, fmt.Errorf("images not on the device's engine: %s; nothing changed; load them first (docker load, or berth push): %w", strings.Join(missing, ", "), release.ErrNotFound)
	}
	return pulls, nil
}

// preflightEngine refuses, before anything changes, a release the engine
// cannot run: a runtime it lacks, a GPU without the NVIDIA runtime, settings
// newer than its API.
func (a *Agent) preflightEngine(ctx context.Context, rel *release.Release) error {
	info, err := a.eng.Info(ctx)
	if err != nil {
		return err
	}
	has := func(rt string) bool { return slices.Contains(info.Runtimes, rt) }
	have := strings.Join(info.Runtimes, ", ")
	var problems []string
	for _, name := range sortedNames(rel.Spec.Services) {
		s := rel.Spec.Services[name]
		switch {
		case s.NeedsGPU() && !has("nvidia") && !nvidiaHook():
			problems = append(problems, fmt.Sprintf("service %s asks for an NVIDIA GPU (gpus, deploy.resources.reservations.devices or runtime: nvidia), but this engine has no nvidia runtime (it has %s): install the NVIDIA Container Toolkit on the device (nvidia-ctk runtime configure --runtime=docker) and restart dockerd", name, have))
		case s.Runtime != "" && !has(s.Runtime):
			problems = append(problems, fmt.Sprintf("service %s asks for runtime %q, which this engine lacks (it has %s): register it in the engine's daemon.json", name, s.Runtime, have))
		}
		api := info.APIVersion
		need := func(attr, v, engine string) {
			if versions.LessThan(api, v) {
				problems = append(problems, fmt.Sprintf("service %s: %s needs Docker Engine API %s (Engine %s); this engine speaks %s", name, attr, v, engine, api))
			}
		}
		if len(s.Annotations) > 0 {
			need("annotations", "1.43", "24")
		}
		for _, m := range s.Mounts {
			if m.Subpath != "" {
				need("a volume's subpath", "1.45", "26")
			}
		}
		for n, ref := range s.Networks {
			if ref.MacAddress != "" {
				need("networks."+n+".mac_address", "1.44", "25")
			}
		}
		if s.Healthcheck != nil && s.Healthcheck.StartInterval != nil {
			need("healthcheck.start_interval", "1.44", "25")
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("release refused, nothing changed, the running release keeps running: %s: %w", strings.Join(problems, "; "), release.ErrInvalid)
	}
	return nil
}

// nvidiaHook reports whether the NVIDIA Container Toolkit's hook, which the
// engine runs for GPU device requests, is on this machine.
func nvidiaHook() bool {
	_, err := exec.LookPath("nvidia-container-runtime-hook")
	return err == nil
}

// Plan answers what a deploy of req would do to app, changing nothing: the
// release it would make, the images it would pull and the steps of the
// switch against the containers that run now.
func (a *Agent) Plan(ctx context.Context, app string, req localapi.DeployRequest) (*localapi.PlanResponse, error) {
	rel := &release.Release{App: app, Version: req.Version, Spec: req.Spec}
	if rel.Version == "" {
		rel.Version = "unversioned"
	}
	if err := rel.Validate(); err != nil {
		return nil, fmt.Errorf("release refused: %w", err)
	}
	if _, err := a.bindFiles(&rel.Spec, req.Files); err != nil {
		return nil, err
	}
	resp := &localapi.PlanResponse{App: app, Version: rel.Version}
	pulls, err := a.resolveImages(ctx, &rel.Spec, true)
	resp.Pulls = pulls
	if err != nil {
		return nil, err
	}
	if len(pulls) == 0 {
		if err := rel.Spec.Bind(); err != nil {
			return nil, err
		}
		rel.Seal()
		resp.Release = rel.ID
	}
	if err := a.preflightEngine(ctx, rel); err != nil {
		return nil, err
	}
	rec, err := a.store.record(app)
	if err != nil {
		return nil, err
	}
	resp.Current = rec.Current
	observed, err := a.eng.Containers(ctx, app)
	if err != nil {
		return nil, err
	}
	steps, err := reconcile.Plan(rel, observed)
	if err != nil {
		return nil, fmt.Errorf("release refused: %w", err)
	}
	resp.NoChange = steps == nil && rec.Current == rel.ID && rel.ID != ""
	for _, s := range steps {
		resp.Steps = append(resp.Steps, s.String())
	}
	return resp, nil
}
