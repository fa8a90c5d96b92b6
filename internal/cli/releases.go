package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/berth-robotics/berth/internal/release"
)

func newReleases() *cobra.Command {
	var to string
	var pf projectFlags
	var asJSON bool
	c := &cobra.Command{
		Use:   "releases --to TARGET [--app NAME]",
		Short: "List the releases of an app kept on the device for rollback",
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
			rs, err := cl.Releases(c.Context(), app)
			if err != nil {
				return fmt.Errorf("releases of %s: %w", app, err)
			}
			if asJSON {
				return printJSON(c.OutOrStdout(), rs)
			}
			tw := tabwriter.NewWriter(c.OutOrStdout(), 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "RELEASE\tVERSION\tCREATED\tSTATUS")
			for _, r := range rs {
				status := "kept"
				switch {
				case r.Current:
					status = "current"
				case r.Failed != "":
					status = "rolled back: " + r.Failed
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", release.ShortID(r.ID), r.Version, r.Created.Local().Format("2006-01-02 15:04:05"), status)
			}
			return tw.Flush()
		},
	}
	addTarget(c, &to)
	addAppFlags(c, &pf)
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}
