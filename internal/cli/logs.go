package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-robotics/berth/internal/serverapi"
)

func newLogs() *cobra.Command {
	var to, tail, device, fleet, since string
	var pf projectFlags
	var follow, asJSON bool
	var sf serverFlags
	c := &cobra.Command{
		Use:   "logs (--to TARGET [--app NAME] | --device DEVICE [--app NAME]) [SERVICE] [-f]",
		Short: "Show an app's container logs, one service or all, each line prefixed with its service",
		Long: `logs shows container logs: from a device directly (--to, an SSH or socket
target), or, with --device, as the device shipped them to the fleet server
(--server and --token, or BERTH_SERVER and BERTH_TOKEN, or berth login).
DEVICE is a device's ID, or its name together with --fleet.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			service := ""
			if len(args) == 1 {
				service = args[0]
			}
			if device != "" {
				return serverLogs(c, &sf, fleet, device, pf.name, service, since, tail, follow, asJSON)
			}
			app, err := pf.app(c.Context())
			if err != nil {
				return fmt.Errorf("%w (or --device to read a fleet device's logs from the server)", err)
			}
			if since != "" || asJSON {
				return errors.New("--since and --json go with --device (the fleet server's copy of the logs)")
			}
			cl, err := dial(c.Context(), to, acceptNewHostKey(c))
			if err != nil {
				return err
			}
			defer cl.Close()
			if err := cl.Logs(c.Context(), app, service, follow, tail, c.OutOrStdout()); err != nil {
				return fmt.Errorf("logs of %s: %w", app, err)
			}
			return nil
		},
	}
	addTarget(c, &to)
	addServerFlags(c, &sf)
	addAppFlags(c, &pf)
	c.Flags().BoolVarP(&follow, "follow", "f", false, "keep following new lines")
	c.Flags().StringVar(&tail, "tail", "100", `lines to show from the end of each log, or "all" (with --device: in all, at most 1000)`)
	c.Flags().StringVar(&device, "device", "", "a fleet device: read the logs it shipped to the fleet server")
	c.Flags().StringVar(&fleet, "fleet", "", "the device's fleet (name or ID); lets --device be a device's name")
	c.Flags().StringVar(&since, "since", "", "with --device: only lines since a time (RFC 3339) or a duration ago (10m)")
	c.Flags().BoolVar(&asJSON, "json", false, "with --device: print each line as a JSON object (NDJSON)")
	return c
}

// serverLogs prints a fleet device's logs from the server.
func serverLogs(c *cobra.Command, sf *serverFlags, fleet, device, app, service, since, tail string, follow, asJSON bool) error {
	q := serverapi.LogQuery{App: app, Service: service, Follow: follow, Limit: 1000}
	if tail != "all" {
		n, err := strconv.Atoi(tail)
		if err != nil || n < 0 {
			return fmt.Errorf("--tail %q: want a number of lines or \"all\"", tail)
		}
		q.Limit = min(max(n, 1), 1000)
	}
	if since != "" {
		if t, err := time.Parse(time.RFC3339Nano, since); err == nil {
			q.Since = t
		} else if d, err := time.ParseDuration(since); err == nil && d >= 0 {
			q.Since = time.Now().Add(-d)
		} else {
			return fmt.Errorf("--since %q: want an RFC 3339 time or a duration like 10m", since)
		}
	}
	return withClient(sf, func(cl *serverapi.Client) error {
		id, err := resolveDevice(c.Context(), cl, fleet, device)
		if err != nil {
			return err
		}
		out := c.OutOrStdout()
		err = cl.DeviceLogs(c.Context(), id, q, func(l serverapi.LogLine) error {
			if asJSON {
				return printJSONLine(out, l)
			}
			who := l.Service
			if app == "" {
				who = l.App + "/" + l.Service
			}
			if l.Stream == "berth" {
				who = "berth"
			}
			_, err := fmt.Fprintf(out, "%s %s | %s\n", l.Time.Local().Format("15:04:05.000"), who, l.Text)
			return err
		})
		if err != nil && c.Context().Err() == nil {
			return fmt.Errorf("logs of device %s: %w", device, err)
		}
		return nil
	})
}

// printJSONLine prints v as one line of JSON (NDJSON, for following).
func printJSONLine(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}
