package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
)

func newDevice() *cobra.Command {
	var sf serverFlags
	var fleet string
	var asJSON bool
	c := &cobra.Command{
		Use:   "device",
		Short: "List and inspect a fleet's devices; set their environment, pins and tags",
		Long: `device lists a fleet's devices with what they last reported, and changes
their settings on the fleet server. DEVICE is a device's ID, or its name
together with --fleet.`,
	}
	addServerFlags(c, &sf)
	c.PersistentFlags().StringVar(&fleet, "fleet", "", "the fleet (name or ID); lets DEVICE be a device's name")

	list := &cobra.Command{
		Use:   "list --fleet FLEET [--tag TAG] [--json]",
		Short: "List a fleet's devices: online or not, and their apps as they last reported them",
		Long: `list prints a fleet's devices. With --json it prints a list whose items have
"name", "online" (seen within three poll intervals) and "apps", shaped like
` + "`berth status --json`" + `'s apps, among other fields (docs/api.md).`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if fleet == "" {
				return errors.New("which fleet? give --fleet")
			}
			tag, _ := c.Flags().GetString("tag")
			return withClient(&sf, func(cl *serverapi.Client) error {
				ds, err := cl.Devices(c.Context(), fleet, tag)
				if err != nil {
					return fmt.Errorf("devices of %s: %w", fleet, err)
				}
				if asJSON {
					return printJSON(c.OutOrStdout(), ds)
				}
				if len(ds) == 0 {
					fmt.Fprintf(c.OutOrStdout(), "no devices in fleet %s yet: a device registers with the fleet's provisioning key\n", fleet)
					return nil
				}
				printDevices(c.OutOrStdout(), ds, time.Now())
				return nil
			})
		},
	}
	list.Flags().String("tag", "", "only devices with this tag")
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON (a list; items have name, online and apps)")

	show := &cobra.Command{
		Use:   "show DEVICE [--fleet FLEET] [--json]",
		Short: "Show a device: its target, what it reported, its tags and notes",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return withClient(&sf, func(cl *serverapi.Client) error {
				id, err := resolveDevice(c.Context(), cl, fleet, args[0])
				if err != nil {
					return err
				}
				d, err := cl.Device(c.Context(), id)
				if err != nil {
					return fmt.Errorf("device %s: %w", args[0], err)
				}
				if asJSON {
					return printJSON(c.OutOrStdout(), d)
				}
				printDevice(c.OutOrStdout(), d, time.Now())
				return nil
			})
		},
	}
	show.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	var ef envFlags
	env := &cobra.Command{
		Use:   "env DEVICE [KEY=VALUE ...] [--unset KEY] [--service SERVICE] [--fleet FLEET]",
		Short: "Show or change a device's environment layer (for every service, or one)",
		Long: `env shows the device's own environment variables, or sets and unsets some.
They override the fleet's layers: fleet < service < device < device-service,
each over the Compose file's own environment. A change reaches the device with
its next target, without rebuilding any image.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return withClient(&sf, func(cl *serverapi.Client) error {
				id, err := resolveDevice(c.Context(), cl, fleet, args[0])
				if err != nil {
					return err
				}
				return runEnv(c.Context(), cl, serverapi.EnvScope{Device: id, Service: ef.service}, args[1:], ef, c.OutOrStdout())
			})
		},
	}
	addEnvFlags(env, &ef)

	var rel, unpin string
	pin := &cobra.Command{
		Use:   "pin DEVICE --release RELEASE | --clear APP",
		Short: "Keep a device on a release of an app, whatever the fleet is assigned; or let it go again",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if (rel == "") == (unpin == "") {
				return errors.New("give --release RELEASE to pin, or --clear APP to unpin")
			}
			return withClient(&sf, func(cl *serverapi.Client) error {
				ctx := c.Context()
				id, err := resolveDevice(ctx, cl, fleet, args[0])
				if err != nil {
					return err
				}
				var d *serverapi.Device
				if unpin != "" {
					if d, err = cl.Unpin(ctx, id, unpin); err != nil {
						return fmt.Errorf("unpin %s on %s: %w", unpin, args[0], err)
					}
				} else {
					dev, err := cl.Device(ctx, id)
					if err != nil {
						return fmt.Errorf("device %s: %w", args[0], err)
					}
					relID, err := resolveRelease(ctx, cl, dev.FleetID, rel)
					if err != nil {
						return err
					}
					if d, err = cl.Pin(ctx, id, serverapi.PinRequest{Release: relID}); err != nil {
						return fmt.Errorf("pin %s: %w", args[0], err)
					}
				}
				if asJSON {
					return printJSON(c.OutOrStdout(), d)
				}
				printTarget(c.OutOrStdout(), d)
				return nil
			})
		},
	}
	pin.Flags().StringVar(&rel, "release", "", "the release (ID, or a unique start of it)")
	pin.Flags().StringVar(&unpin, "clear", "", "unpin this app: assignments move it again")
	pin.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	var remove []string
	tag := &cobra.Command{
		Use:   "tag DEVICE [TAG ...] [--remove TAG]",
		Short: "Add tags to a device, or remove some; with none, print its tags",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return withClient(&sf, func(cl *serverapi.Client) error {
				ctx := c.Context()
				id, err := resolveDevice(ctx, cl, fleet, args[0])
				if err != nil {
					return err
				}
				d, err := cl.Device(ctx, id)
				if err != nil {
					return fmt.Errorf("device %s: %w", args[0], err)
				}
				if len(args) > 1 || len(remove) > 0 {
					tags := slices.DeleteFunc(append(slices.Clone(d.Tags), args[1:]...), func(t string) bool { return slices.Contains(remove, t) })
					slices.Sort(tags)
					tags = slices.Compact(tags)
					if d, err = cl.UpdateDevice(ctx, id, serverapi.UpdateDeviceRequest{Tags: &tags}); err != nil {
						return fmt.Errorf("tag %s: %w", args[0], err)
					}
				}
				if asJSON {
					return printJSON(c.OutOrStdout(), d.Tags)
				}
				fmt.Fprintln(c.OutOrStdout(), strings.Join(d.Tags, " "))
				return nil
			})
		},
	}
	tag.Flags().StringSliceVar(&remove, "remove", nil, "tags to remove")
	tag.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	// retry and reclaim are one request: the app assigned again to the
	// release it has (a new generation). Two names, for the two states
	// they leave.
	var retryApp string
	renew := func(use, short, long string) *cobra.Command {
		cmd := &cobra.Command{
			Use:   use + " DEVICE --app APP [--fleet FLEET]",
			Short: short,
			Long:  long,
			Args:  cobra.ExactArgs(1),
			RunE: func(c *cobra.Command, args []string) error {
				if retryApp == "" {
					return errors.New("which app? give --app")
				}
				return withClient(&sf, func(cl *serverapi.Client) error {
					id, err := resolveDevice(c.Context(), cl, fleet, args[0])
					if err != nil {
						return err
					}
					d, err := cl.RetryApp(c.Context(), id, retryApp)
					if err != nil {
						return fmt.Errorf("%s %s on %s: %w", use, retryApp, args[0], err)
					}
					if asJSON {
						return printJSON(c.OutOrStdout(), d)
					}
					t := d.Target[retryApp]
					fmt.Fprintf(c.OutOrStdout(), "%s on %s: assigned again to release %s (generation %d); the device takes it at its next poll (berth device show %s)\n",
						retryApp, d.Name, release.ShortID(t.Release), t.Generation, d.Name)
					return nil
				})
			},
		}
		cmd.Flags().StringVar(&retryApp, "app", "", "the app (required)")
		cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON (the device)")
		return cmd
	}
	retry := renew("retry", "Try a release again on a device where it failed or was refused",
		`retry assigns the device's app again to the release it has. A release that
was rolled back on the device (failed) or that it refused is not tried again
on its own — not after an environment change, not after a restart — until
its app is assigned again: by this command, by assigning the release again
(berth release assign), or by a rollout. A LAN override on the device ends
too (see reclaim).`)
	reclaim := renew("reclaim", "End a LAN override on a device: it returns to its fleet release",
		`reclaim ends a LAN override: a berth deploy or berth rm over the LAN on a
fleet device stands in for the fleet's release until its --override-ttl runs
out or the app is assigned again. reclaim assigns it again, to the release it
has, and the device returns to it. (It is the same request as retry.)`)

	c.AddCommand(list, show, env, pin, tag, retry, reclaim)
	return c
}

// resolveDevice turns DEVICE into a device ID: a name in fleet, if given
// and such a device exists; else DEVICE itself.
func resolveDevice(ctx context.Context, cl *serverapi.Client, fleet, ref string) (string, error) {
	if fleet == "" {
		return ref, nil
	}
	ds, err := cl.DevicesPage(ctx, fleet, serverapi.DeviceQuery{Name: ref})
	if err != nil {
		return "", fmt.Errorf("device %s in fleet %s: %w", ref, fleet, err)
	}
	if len(ds) == 1 {
		return ds[0].ID, nil
	}
	return ref, nil
}

// resolveRelease turns a release ID, or a unique start of one (with or
// without "sha256:"), into the release's ID.
func resolveRelease(ctx context.Context, cl *serverapi.Client, fleet, ref string) (string, error) {
	if r, err := cl.Release(ctx, fleet, ref); err == nil {
		return r.ID, nil
	} else if !errors.Is(err, release.ErrNotFound) {
		return "", fmt.Errorf("release %s: %w", ref, err)
	}
	rs, err := cl.Releases(ctx, fleet, "", 1000)
	if err != nil {
		return "", fmt.Errorf("release %s: %w", ref, err)
	}
	want := strings.TrimPrefix(ref, "sha256:")
	var found []string
	for _, r := range rs {
		if len(want) >= 4 && strings.HasPrefix(strings.TrimPrefix(r.ID, "sha256:"), want) {
			found = append(found, r.ID)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return "", fmt.Errorf("no release %s in fleet %s (berth release list --fleet %s)", ref, fleet, fleet)
	}
	return "", fmt.Errorf("release %s: %d releases start so; give more of the ID", ref, len(found))
}

func printDevices(out io.Writer, ds []serverapi.Device, now time.Time) {
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tONLINE\tLAST SEEN\tAPPS\tTAGS\tID")
	for _, d := range ds {
		online := "no"
		if d.Online {
			online = "yes"
		}
		var apps []string
		for _, a := range slices.Sorted(maps.Keys(d.Status)) {
			apps = append(apps, fmt.Sprintf("%s %s (%s)", a, d.Apps[a].Version, d.Status[a].State))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", d.Name, online, ago(d.LastSeen, now), orDash(strings.Join(apps, ", ")), orDash(strings.Join(d.Tags, " ")), d.ID)
	}
	tw.Flush()
}

func printDevice(out io.Writer, d *serverapi.Device, now time.Time) {
	online := "offline"
	if d.Online {
		online = "online"
	}
	fmt.Fprintf(out, "device %s (%s) in fleet %s: %s, last seen %s\n", d.Name, d.ID, d.Fleet, online, ago(d.LastSeen, now))
	if d.Agent != nil {
		fmt.Fprintf(out, "agent: berthd %s, %s\n", orDash(d.Agent.Version), orDash(d.Agent.Arch))
	}
	if len(d.Tags) > 0 {
		fmt.Fprintf(out, "tags: %s\n", strings.Join(d.Tags, " "))
	}
	if d.Notes != "" {
		fmt.Fprintf(out, "notes: %s\n", d.Notes)
	}
	printTarget(out, d)
	if len(d.Status) > 0 {
		fmt.Fprintln(out, "\nstatus:")
		for _, app := range slices.Sorted(maps.Keys(d.Status)) {
			st := d.Status[app]
			line := "  " + app + "  " + st.State
			if st.Release != "" {
				line += ", runs " + release.ShortID(st.Release)
			}
			if st.Offline {
				line += " (as last reported: the device is offline)"
			}
			fmt.Fprintln(out, line)
			if st.Reason != "" {
				fmt.Fprintf(out, "    why: %s\n", st.Reason)
			}
			if st.Leave != "" {
				fmt.Fprintf(out, "    to leave it: %s\n", st.Leave)
			}
		}
	}
	if len(d.Apps) > 0 {
		fmt.Fprintf(out, "\nreported %s:\n", ago(d.Reported, now))
		printStatus(out, &release.CurrentState{Apps: d.Apps, Disk: d.Disk, Agent: derefAgent(d.Agent)})
	}
}

func printTarget(out io.Writer, d *serverapi.Device) {
	if len(d.Target) == 0 {
		fmt.Fprintln(out, "target: nothing yet (berth release assign …)")
		return
	}
	fmt.Fprintf(out, "target (version %d):\n", d.TargetVersion)
	for _, app := range slices.Sorted(maps.Keys(d.Target)) {
		t := d.Target[app]
		pinned := ""
		if t.Pinned {
			pinned = "  (pinned)"
		}
		fmt.Fprintf(out, "  %s  release %s%s\n", app, release.ShortID(t.Release), pinned)
	}
}

func derefAgent(a *release.AgentInfo) release.AgentInfo {
	if a == nil {
		return release.AgentInfo{}
	}
	return *a
}

// ago says how long before now t was, roughly.
func ago(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t).Round(time.Second)
	if d < 0 {
		d = 0
	}
	return d.String() + " ago"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
