package cli

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newLogs() *cobra.Command {
	var to, app, tail string
	var follow bool
	c := &cobra.Command{
		Use:   "logs --to TARGET --app NAME [SERVICE] [-f]",
		Short: "Show an app's container logs, one service or all, each line prefixed with its service",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := dial(c.Context(), to, acceptNewHostKey(c))
			if err != nil {
				return err
			}
			defer cl.Close()
			service := ""
			if len(args) == 1 {
				service = args[0]
			}
			if err := cl.Logs(c.Context(), app, service, follow, tail, c.OutOrStdout()); err != nil {
				return fmt.Errorf("logs of %s: %w", app, err)
			}
			return nil
		},
	}
	addTarget(c, &to)
	c.Flags().StringVar(&app, "app", "", "the app (required)")
	c.Flags().BoolVarP(&follow, "follow", "f", false, "keep following new lines")
	c.Flags().StringVar(&tail, "tail", "100", `lines to show from the end of each log, or "all"`)
	_ = c.MarkFlagRequired("app")
	return c
}
