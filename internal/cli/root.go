// Package cli is the berth command line: one file per subcommand, each
// parsing its flags and calling the package that does the work.
package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/berth-robotics/berth/internal/localapi"
	"github.com/berth-robotics/berth/internal/sshconn"
)

// Main runs the berth command line with args and returns the exit code.
func Main(ctx context.Context, version string, args []string, stdout, stderr io.Writer) int {
	root := newRoot(version, stdout, stderr)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		if err != errSilent {
			fmt.Fprintln(stderr, "berth:", err)
		}
		return 1
	}
	return 0
}

// errSilent fails a command whose output already said why.
var errSilent = fmt.Errorf("failed")

func newRoot(version string, stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "berth",
		Short: "Ship Compose apps to robots: only the bytes that changed, switched safely",
		Long: `berth ships containerized software to robots and edge devices. It switches
releases atomically on the device's Docker Engine, health-gates them and rolls
back on failure. The device runs berthd, the agent; this command talks to it.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	root.PersistentFlags().Bool("accept-new-host-key", false, "trust an SSH host key seen for the first time and add it to ~/.ssh/known_hosts (like StrictHostKeyChecking=accept-new); a changed key is always refused")
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(
		newDeploy(version), newDev(), newStatus(), newRollback(), newReleases(), newLogs(),
		newLock(), newUnlock(), newRm(), newPush(), newQuickstart(version),
		newBuild(), newConfig(), newInstall(), newUninstall(),
		newServer(), newLogin(), newFleet(), newDevice(), newRelease(), newUser(), newRollout(), newKeys(),
	)
	return root
}

// defaultTarget is the agent socket on this machine.
const defaultTarget = "unix:///run/berth/berthd.sock"

// addTarget adds --to to a command; BERTH_TO sets its default.
func addTarget(c *cobra.Command, to *string) {
	def := os.Getenv("BERTH_TO")
	if def == "" {
		def = defaultTarget
	}
	c.Flags().StringVar(to, "to", def, "the device: user@host, ssh://user@host:port[?socket=…&berthd=…], a Host alias from ~/.ssh/config, or unix:///path/to/berthd.sock (env BERTH_TO)")
}

// dial returns a client for a --to target: a unix socket on this machine,
// or a device over SSH (berthd dial-stdio on the far side).
func dial(ctx context.Context, to string, acceptNew bool) (*localapi.Client, error) {
	switch {
	case strings.HasPrefix(to, "unix://"):
		return localapi.Unix(strings.TrimPrefix(to, "unix://")), nil
	case strings.HasPrefix(to, "/"):
		return localapi.Unix(to), nil
	}
	sc, err := sshconn.Dial(ctx, to, sshconn.Options{AcceptNewHostKey: acceptNew})
	if err != nil {
		return nil, err
	}
	return localapi.New(to, sc.DialStdio).WithCloser(sc.Close), nil
}

// acceptNewHostKey reads the root's --accept-new-host-key.
func acceptNewHostKey(c *cobra.Command) bool {
	v, _ := c.Flags().GetBool("accept-new-host-key")
	return v
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
