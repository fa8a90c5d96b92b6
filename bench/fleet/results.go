package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"
)

// Results is one invocation's figures.
type Results struct {
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Options  Opts      `json:"options"`
	Machine  Machine   `json:"machine"`
	Runs     []Run     `json:"runs"`
}

// Opts are the flags of the run.
type Opts struct {
	Devices   int    `json:"devices"`
	Report    string `json:"report"`
	Duration  string `json:"duration"`
	Wait      string `json:"wait"`
	FetchRate int    `json:"fetch_rate"`
	// Settle and SettleJitter: when a woken device reports the release
	// (absent from runs before they were options: 100ms and 400ms).
	Settle       string `json:"settle,omitempty"`
	SettleJitter string `json:"settle_jitter,omitempty"`
}

// The targets.
const (
	targetFetchP99 = 50.0 // ms
	targetWakeAll  = 5.0  // s
)

// Portainer's published figure: 15,000 environments polling every 5 s on
// about 4 CPUs.
const (
	portainerEnvs = 15000
	portainerPoll = 5.0
	portainerCPUs = 4.0
)

func (r *Results) write(base string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(base+".json", append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(base+".md", []byte(r.Markdown()), 0o644)
}

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

func verdict(got, target float64) string {
	if got <= target {
		return fmt.Sprintf("met (%.2f× the target)", got/target)
	}
	return fmt.Sprintf("**missed** (%.1f× the target)", got/target)
}

// Markdown is the report.
func (r *Results) Markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	m := r.Machine
	p("# bench/fleet: %d simulated devices, %s\n\n", r.Options.Devices, r.Started.Format("2006-01-02 15:04 UTC"))
	p("Command: `go run ./bench/fleet -devices %d -report %s -duration %s -wait %s -fetch-rate %d -settle %s -settle-jitter %s` (-db as in the runs below)\n\n",
		r.Options.Devices, r.Options.Report, r.Options.Duration, r.Options.Wait, r.Options.FetchRate, r.Options.Settle, r.Options.SettleJitter)
	p("Machine: %d CPUs (%s), %s, Linux %s, %s, tree %s; load average %s at the start, %s at the end (shared machine); RLIMIT_NOFILE %d.\n",
		m.CPUs, m.CPUModel, m.MemTotal, m.Kernel, m.Go, m.Commit, m.LoadStart, m.LoadEnd, m.NoFile)
	p("The server is `berth server` built from this tree, a separate process on 127.0.0.1; the devices are goroutines of the benchmark's process on the same 2 CPUs, over one shared HTTP transport (keep-alive), dialling from 127.0.0.1–4.\n\n")

	p("## Against the targets\n\n| Database | Target fetch p99 (≤ %.0f ms) | Every device woken after a release (≤ %.0f s) |\n|---|---|---|\n", targetFetchP99, targetWakeAll)
	for _, x := range r.Runs {
		wake := verdict(x.WakeAll, targetWakeAll)
		if x.Woken < r.Options.Devices {
			wake = fmt.Sprintf("**missed**: only %d of %d woke", x.Woken, r.Options.Devices)
		}
		p("| %s | %.1f ms: %s | %.2f s: %s |\n", x.DB, x.Fetch.P99, verdict(x.Fetch.P99, targetFetchP99), x.WakeAll, wake)
	}

	p("\n## Figures\n\n| | %s |\n|---|%s\n", strings.Join(dbNames(r.Runs), " | "), strings.Repeat("---|", len(r.Runs)))
	row := func(name string, f func(Run) string) {
		cells := make([]string, len(r.Runs))
		for i, x := range r.Runs {
			cells[i] = f(x)
		}
		p("| %s | %s |\n", name, strings.Join(cells, " | "))
	}
	lat := func(l Lat) string {
		s := fmt.Sprintf("p50 %.1f ms, p99 %.1f ms, max %.1f ms (n=%d)", l.P50, l.P99, l.Max, l.N)
		if l.Errors > 0 {
			var kinds []string
			for _, k := range slices.Sorted(maps.Keys(l.Kinds)) {
				kinds = append(kinds, fmt.Sprintf("%s: %d", k, l.Kinds[k]))
			}
			s += fmt.Sprintf(", %d errors/retries (%s)", l.Errors, strings.Join(kinds, ", "))
		}
		return s
	}
	row("Registration, all devices (32 at a time)", func(x Run) string {
		return fmt.Sprintf("%.1f s (%.0f/s)", x.RegisterSecs, float64(r.Options.Devices)/x.RegisterSecs)
	})
	row("Registration, per request", func(x Run) string { return lat(x.Register) })
	row("First release: assigned → every device reported it", func(x Run) string { return fmt.Sprintf("%.1f s", x.ConvergeSecs) })
	row("Steady state measured", func(x Run) string { return fmt.Sprintf("%.0f s", x.SteadySecs) })
	row("Target fetch (full GET, no ETag)", func(x Run) string { return lat(x.Fetch) })
	row("State reports (periodic)", func(x Run) string { return fmt.Sprintf("%.1f/s; %s", x.ReportRate, lat(x.Report)) })
	row("State reports: sent whole / as a merge patch; mean body", func(x Run) string {
		return fmt.Sprintf("%d / %d; %.0f bytes", x.ReportsWhole, x.ReportsPatched, x.ReportBytes)
	})
	row("Long polls answered (304 at the end of the wait)", func(x Run) string {
		s := fmt.Sprintf("%.1f/s (%d errors in the whole run", x.PollRate, x.PollErrors)
		for _, k := range slices.Sorted(maps.Keys(x.PollErrorKinds)) {
			s += fmt.Sprintf(", %s: %d", k, x.PollErrorKinds[k])
		}
		return s + ")"
	})
	row("Server CPU in steady state", func(x Run) string {
		return fmt.Sprintf("%.1f s = %.1f%% of one CPU", x.SteadyServer.CPU, 100*x.SteadyServer.CPU/x.SteadySecs)
	})
	row("PostgreSQL CPU in steady state (postmaster + backends)", func(x Run) string {
		if x.DB != "postgres" {
			return "—"
		}
		return fmt.Sprintf("%.1f s = %.1f%% of one CPU", x.SteadyDB.CPU, 100*x.SteadyDB.CPU/x.SteadySecs)
	})
	row("Simulated devices' CPU in steady state (this process)", func(x Run) string {
		return fmt.Sprintf("%.1f s = %.1f%% of one CPU", x.SteadyClient, 100*x.SteadyClient/x.SteadySecs)
	})
	row("Second release: the assign request", func(x Run) string { return fmt.Sprintf("%.2f s", x.AssignSecs) })
	row("Second release: long polls woken with it", func(x Run) string {
		return fmt.Sprintf("%d; %s", x.Woken, lat(x.Wake))
	})
	row("Second release: CPU until every device was woken (server / PostgreSQL / devices)", func(x Run) string {
		dbc := "—"
		if x.DB == "postgres" {
			dbc = fmt.Sprintf("%.1f s", x.WakeDB.CPU)
		}
		return fmt.Sprintf("%.1f s / %s / %.1f s", x.WakeServer.CPU, dbc, x.WakeClient)
	})
	row("Second release: reports of it (a burst)", func(x Run) string {
		return fmt.Sprintf("all in %.1f s; %s", x.ApplySecs, lat(x.Apply))
	})
	row("Server RSS after registration", func(x Run) string { return mib(x.ServerAt.RSS) })
	row("Server RSS at the end / peak (VmHWM)", func(x Run) string { return mib(x.Server.RSS) + " / " + mib(x.Server.HWM) })
	row("Server CPU, whole run", func(x Run) string { return fmt.Sprintf("%.1f s", x.Server.CPU) })
	row("PostgreSQL memory at the end: PSS summed over its processes", func(x Run) string {
		if x.DB != "postgres" {
			return "—"
		}
		return fmt.Sprintf("%s (%d processes)", mib(x.DBProcs.PSS), x.DBProcs.Procs)
	})

	p("\n## Against Portainer's published figure\n\n")
	pReq := portainerEnvs / portainerPoll
	p("Portainer: %d environments polling every %.0f s ≈ %.0f requests/s on about %.0f CPUs: %.2f ms of CPU per request, %.3f CPUs per 1,000 environments.\n\n",
		portainerEnvs, portainerPoll, pReq, portainerCPUs, 1000*portainerCPUs/pReq, 1000*portainerCPUs/portainerEnvs)
	p("| Database | requests/s in steady state | server CPUs | + database CPUs | CPU ms per request | CPUs per 1,000 devices | at Portainer's 3,000 requests/s |\n|---|---|---|---|---|---|---|\n")
	for _, x := range r.Runs {
		reqs := x.PollRate + x.ReportRate + float64(x.Fetch.N)/x.SteadySecs
		cpus := x.SteadyServer.CPU / x.SteadySecs
		dbc := x.SteadyDB.CPU / x.SteadySecs
		per := 1000 * (cpus + dbc) / reqs
		p("| %s | %.0f | %.3f | %.3f | %.2f | %.3f | %.2f CPUs |\n", x.DB, reqs, cpus, dbc, per,
			1000*(cpus+dbc)/float64(r.Options.Devices), per*pReq/1000)
	}
	p("\nberth's devices long-poll (one request per %s wait, answered at once on a change) instead of polling every 5 s, so a device costs fewer requests; the per-request figure is the fairer comparison, though a 304 after a long wait, a state report and Portainer's agent poll are not the same work, and Portainer's figure is a published estimate on other hardware.\n", r.Options.Wait)
	return b.String()
}

func dbNames(runs []Run) []string {
	var s []string
	for _, x := range runs {
		s = append(s, x.DB)
	}
	return s
}
