package cli

import (
	"fmt"
	"io"
	"sort"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/berth-robotics/berth/internal/release"
)

func newStatus() *cobra.Command {
	var to string
	var asJSON bool
	c := &cobra.Command{
		Use:   "status --to TARGET [--json]",
		Short: "Show the apps on a device, their releases, phases and services",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := dial(c.Context(), to, acceptNewHostKey(c))
			if err != nil {
				return err
			}
			defer cl.Close()
			st, err := cl.State(c.Context())
			if err != nil {
				return fmt.Errorf("status of %s: %w", to, err)
			}
			if asJSON {
				return printJSON(c.OutOrStdout(), st)
			}
			printStatus(c.OutOrStdout(), st)
			return nil
		},
	}
	addTarget(c, &to)
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON (the field names are a stable contract)")
	return c
}

func printStatus(out io.Writer, st *release.CurrentState) {
	fmt.Fprintf(out, "agent %s (berthd %s, engine %s, API %s)\n", st.Agent.Name, st.Agent.Version, st.Agent.EngineVersion, st.Agent.EngineAPI)
	if st.Disk != nil {
		fmt.Fprintf(out, "free: state %d MiB, engine %d MiB\n", st.Disk.StateDirFree>>20, st.Disk.EngineDirFree>>20)
	}
	if len(st.Apps) == 0 {
		fmt.Fprintln(out, "\nno apps yet: berth deploy -f compose.yaml --to …")
		return
	}
	apps := make([]string, 0, len(st.Apps))
	for a := range st.Apps {
		apps = append(apps, a)
	}
	sort.Strings(apps)
	for _, name := range apps {
		a := st.Apps[name]
		fmt.Fprintf(out, "\n%s  release %s  version %s  %s\n", name, release.ShortID(a.Release), a.Version, a.Phase)
		if a.Lock != nil {
			fmt.Fprintf(out, "  update lock held by %s\n", a.Lock.Holder)
		}
		if a.Error != "" {
			fmt.Fprintf(out, "  last error: %s\n", a.Error)
		}
		tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  SERVICE\tSTATE\tHEALTH\tRESTARTS\tRELEASE\tCONTAINER")
		svcs := make([]string, 0, len(a.Services))
		for s := range a.Services {
			svcs = append(svcs, s)
		}
		sort.Strings(svcs)
		for _, s := range svcs {
			v := a.Services[s]
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%s\t%s\n", s, v.State, v.Health, v.Restarts, release.ShortID(v.Release), release.ShortID(v.Container))
		}
		tw.Flush()
	}
}
