package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-robotics/berth/internal/localapi"
	"github.com/berth-robotics/berth/internal/release"
)

func newRollback() *cobra.Command {
	var to, rel string
	var pf projectFlags
	var force, asJSON bool
	c := &cobra.Command{
		Use:   "rollback --to TARGET [--app NAME] [--release ID]",
		Short: "Switch an app back to a release kept on the device (default: the previous one)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			app, err := pf.app(c.Context())
			if err != nil {
				return err
			}
			start := time.Now()
			cl, err := dial(c.Context(), to, acceptNewHostKey(c))
			if err != nil {
				return err
			}
			defer cl.Close()
			resp, err := cl.Rollback(c.Context(), app, localapi.RollbackRequest{Release: rel, Force: force})
			if err != nil {
				return fmt.Errorf("rollback %s: %w", app, err)
			}
			out := c.OutOrStdout()
			if !asJSON {
				fmt.Fprintf(out, "rolling %s back to %s (release %s)\n", app, resp.Version, release.ShortID(resp.Release))
			}
			res := deployResult{App: app, Release: resp.Release, Version: resp.Version, Result: release.PhaseIdle, NoChange: resp.NoChange}
			if !resp.NoChange {
				last, err := follow(c.Context(), cl, app, resp, out, asJSON, start)
				if err != nil {
					return err
				}
				res.Result, res.Error = last.Phase, last.Error
			}
			res.Seconds = time.Since(start).Seconds()
			if asJSON {
				if err := printJSON(out, res); err != nil {
					return err
				}
			} else if res.Result == release.PhaseIdle {
				fmt.Fprintf(out, "%s runs %s again (release %s, %.1fs)\n", app, resp.Version, release.ShortID(resp.Release), res.Seconds)
			} else {
				fmt.Fprintf(out, "rollback did not go through (%s): %s\n", res.Result, res.Error)
			}
			if res.Result != release.PhaseIdle {
				return errSilent
			}
			return nil
		},
	}
	addTarget(c, &to)
	addAppFlags(c, &pf)
	c.Flags().StringVar(&rel, "release", "", "release ID (or a prefix) to go back to; default: the previous one")
	c.Flags().BoolVar(&force, "force", false, "do not wait for update locks or maintenance windows")
	c.Flags().BoolVar(&asJSON, "json", false, "print a JSON summary")
	return c
}
