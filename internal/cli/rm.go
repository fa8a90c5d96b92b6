package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

func newRm() *cobra.Command {
	var to string
	var pf projectFlags
	var volumes, asJSON bool
	c := &cobra.Command{
		Use:   "rm --to TARGET [--app NAME] [--volumes]",
		Short: "Remove an app from a device (its volumes only with --volumes)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			app, err := pf.app(c.Context())
			if err != nil {
				return err
			}
			cl, err := dial(c.Context(), to, acceptNewHostKey(c))
			if err != nil {
				return err
			}
			defer cl.Close()
			resp, err := cl.Remove(c.Context(), app, volumes, whoDeploys())
			if err != nil {
				return fmt.Errorf("remove %s: %w", app, err)
			}
			if asJSON {
				return printJSON(c.OutOrStdout(), resp)
			}
			fmt.Fprintf(c.OutOrStdout(), "%s removed: %d containers", app, resp.Containers)
			if volumes {
				fmt.Fprintf(c.OutOrStdout(), ", volumes: %s\n", strings.Join(resp.Volumes, ", "))
			} else {
				fmt.Fprintln(c.OutOrStdout(), "; its volumes are kept (--volumes removes them)")
			}
			return nil
		},
	}
	addTarget(c, &to)
	addAppFlags(c, &pf)
	c.Flags().BoolVar(&volumes, "volumes", false, "also remove the app's named volumes (its data)")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}
