package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-robotics/berth/internal/build"
	"github.com/berth-robotics/berth/internal/compose"
	"github.com/berth-robotics/berth/internal/localapi"
	"github.com/berth-robotics/berth/internal/release"
)

type deployFlags struct {
	project     projectFlags
	to          string
	version     string
	force       bool
	lockTimeout time.Duration
	overrideTTL time.Duration
	json        bool
	noPush      bool
	dryRun      bool
	acceptNew   bool
	build       buildFlags
}

func newDeploy(string) *cobra.Command {
	var f deployFlags
	c := &cobra.Command{
		Use:   "deploy [-f compose.yaml] [-p APP] --to TARGET",
		Short: "Switch an app on a device to the release a Compose file describes",
		Long: `deploy reads a Compose file, sends the release to the device's agent and
follows the switch: wait for update locks, switch each service by its update
strategy, verify health, then commit, or roll back to the running release.
It exits 0 once the release is committed and non-zero with the reason when it
was refused or rolled back. Services with a build: section are built first
when their image is stale (see berth build), for the device's platform; the
images are sent to the device unless it has them.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			f.acceptNew = acceptNewHostKey(c)
			return runDeploy(c.Context(), f, c.OutOrStdout())
		},
	}
	f.project.add(c, true)
	c.Flags().StringVar(&f.version, "version", "", "release version (default: git describe --tags --dirty --always)")
	c.Flags().BoolVar(&f.force, "force", false, "switch without waiting for update locks or maintenance windows")
	c.Flags().DurationVar(&f.lockTimeout, "lock-timeout", 0, "how long to wait for a held update lock (default: the agent's, 10m)")
	c.Flags().DurationVar(&f.overrideTTL, "override-ttl", 0, "on a fleet device: return the app to its fleet release this long after the deploy (default: until the next fleet release)")
	c.Flags().BoolVar(&f.json, "json", false, "print a JSON summary instead of progress")
	c.Flags().BoolVar(&f.noPush, "no-push", false, "do not send images from the local engine; the device must have them")
	c.Flags().BoolVar(&f.dryRun, "dry-run", false, "print what the deploy would do on the device (images to pull, the steps of the switch) and change nothing: no build, no image sent")
	f.build.add(c, true)
	addTarget(c, &f.to)
	return c
}

// deployResult is deploy's --json output.
type deployResult struct {
	App      string        `json:"app"`
	Release  string        `json:"release"`
	Version  string        `json:"version"`
	Result   release.Phase `json:"result"`
	NoChange bool          `json:"no_change"`
	Error    string        `json:"error,omitempty"`
	Seconds  float64       `json:"seconds"`
	// Transfer is what moving the images cost (absent with --no-push).
	Transfer []pushResult `json:"transfer,omitempty"`
}

func runDeploy(ctx context.Context, f deployFlags, out io.Writer) error {
	start := time.Now()
	p, err := f.project.load(ctx)
	if err != nil {
		return err
	}
	app, spec := p.App, p.Spec
	imageVersion := f.version // "" tags built images by git describe, with its dirty check
	if f.version == "" {
		f.version = gitVersion(p.Dir)
	}
	cl, err := dial(ctx, f.to, f.acceptNew)
	if err != nil {
		return err
	}
	defer cl.Close()
	if f.dryRun {
		return dryRun(ctx, cl, p, f, imageVersion, out)
	}
	if len(p.Builds) > 0 {
		platform := ""
		if !f.build.noBuild {
			info, err := cl.ContentInfo(ctx)
			if err != nil {
				return fmt.Errorf("ask %s for its platform: %w", f.to, err)
			}
			platform = info.OS + "/" + info.Arch
		}
		log := out
		if f.json {
			log = io.Discard
		}
		if err := buildStale(ctx, p, imageVersion, f.build, platform, log); err != nil {
			return err
		}
	}
	var moved []pushResult
	if !f.noPush {
		var images []string
		seen := map[string]bool{}
		for _, name := range sortedServices(spec) {
			if spec.Services[name].PullPolicy == release.PullAlways {
				continue // the device pulls it
			}
			if img := spec.Services[name].Image; !seen[img] {
				seen[img] = true
				images = append(images, img)
			}
		}
		if moved, err = push(ctx, cl, images, out, f.json, true); err != nil {
			return fmt.Errorf("deploy %s: sending images: %w", app, err)
		}
	}
	files, err := p.ReadFiles()
	if err != nil {
		return err
	}
	req := localapi.DeployRequest{Version: f.version, Spec: *spec, Force: f.force, LockTimeout: release.Duration(f.lockTimeout), By: whoDeploys(), OverrideTTL: release.Duration(f.overrideTTL), Files: files}
	resp, err := cl.Deploy(ctx, app, req)
	if err != nil {
		return fmt.Errorf("deploy %s to %s: %w", app, f.to, err)
	}
	res := deployResult{App: app, Release: resp.Release, Version: resp.Version, Result: release.PhaseIdle, NoChange: resp.NoChange, Transfer: moved}
	if !f.json {
		fmt.Fprintf(out, "deploying %s %s (release %s) to %s\n", app, resp.Version, release.ShortID(resp.Release), f.to)
	}
	if !resp.NoChange {
		last, err := follow(ctx, cl, app, resp, out, f.json, start)
		if err != nil {
			return err
		}
		res.Result, res.Error = last.Phase, last.Error
	}
	res.Seconds = time.Since(start).Seconds()
	if f.json {
		if err := printJSON(out, res); err != nil {
			return err
		}
	} else if res.NoChange {
		fmt.Fprintf(out, "%s is already running release %s; nothing to do (%.1fs)\n", app, release.ShortID(resp.Release), res.Seconds)
	} else if res.Result == release.PhaseIdle {
		fmt.Fprintf(out, "%s %s is running (release %s, %.1fs)\n", app, resp.Version, release.ShortID(resp.Release), res.Seconds)
	}
	if res.Result != release.PhaseIdle {
		if !f.json {
			fmt.Fprintf(out, "\n%s: release %s was not committed (%s):\n  %s\n", app, release.ShortID(resp.Release), res.Result, strings.ReplaceAll(res.Error, "\n", "\n  "))
			if res.Result == release.PhaseRolledBack {
				fmt.Fprintf(out, "The device runs what it ran before; see `berth status` and `berth logs --app %s`.\n", app)
			} else {
				fmt.Fprintf(out, "See `berth status` for what runs now, and `berth logs --app %s`.\n", app)
			}
		}
		return errSilent
	}
	return nil
}

// follow prints an operation's events until its last one, and returns that.
func follow(ctx context.Context, cl *localapi.Client, app string, resp *localapi.OpResponse, out io.Writer, quiet bool, start time.Time) (localapi.Event, error) {
	var last localapi.Event
	err := cl.Events(ctx, app, resp.Seq, true, func(e localapi.Event) bool {
		if e.Op != resp.Op {
			return true
		}
		if !quiet {
			line := fmt.Sprintf("%6.1fs  %-16s %s", time.Since(start).Seconds(), e.Phase, e.Message)
			if e.Error != "" && !e.Done {
				line += "\n           " + strings.ReplaceAll(e.Error, "\n", "\n           ")
			}
			fmt.Fprintln(out, line)
		}
		last = e
		return !e.Done
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		return last, fmt.Errorf("lost the agent while following the switch (it goes on there; see berth status): %w", err)
	}
	if !last.Done {
		return last, fmt.Errorf("stopped following; the switch goes on on the device (berth status): %w", ctx.Err())
	}
	return last, nil
}

func sortedServices(spec *release.Spec) []string {
	out := make([]string, 0, len(spec.Services))
	for n := range spec.Services {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// gitVersion is `git describe --tags --dirty --always` in dir, or "unversioned".
func gitVersion(dir string) string {
	out, err := exec.Command("git", "-C", dir, "describe", "--tags", "--dirty", "--always").Output()
	if err != nil {
		return "unversioned"
	}
	return strings.TrimSpace(string(out))
}

// whoDeploys names the person deploying, user@host, for a fleet device's
// override report.
func whoDeploys() string {
	name := os.Getenv("USER")
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

// dryRun prints what a deploy would do: the images it would build here, the
// ones the device would pull, and the switch against what runs there.
func dryRun(ctx context.Context, cl *localapi.Client, p *compose.Project, f deployFlags, imageVersion string, out io.Writer) error {
	if len(p.Builds) > 0 {
		v, err := buildVersion(ctx, p, imageVersion)
		if err != nil {
			return err
		}
		plan, err := build.NewPlan(p, v)
		if err != nil {
			return err
		}
		plan.Pin(p.Spec)
	}
	files, err := p.ReadFiles()
	if err != nil {
		return err
	}
	req := localapi.DeployRequest{Version: f.version, Spec: *p.Spec, Force: f.force, Files: files}
	resp, err := cl.Plan(ctx, p.App, req)
	if err != nil {
		return fmt.Errorf("plan a deploy of %s to %s: %w", p.App, f.to, err)
	}
	if f.json {
		return printJSON(out, resp)
	}
	cur := "nothing"
	if resp.Current != "" {
		cur = "release " + release.ShortID(resp.Current)
	}
	fmt.Fprintf(out, "dry run: %s %s on %s (runs %s now); nothing was changed\n", p.App, resp.Version, f.to, cur)
	for _, img := range resp.Pulls {
		fmt.Fprintf(out, "  pull %s\n", img)
	}
	switch {
	case resp.NoChange:
		fmt.Fprintf(out, "  release %s already runs; nothing to do\n", release.ShortID(resp.Release))
	case len(resp.Steps) == 0:
		fmt.Fprintln(out, "  every container is up to date; the deploy would only record the release")
	default:
		if resp.Release != "" {
			fmt.Fprintf(out, "  release %s, %d steps:\n", release.ShortID(resp.Release), len(resp.Steps))
		}
		for i, s := range resp.Steps {
			fmt.Fprintf(out, "  %2d %s\n", i+1, s)
		}
	}
	return nil
}
