package cli

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/berth-robotics/berth/internal/compose"
	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
)

// newRelease is `berth release`: releases on a fleet server. (`berth
// releases`, in releases.go, lists the ones a device keeps.)
func newRelease() *cobra.Command {
	var sf serverFlags
	var fleet string
	var asJSON bool
	c := &cobra.Command{
		Use:   "release",
		Short: "Create a fleet's releases from Compose files, list them, assign them to devices",
	}
	addServerFlags(c, &sf)
	c.PersistentFlags().StringVar(&fleet, "fleet", "", "the fleet (name or ID; required)")
	needFleet := func() error {
		if fleet == "" {
			return errors.New("which fleet? give --fleet")
		}
		return nil
	}

	var files, profiles []string
	var app, version string
	create := &cobra.Command{
		Use:   "create -f compose.yaml --fleet FLEET [--app NAME] [--version V] [--json]",
		Short: "Make a release of an app from a Compose file and store it in a fleet",
		Long: `create reads the Compose file(s) as berth deploy does and stores the release in
the fleet: immutable, its ID the digest of its app, version and spec, so the
same file and version always make the same release (creating it again changes
nothing). The version defaults to git describe --tags --dirty --always.
Images are recorded by the references the file gives; sending their content
to the server comes later. Nothing runs anywhere until it is assigned:
berth release assign ID --fleet FLEET --all.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := needFleet(); err != nil {
				return err
			}
			ctx := c.Context()
			name, spec, err := compose.Load(ctx, files, compose.Options{ProjectName: app, Profiles: profiles})
			if err != nil {
				return err
			}
			if version == "" {
				version = gitVersion(filepath.Dir(files[0]))
			}
			return withClient(&sf, func(cl *serverapi.Client) error {
				r, created, err := cl.CreateRelease(ctx, fleet, serverapi.CreateReleaseRequest{App: name, Version: version, Spec: *spec})
				if err != nil {
					return fmt.Errorf("create a release of %s in fleet %s: %w", name, fleet, err)
				}
				if asJSON {
					return printJSON(c.OutOrStdout(), r)
				}
				what := "created"
				if !created {
					what = "already there, unchanged"
				}
				fmt.Fprintf(c.OutOrStdout(), "release %s of %s %s in fleet %s: %s\n  id %s\n", release.ShortID(r.ID), r.App, r.Version, fleet, what, r.ID)
				return nil
			})
		},
	}
	create.Flags().StringSliceVarP(&files, "file", "f", []string{"compose.yaml"}, "Compose file(s); later ones override earlier")
	create.Flags().StringVar(&app, "app", "", "app name (default: the Compose project name)")
	create.Flags().StringVar(&version, "version", "", "release version (default: git describe --tags --dirty --always)")
	create.Flags().StringSliceVar(&profiles, "profile", nil, "Compose profiles to enable")
	create.Flags().BoolVar(&asJSON, "json", false, "print the release as JSON (with \"id\")")

	var limit int
	list := &cobra.Command{
		Use:   "list --fleet FLEET [--app NAME] [--json]",
		Short: "List a fleet's releases, newest first",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := needFleet(); err != nil {
				return err
			}
			return withClient(&sf, func(cl *serverapi.Client) error {
				rs, err := cl.Releases(c.Context(), fleet, app, limit)
				if err != nil {
					return fmt.Errorf("releases of %s: %w", fleet, err)
				}
				if asJSON {
					return printJSON(c.OutOrStdout(), nonNil(rs))
				}
				tw := tabwriter.NewWriter(c.OutOrStdout(), 2, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "RELEASE\tAPP\tVERSION\tCREATED\tBY")
				for _, r := range rs {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", release.ShortID(r.ID), r.App, r.Version, r.Created.Local().Format("2006-01-02 15:04:05"), r.CreatedBy)
				}
				return tw.Flush()
			})
		},
	}
	list.Flags().StringVar(&app, "app", "", "only this app's releases")
	list.Flags().IntVar(&limit, "limit", 100, "at most this many (up to 1000)")
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	var devices []string
	var all bool
	assign := &cobra.Command{
		Use:   "assign RELEASE --fleet FLEET (--device DEVICE ... | --all)",
		Short: "Move devices of a fleet to a release (pinned devices stay where they are)",
		Long: `assign points the devices named (names or IDs), or all the fleet's devices, at
the release; with --all, devices that register later start with it too.
Devices pinned to another release of the app stay where they are. Each device
switches as soon as its agent's long poll hears of it — all at once: staged
rollouts come later.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := needFleet(); err != nil {
				return err
			}
			if all == (len(devices) > 0) {
				return errors.New("give --device DEVICE (one or more), or --all")
			}
			return withClient(&sf, func(cl *serverapi.Client) error {
				ctx := c.Context()
				id, err := resolveRelease(ctx, cl, fleet, args[0])
				if err != nil {
					return err
				}
				a, err := cl.Assign(ctx, fleet, id, serverapi.AssignRequest{Devices: devices, All: all})
				if err != nil {
					return fmt.Errorf("assign release %s: %w", args[0], err)
				}
				if asJSON {
					return printJSON(c.OutOrStdout(), a)
				}
				fmt.Fprintf(c.OutOrStdout(), "%s release %s: %d device(s) moved, %d already there or pinned\n", a.App, release.ShortID(a.Release), len(a.Changed), a.Unchanged)
				if len(a.Changed) > 0 {
					fmt.Fprintf(c.OutOrStdout(), "  %s\n", strings.Join(a.Changed, " "))
				}
				return nil
			})
		},
	}
	assign.Flags().StringSliceVar(&devices, "device", nil, "a device (name or ID) to move; repeat for more")
	assign.Flags().BoolVar(&all, "all", false, "every device of the fleet, and those that register later")
	assign.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	c.AddCommand(create, list, assign)
	return c
}
