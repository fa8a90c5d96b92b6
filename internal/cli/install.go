package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-robotics/berth/internal/install"
	"github.com/berth-robotics/berth/internal/localapi"
	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/sshconn"
)

type installFlags struct {
	to        string
	berthd    string
	opts      install.Options
	noSystemd bool
	asJSON    bool
	volumes   bool
}

func (f *installFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&f.opts.BinDir, "bin-dir", "/usr/local/bin", "where berthd goes on the robot")
	c.Flags().StringVar(&f.opts.UnitDir, "unit-dir", "/etc/systemd/system", "where the systemd unit goes")
	c.Flags().StringVar(&f.opts.StateDir, "state-dir", "/var/lib/berth", "berthd's state directory")
	c.Flags().StringVar(&f.opts.Group, "group", "berth", "the group whose members may use the socket")
	c.Flags().BoolVar(&f.noSystemd, "no-systemd", false, "run the unit's ExecStart directly even where systemd runs")
	c.Flags().StringVar(&f.opts.UnitName, "unit", install.Unit, "the systemd unit's name")
	_ = c.Flags().MarkHidden("group")
	_ = c.Flags().MarkHidden("unit")
	addTarget(c, &f.to)
}

// resolve fills the socket and binary directory from an ssh:// target's
// ?socket= and ?berthd= (so that later commands with the same --to find the
// agent), and refuses targets that are not SSH.
func (f *installFlags) resolve() (sshconn.Target, error) {
	if strings.HasPrefix(f.to, "unix://") || strings.HasPrefix(f.to, "/") {
		return sshconn.Target{}, fmt.Errorf("install works over SSH: give --to user@host: %w", release.ErrInvalid)
	}
	t, err := sshconn.ParseTarget(f.to)
	if err != nil {
		return t, err
	}
	f.opts.Socket = t.Socket
	if strings.Contains(t.Berthd, "/") {
		if path.Base(t.Berthd) != "berthd" {
			return t, fmt.Errorf("--to names berthd %q: install puts it at DIR/berthd: %w", t.Berthd, release.ErrInvalid)
		}
		f.opts.BinDir = path.Dir(t.Berthd)
	}
	f.opts.NoSystemd = f.noSystemd
	return t, nil
}

func newInstall() *cobra.Command {
	var f installFlags
	c := &cobra.Command{
		Use:   "install --to TARGET [--berthd PATH|DIR] [--name NAME]",
		Short: "Set a robot up over SSH to run berthd (once; again changes nothing)",
		Long: `install copies berthd for the robot's architecture (from a directory of
cross-built binaries, berthd-linux-amd64|arm64|armv7 as make cross writes
them, or a file), makes the berth group (its members may use the socket),
installs the systemd unit berthd.service, starts it and checks the agent
answers. Without systemd running on the robot it runs the unit's ExecStart
directly, and says so. A second install changes nothing unless the binary or
the unit differ. The login must be root or may use sudo without a password.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return runInstall(c.Context(), f, acceptNewHostKey(c), c.OutOrStdout())
		},
	}
	c.Flags().StringVar(&f.berthd, "berthd", "", "berthd binary, or a directory of berthd-linux-<arch> (default: beside this berth, as make build cross leaves them in bin/)")
	c.Flags().StringVar(&f.opts.Name, "name", "", "the agent's name (default: the robot's hostname)")
	c.Flags().StringArrayVar(&f.opts.Args, "agent-arg", nil, "an extra berthd flag for the unit, e.g. --agent-arg=--server=https://fleet:7443; repeatable")
	c.Flags().BoolVar(&f.asJSON, "json", false, "print what was done as JSON")
	f.add(c)
	return c
}

// dial checks the flags (filling in what the target names) and connects to
// the robot over SSH.
func (f *installFlags) dial(ctx context.Context, acceptNew bool) (*sshconn.Client, error) {
	if _, err := f.resolve(); err != nil {
		return nil, err
	}
	return sshconn.Dial(ctx, f.to, sshconn.Options{AcceptNewHostKey: acceptNew})
}

func runInstall(ctx context.Context, f installFlags, acceptNew bool, out io.Writer) error {
	sc, err := f.dial(ctx, acceptNew)
	if err != nil {
		return err
	}
	defer sc.Close()
	p, err := install.ProbeRobot(ctx, sc)
	if err != nil {
		return err
	}
	f.opts.Binary, err = berthdFor(f.berthd, p.Arch)
	if err != nil {
		return err
	}
	if !f.asJSON {
		f.opts.Log = out
	}
	res, err := install.Install(ctx, sc, f.opts)
	if err != nil {
		return fmt.Errorf("install berthd on %s: %w", f.to, err)
	}
	// the agent answers through the same path every later command takes
	cl := localapi.New(f.to, sc.DialStdio)
	var st *release.CurrentState
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err = cl.State(ctx)
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		hint := "journalctl -u " + f.opts.UnitName
		if !res.Systemd {
			hint = "its log " + res.LogFile
		}
		return fmt.Errorf("berthd was installed on %s but does not answer: %w (see %s)", f.to, err, hint)
	}
	if f.asJSON {
		return printJSON(out, map[string]any{"install": res, "agent": st.Agent})
	}
	fmt.Fprintf(out, "berthd %s answers on %s as %q (engine %s); deploy with: berth deploy -f compose.yaml --to %s\n", st.Agent.Version, f.to, st.Agent.Name, st.Agent.EngineVersion, f.to)
	return nil
}

// berthdFor finds the berthd to install for a robot's GOARCH.
func berthdFor(from, arch string) (string, error) {
	if from != "" {
		return install.FindBinary(from, arch)
	}
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("where is berthd? give --berthd: %w", err)
	}
	dir := filepath.Dir(exe)
	if p, err := install.FindBinary(dir, arch); err == nil {
		return p, nil
	}
	if arch == runtime.GOARCH && runtime.GOOS == "linux" {
		if _, err := os.Stat(filepath.Join(dir, "berthd")); err == nil {
			return filepath.Join(dir, "berthd"), nil
		}
	}
	return "", fmt.Errorf("no berthd for linux/%s beside %s: run make cross, or give --berthd PATH|DIR: %w", arch, exe, release.ErrNotFound)
}

func newUninstall() *cobra.Command {
	var f installFlags
	c := &cobra.Command{
		Use:   "uninstall --to TARGET [--volumes]",
		Short: "Remove berthd from a robot: its apps' containers, unit, binary and state",
		Long: `uninstall removes every app the agent runs (their containers and networks;
their named volumes only with --volumes), then stops berthd and removes its
systemd unit, binary, socket and state directory. Images stay in the engine,
and the berth group stays.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return runUninstall(c.Context(), f, acceptNewHostKey(c), c.OutOrStdout())
		},
	}
	c.Flags().BoolVar(&f.volumes, "volumes", false, "also remove the apps' named volumes (their data)")
	f.add(c)
	return c
}

func runUninstall(ctx context.Context, f installFlags, acceptNew bool, out io.Writer) error {
	sc, err := f.dial(ctx, acceptNew)
	if err != nil {
		return err
	}
	defer sc.Close()
	cl := localapi.New(f.to, sc.DialStdio)
	st, err := cl.State(ctx)
	if err != nil {
		fmt.Fprintf(out, "berthd does not answer (%v): its apps' containers, if any, stay\n", err)
	} else {
		apps := make([]string, 0, len(st.Apps))
		for a := range st.Apps {
			apps = append(apps, a)
		}
		sort.Strings(apps)
		for _, a := range apps {
			if _, err := cl.Remove(ctx, a, f.volumes, ""); err != nil && !errors.Is(err, release.ErrNotFound) {
				return fmt.Errorf("remove app %s (nothing else was removed): %w", a, err)
			}
			what := "its volumes kept"
			if f.volumes {
				what = "and its volumes"
			}
			fmt.Fprintf(out, "removed app %s (%s)\n", a, what)
		}
	}
	done, err := install.Uninstall(ctx, sc, f.opts)
	for _, d := range done {
		fmt.Fprintln(out, d)
	}
	if err != nil {
		return fmt.Errorf("uninstall berthd from %s: %w", f.to, err)
	}
	fmt.Fprintln(out, "berthd is uninstalled; images stay in the engine and the group stays")
	return nil
}
