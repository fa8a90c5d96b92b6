package cli

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
)

func newFleet() *cobra.Command {
	var sf serverFlags
	c := &cobra.Command{
		Use:   "fleet",
		Short: "Create and list fleets on a fleet server; rotate their provisioning keys",
	}
	addServerFlags(c, &sf)
	var asJSON bool
	jsonFlag := func(c *cobra.Command) { c.Flags().BoolVar(&asJSON, "json", false, "print JSON") }

	create := &cobra.Command{
		Use:   "create NAME [--json]",
		Short: "Create a fleet; prints its provisioning key (shown this once)",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return withClient(&sf, func(cl *serverapi.Client) error {
				f, err := cl.CreateFleet(c.Context(), args[0])
				if err != nil {
					return fmt.Errorf("create fleet %s: %w", args[0], err)
				}
				return printFleetKey(c.OutOrStdout(), f, asJSON, "created")
			})
		},
	}
	jsonFlag(create)

	list := &cobra.Command{
		Use:   "list [--json]",
		Short: "List the fleets",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return withClient(&sf, func(cl *serverapi.Client) error {
				fs, err := cl.Fleets(c.Context())
				if err != nil {
					return fmt.Errorf("list fleets: %w", err)
				}
				if asJSON {
					return printJSON(c.OutOrStdout(), nonNil(fs))
				}
				tw := tabwriter.NewWriter(c.OutOrStdout(), 2, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tID\tPROVISIONING KEY\tCREATED")
				for _, f := range fs {
					key := f.KeyPrefix + "…"
					if f.KeyPrefix == "" {
						key = "(revoked)"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", f.Name, f.ID, key, f.Created.Local().Format("2006-01-02 15:04"))
				}
				return tw.Flush()
			})
		},
	}
	jsonFlag(list)

	show := &cobra.Command{
		Use:   "show NAME [--json]",
		Short: "Show a fleet and the releases its new devices start with",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return withClient(&sf, func(cl *serverapi.Client) error {
				f, err := cl.Fleet(c.Context(), args[0])
				if err != nil {
					return fmt.Errorf("fleet %s: %w", args[0], err)
				}
				if asJSON {
					return printJSON(c.OutOrStdout(), f)
				}
				out := c.OutOrStdout()
				fmt.Fprintf(out, "fleet %s (%s), created %s\n", f.Name, f.ID, f.Created.Local().Format("2006-01-02 15:04"))
				if f.KeyPrefix == "" {
					fmt.Fprintln(out, "provisioning key: revoked (berth fleet rotate-key makes a new one)")
				} else {
					fmt.Fprintf(out, "provisioning key: %s…\n", f.KeyPrefix)
				}
				for _, a := range f.Apps {
					fmt.Fprintf(out, "new devices start with %s release %s\n", a.App, release.ShortID(a.Release))
				}
				return nil
			})
		},
	}
	jsonFlag(show)

	rotate := &cobra.Command{
		Use:   "rotate-key NAME [--json]",
		Short: "Give a fleet a new provisioning key; the old one stops working (registered devices keep theirs)",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return withClient(&sf, func(cl *serverapi.Client) error {
				f, err := cl.RotateProvisioningKey(c.Context(), args[0])
				if err != nil {
					return fmt.Errorf("rotate the provisioning key of %s: %w", args[0], err)
				}
				return printFleetKey(c.OutOrStdout(), f, asJSON, "new provisioning key for")
			})
		},
	}
	jsonFlag(rotate)

	revoke := &cobra.Command{
		Use:   "revoke-key NAME",
		Short: "Revoke a fleet's provisioning key: no device can register until rotate-key makes a new one",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return withClient(&sf, func(cl *serverapi.Client) error {
				if _, err := cl.RevokeProvisioningKey(c.Context(), args[0]); err != nil {
					return fmt.Errorf("revoke the provisioning key of %s: %w", args[0], err)
				}
				fmt.Fprintf(c.OutOrStdout(), "the provisioning key of fleet %s is revoked; registered devices keep working\n", args[0])
				return nil
			})
		},
	}

	var ef envFlags
	env := &cobra.Command{
		Use:   "env NAME [KEY=VALUE ...] [--unset KEY] [--service SERVICE]",
		Short: "Show or change a fleet's environment layer (for every service, or one)",
		Long: `env shows the fleet's environment variables, or sets and unsets some. They
reach every device of the fleet; the layers apply fleet < service < device <
device-service, each over the Compose file's own environment.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return withClient(&sf, func(cl *serverapi.Client) error {
				return runEnv(c.Context(), cl, serverapi.EnvScope{Fleet: args[0], Service: ef.service}, args[1:], ef, c.OutOrStdout())
			})
		},
	}
	addEnvFlags(env, &ef)

	c.AddCommand(create, list, show, rotate, revoke, env, newFleetKeys(&sf))
	return c
}

func printFleetKey(out io.Writer, f *serverapi.FleetKey, asJSON bool, what string) error {
	if asJSON {
		return printJSON(out, f)
	}
	fmt.Fprintf(out, "%s fleet %s (%s)\nprovisioning key (shown this once; devices register with it):\n  %s\n", what, f.Name, f.ID, f.ProvisioningKey)
	return nil
}

// withClient runs fn with a client for the server the flags name.
func withClient(sf *serverFlags, fn func(*serverapi.Client) error) error {
	cl, err := sf.client()
	if err != nil {
		return err
	}
	defer cl.Close()
	return fn(cl)
}

// nonNil makes a nil list print as [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// envFlags are env's flags, for fleets and devices alike.
type envFlags struct {
	service string
	unset   []string
	json    bool
}

func addEnvFlags(c *cobra.Command, f *envFlags) {
	c.Flags().StringVar(&f.service, "service", "", "the layer for one service (default: for every service)")
	c.Flags().StringSliceVarP(&f.unset, "unset", "u", nil, "variables to remove")
	c.Flags().BoolVar(&f.json, "json", false, "print JSON")
}

// runEnv shows a layer, or changes the variables given and shows the result.
func runEnv(ctx context.Context, cl *serverapi.Client, scope serverapi.EnvScope, assignments []string, f envFlags, out io.Writer) error {
	l, err := cl.Env(ctx, scope)
	if err != nil {
		return fmt.Errorf("environment: %w", err)
	}
	if len(assignments) > 0 || len(f.unset) > 0 {
		vars := maps.Clone(l.Vars)
		if vars == nil {
			vars = map[string]string{}
		}
		for _, a := range assignments {
			k, v, ok := strings.Cut(a, "=")
			if !ok || k == "" {
				return fmt.Errorf("%q: want KEY=VALUE; nothing was changed", a)
			}
			vars[k] = v
		}
		for _, k := range f.unset {
			delete(vars, k)
		}
		if l, err = cl.SetEnv(ctx, scope, vars); err != nil {
			return fmt.Errorf("set environment: %w", err)
		}
	}
	if f.json {
		return printJSON(out, l)
	}
	if len(l.Vars) == 0 {
		fmt.Fprintln(out, "(no variables)")
		return nil
	}
	for _, k := range slices.Sorted(maps.Keys(l.Vars)) {
		fmt.Fprintf(out, "%s=%s\n", k, l.Vars[k])
	}
	return nil
}
