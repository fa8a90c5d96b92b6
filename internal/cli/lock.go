package cli

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-robotics/berth/internal/localapi"
	"github.com/berth-robotics/berth/internal/release"
)

func newLock() *cobra.Command {
	var to, holder string
	var pf projectFlags
	var ttl time.Duration
	c := &cobra.Command{
		Use:   "lock --to TARGET [--app NAME] [--ttl 1h]",
		Short: "Hold off updates of an app (switches wait; downloads do not)",
		Long: `lock takes an app's update lock through the agent's API for a while. Until it
runs out or berth unlock drops it, a deploy downloads but waits before switching.
Apps can take the same lock themselves: flock(2) on /run/berth/update.lock
inside any of their containers.`,
		Args: cobra.NoArgs,
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
			if holder == "" {
				u := os.Getenv("USER")
				h, _ := os.Hostname()
				holder = u + "@" + h
			}
			l, err := cl.Lock(c.Context(), app, localapi.LockRequest{Holder: holder, TTL: release.Duration(ttl)})
			if err != nil {
				return fmt.Errorf("lock %s: %w", app, err)
			}
			fmt.Fprintf(c.OutOrStdout(), "%s: update lock held by %s until %s\n", app, l.Holder, l.Expires.Local().Format(time.RFC3339))
			return nil
		},
	}
	addTarget(c, &to)
	addAppFlags(c, &pf)
	c.Flags().StringVar(&holder, "holder", "", "who holds it, shown to whoever deploys (default user@host)")
	c.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the lock lasts")
	return c
}

func newUnlock() *cobra.Command {
	var to string
	var pf projectFlags
	c := &cobra.Command{
		Use:   "unlock --to TARGET [--app NAME]",
		Short: "Drop the update lock taken with berth lock",
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
			if err := cl.Unlock(c.Context(), app); err != nil {
				return fmt.Errorf("unlock %s: %w", app, err)
			}
			fmt.Fprintf(c.OutOrStdout(), "%s: update lock released\n", app)
			return nil
		},
	}
	addTarget(c, &to)
	addAppFlags(c, &pf)
	return c
}
