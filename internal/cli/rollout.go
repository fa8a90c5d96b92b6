package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
)

// watchEvery is how often `rollout status --watch` asks the server.
const watchEvery = time.Second

// newRollout is `berth rollout`: staged rollouts on a fleet server.
func newRollout() *cobra.Command {
	var sf serverFlags
	var fleet string
	var asJSON bool
	c := &cobra.Command{
		Use:   "rollout",
		Short: "Move a fleet to a release in stages, canary first; watch, pause, resume, abort",
		Long: `rollout moves a fleet's devices to a release in stages: a canary first (one
device by default), then batches. Each stage waits until its devices report the
release running and healthy; a device that rolls it back, or does not get there
within the stage timeout, counts as failed, and at --max-failures the rollout
pauses itself, leaving the devices it has not reached untouched. resume goes
on; abort returns every device it moved to the release it had before.
ROLLOUT is a rollout's ID, or a unique start of it.`,
	}
	addServerFlags(c, &sf)
	c.PersistentFlags().StringVar(&fleet, "fleet", "", "the fleet (name or ID; required)")
	needFleet := func() error {
		if fleet == "" {
			return errors.New("which fleet? give --fleet")
		}
		return nil
	}
	jsonFlag := func(c *cobra.Command) { c.Flags().BoolVar(&asJSON, "json", false, "print JSON") }

	var req serverapi.StartRolloutRequest
	var rel string
	var timeout time.Duration
	start := &cobra.Command{
		Use:   "start --fleet FLEET --release RELEASE [--canary N|P%] [--batch N] [--max-failures K] [--stage-timeout 10m] [--devices A,B] [--tag T] [--json]",
		Short: "Start a rollout of a release to a fleet's devices (or those --devices and --tag pick)",
		Long: `start rolls RELEASE out to the fleet's devices — or to those named by --devices
and/or tagged --tag — less those pinned to another release of the app. Devices
online go first, then by name: the first --canary of them make the canary stage
(a number, or a percentage of the devices; 0 for none), the rest go in stages of
--batch. The canary moves at once; follow it with
  berth rollout status ROLLOUT --fleet FLEET --watch
Only one rollout per app and fleet can be running or paused at a time.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := needFleet(); err != nil {
				return err
			}
			if rel == "" {
				return errors.New("which release? give --release (berth release list --fleet " + fleet + ")")
			}
			return withClient(&sf, func(cl *serverapi.Client) error {
				ctx := c.Context()
				id, err := resolveRelease(ctx, cl, fleet, rel)
				if err != nil {
					return err
				}
				r := req
				r.Release, r.StageTimeout = id, release.Duration(timeout)
				ro, err := cl.StartRollout(ctx, fleet, r)
				if err != nil {
					return fmt.Errorf("start a rollout of %s in fleet %s: %w", rel, fleet, err)
				}
				if asJSON {
					return printJSON(c.OutOrStdout(), ro)
				}
				out := c.OutOrStdout()
				fmt.Fprintf(out, "rollout %s of %s %s (%s) started in fleet %s: %d device(s) in %d stage(s)\n",
					ro.ID, ro.App, ro.Version, release.ShortID(ro.Release), ro.Fleet, ro.Progress.Total, len(ro.Stages))
				fmt.Fprintf(out, "  follow it: berth rollout status %s --fleet %s --watch\n", ro.ID, ro.Fleet)
				return nil
			})
		},
	}
	start.Flags().StringVar(&rel, "release", "", "the release (ID, or a unique start of it)")
	start.Flags().StringVar(&req.Canary, "canary", serverapi.DefaultCanary, "the canary stage: a number of devices, or a percentage (\"5%\"); 0 for none")
	start.Flags().IntVar(&req.Batch, "batch", serverapi.DefaultBatch, "devices per stage after the canary")
	start.Flags().IntVar(&req.MaxFailures, "max-failures", serverapi.DefaultMaxFailures, "pause the rollout once this many devices failed")
	start.Flags().DurationVar(&timeout, "stage-timeout", serverapi.DefaultStageTimeout, "how long a device has to report the release healthy before it counts as failed (offline devices fail so)")
	start.Flags().StringSliceVar(&req.Devices, "devices", nil, "only these devices (names or IDs, comma-separated or repeated)")
	start.Flags().StringVar(&req.Tag, "tag", "", "only devices with this tag")
	jsonFlag(start)

	var watch bool
	status := &cobra.Command{
		Use:   "status [ROLLOUT] --fleet FLEET [--watch] [--json]",
		Short: "Show a rollout: its stages, failures with their reasons, each device",
		Long: `status shows a rollout: each stage's progress, the reason it paused, and each
device with its status, what it last reported, and why it failed. Without
ROLLOUT: the fleet's running or paused rollout, else its newest.
--watch follows it until it is no longer running: the exit status is 0 once it
completed, 1 if it paused or was aborted. With --json, --watch prints one JSON
object per line, each time it changes.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := needFleet(); err != nil {
				return err
			}
			return withClient(&sf, func(cl *serverapi.Client) error {
				ctx := c.Context()
				id, err := pickRollout(ctx, cl, fleet, args)
				if err != nil {
					return err
				}
				out := c.OutOrStdout()
				if !watch {
					ro, err := cl.Rollout(ctx, fleet, id)
					if err != nil {
						return fmt.Errorf("rollout %s: %w", id, err)
					}
					if asJSON {
						return printJSON(out, ro)
					}
					printRollout(out, ro, time.Now())
					return nil
				}
				return watchRollout(ctx, cl, fleet, id, asJSON, out)
			})
		},
	}
	status.Flags().BoolVarP(&watch, "watch", "w", false, "follow the rollout until it completes, pauses or is aborted")
	jsonFlag(status)

	var only string
	var limit int
	list := &cobra.Command{
		Use:   "list --fleet FLEET [--status S] [--json]",
		Short: "List a fleet's rollouts, newest first",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := needFleet(); err != nil {
				return err
			}
			return withClient(&sf, func(cl *serverapi.Client) error {
				rs, err := cl.Rollouts(c.Context(), fleet, only, limit)
				if err != nil {
					return fmt.Errorf("rollouts of %s: %w", fleet, err)
				}
				if asJSON {
					return printJSON(c.OutOrStdout(), nonNil(rs))
				}
				if len(rs) == 0 {
					fmt.Fprintf(c.OutOrStdout(), "no rollouts in fleet %s\n", fleet)
					return nil
				}
				tw := tabwriter.NewWriter(c.OutOrStdout(), 2, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ROLLOUT\tAPP\tVERSION\tRELEASE\tSTATUS\tSTAGE\tHEALTHY\tFAILED\tSTARTED\tBY")
				for _, r := range rs {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d/%d\t%d/%d\t%d\t%s\t%s\n", r.ID, r.App, r.Version, release.ShortID(r.Release), r.Status,
						r.Stage+1, len(r.Stages), r.Progress.Healthy, r.Progress.Total, r.Progress.Failed, r.Created.Local().Format("2006-01-02 15:04"), r.CreatedBy)
				}
				return tw.Flush()
			})
		},
	}
	list.Flags().StringVar(&only, "status", "", "only rollouts with this status: running, paused, completed or aborted")
	list.Flags().IntVar(&limit, "limit", 100, "at most this many (up to 1000)")
	jsonFlag(list)

	var reason string
	action := func(verb, short, long string, do func(ctx context.Context, cl *serverapi.Client, id string) (*serverapi.Rollout, error)) *cobra.Command {
		a := &cobra.Command{
			Use:   verb + " ROLLOUT --fleet FLEET [--json]",
			Short: short,
			Long:  long,
			Args:  cobra.ExactArgs(1),
			RunE: func(c *cobra.Command, args []string) error {
				if err := needFleet(); err != nil {
					return err
				}
				return withClient(&sf, func(cl *serverapi.Client) error {
					ctx := c.Context()
					id, err := resolveRollout(ctx, cl, fleet, args[0])
					if err != nil {
						return err
					}
					ro, err := do(ctx, cl, id)
					if err != nil {
						return fmt.Errorf("%s rollout %s: %w", verb, args[0], err)
					}
					if asJSON {
						return printJSON(c.OutOrStdout(), ro)
					}
					printRollout(c.OutOrStdout(), ro, time.Now())
					return nil
				})
			},
		}
		jsonFlag(a)
		return a
	}
	pause := action("pause", "Pause a running rollout: it moves no more devices until resumed",
		`pause stops a running rollout from moving more devices. Those already under way
go on, and their verdicts are recorded. --reason is kept with it.`,
		func(ctx context.Context, cl *serverapi.Client, id string) (*serverapi.Rollout, error) {
			return cl.PauseRollout(ctx, fleet, id, reason)
		})
	pause.Flags().StringVar(&reason, "reason", "", "why (kept with the rollout)")
	resume := action("resume", "Resume a paused rollout; the failures so far no longer count against --max-failures",
		`resume lets a paused rollout go on where it stood, at once. The devices that
failed so far stay as they are (abort returns them); --max-failures counts the
failures from now on.`,
		func(ctx context.Context, cl *serverapi.Client, id string) (*serverapi.Rollout, error) {
			return cl.ResumeRollout(ctx, fleet, id)
		})
	abort := action("abort", "Abort a rollout: every device it moved returns to the release it had before",
		`abort ends a running or paused rollout and returns every device it moved to the
release it had before (a device that had no release of the app loses it). A
device someone moved elsewhere meanwhile is left where it is. Aborting again
finishes an abort that was cut short.`,
		func(ctx context.Context, cl *serverapi.Client, id string) (*serverapi.Rollout, error) {
			return cl.AbortRollout(ctx, fleet, id, reason)
		})
	abort.Flags().StringVar(&reason, "reason", "", "why (kept with the rollout)")

	c.AddCommand(start, status, list, pause, resume, abort)
	return c
}

// pickRollout is status's rollout: the one named, else the fleet's active
// one, else its newest.
func pickRollout(ctx context.Context, cl *serverapi.Client, fleet string, args []string) (string, error) {
	if len(args) == 1 {
		return resolveRollout(ctx, cl, fleet, args[0])
	}
	rs, err := cl.Rollouts(ctx, fleet, "", 0)
	if err != nil {
		return "", fmt.Errorf("rollouts of %s: %w", fleet, err)
	}
	var active []serverapi.Rollout
	for _, r := range rs {
		if r.Status == serverapi.RolloutRunning || r.Status == serverapi.RolloutPaused {
			active = append(active, r)
		}
	}
	switch {
	case len(active) == 1:
		return active[0].ID, nil
	case len(active) > 1:
		var b strings.Builder
		for _, r := range active {
			fmt.Fprintf(&b, "\n  %s  %s %s, %s", r.ID, r.App, r.Version, r.Status)
		}
		return "", fmt.Errorf("fleet %s has %d active rollouts; name one:%s", fleet, len(active), b.String())
	case len(rs) == 0:
		return "", fmt.Errorf("no rollouts in fleet %s yet (berth rollout start)", fleet)
	}
	return rs[0].ID, nil
}

// resolveRollout turns a rollout ID, or a unique start of one, into the ID.
func resolveRollout(ctx context.Context, cl *serverapi.Client, fleet, ref string) (string, error) {
	if r, err := cl.Rollout(ctx, fleet, ref); err == nil {
		return r.ID, nil
	} else if !errors.Is(err, release.ErrNotFound) {
		return "", fmt.Errorf("rollout %s: %w", ref, err)
	}
	rs, err := cl.Rollouts(ctx, fleet, "", 1000)
	if err != nil {
		return "", fmt.Errorf("rollout %s: %w", ref, err)
	}
	var found []string
	for _, r := range rs {
		if len(ref) >= 4 && strings.HasPrefix(r.ID, ref) {
			found = append(found, r.ID)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return "", fmt.Errorf("no rollout %s in fleet %s (berth rollout list --fleet %s)", ref, fleet, fleet)
	}
	return "", fmt.Errorf("rollout %s: %d rollouts start so; give more of the ID", ref, len(found))
}

// watchRollout prints the rollout each time it changes until it is no
// longer running; it fails (quietly: the output says why) unless it
// completed.
func watchRollout(ctx context.Context, cl *serverapi.Client, fleet, id string, asJSON bool, out io.Writer) error {
	var last []byte
	for {
		ro, err := cl.Rollout(ctx, fleet, id)
		if err != nil {
			return fmt.Errorf("rollout %s: %w", id, err)
		}
		var b bytes.Buffer
		if asJSON {
			if err := json.NewEncoder(&b).Encode(ro); err != nil {
				return err
			}
		} else {
			printRollout(&b, ro, time.Now())
		}
		// Printed again when it moved, not whenever a time in it did.
		if key := watchKey(ro); !bytes.Equal(key, last) {
			last = key
			if !asJSON {
				fmt.Fprintf(out, "--- %s\n", time.Now().Format("15:04:05"))
			}
			out.Write(b.Bytes())
		}
		switch ro.Status {
		case serverapi.RolloutCompleted:
			return nil
		case serverapi.RolloutPaused, serverapi.RolloutAborted:
			return errSilent
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(watchEvery):
		}
	}
}

// watchKey is what of a rollout, changed, is worth printing again.
func watchKey(ro *serverapi.Rollout) []byte {
	type dev struct{ Status, Detail, Phase string }
	k := struct {
		Status, Reason string
		Stage          int
		Progress       serverapi.RolloutCounts
		Devices        []dev
	}{ro.Status, ro.Reason, ro.Stage, ro.Progress, nil}
	for _, d := range ro.Devices {
		k.Devices = append(k.Devices, dev{d.Status, d.Detail, d.Phase})
	}
	b, _ := json.Marshal(k)
	return b
}

func printRollout(out io.Writer, ro *serverapi.Rollout, now time.Time) {
	fmt.Fprintf(out, "rollout %s of %s %s (%s) in fleet %s: %s\n", ro.ID, ro.App, ro.Version, release.ShortID(ro.Release), ro.Fleet, ro.Status)
	if ro.Reason != "" {
		fmt.Fprintf(out, "  reason: %s\n", ro.Reason)
	}
	p := ro.Params
	canary := "no canary"
	if p.CanaryDevices > 0 {
		canary = fmt.Sprintf("canary %s (%d device(s))", p.Canary, p.CanaryDevices)
	}
	scope := "the whole fleet"
	switch {
	case len(p.Devices) > 0 && p.Tag != "":
		scope = fmt.Sprintf("devices %s tagged %s", strings.Join(p.Devices, ","), p.Tag)
	case len(p.Devices) > 0:
		scope = "devices " + strings.Join(p.Devices, ",")
	case p.Tag != "":
		scope = "devices tagged " + p.Tag
	}
	fmt.Fprintf(out, "  %s, then batches of %d; pauses at %d failure(s); stage timeout %s; %s\n", canary, p.Batch, p.MaxFailures, p.StageTimeout.D(), scope)
	fmt.Fprintf(out, "  started by %s %s, last change %s\n", ro.CreatedBy, ago(ro.Created, now), ago(ro.Updated, now))
	c := ro.Progress
	fmt.Fprintf(out, "  progress: %d/%d healthy, %d failed (%d counting), %d updating, %d pending", c.Healthy, c.Total, c.Failed, ro.Failures, c.Updating, c.Pending)
	if c.Skipped > 0 {
		fmt.Fprintf(out, ", %d skipped", c.Skipped)
	}
	if c.Reverted > 0 {
		fmt.Fprintf(out, ", %d returned by the abort", c.Reverted)
	}
	fmt.Fprintln(out)

	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STAGE\tDEVICES\tHEALTHY\tFAILED\tUPDATING\tPENDING\tSKIPPED\tREVERTED")
	for _, s := range ro.Stages {
		name := fmt.Sprint(s.Stage)
		if s.Canary {
			name += " canary"
		}
		if s.Stage == ro.Stage && (ro.Status == serverapi.RolloutRunning || ro.Status == serverapi.RolloutPaused) {
			name += " <"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", name, s.Total, s.Healthy, s.Failed, s.Updating, s.Pending, s.Skipped, s.Reverted)
	}
	tw.Flush()

	if len(ro.Devices) == 0 {
		return
	}
	fmt.Fprintln(out)
	tw = tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tSTAGE\tSTATUS\tONLINE\tPHASE\tRUNS\tDETAIL")
	for _, d := range ro.Devices {
		online := "no"
		if d.Online {
			online = "yes"
		}
		runs := "-"
		if d.FleetRelease != "" {
			runs = release.ShortID(d.FleetRelease)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", orDash(d.Name), d.Stage, d.Status, online, orDash(d.Phase), runs, orDash(d.Detail))
	}
	tw.Flush()
}
