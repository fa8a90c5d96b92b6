// Command berthd is berth's device agent: it runs on the robot, switches
// Compose releases safely on the local Docker Engine and serves the local API.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/berth-robotics/berth/internal/agent"
	"github.com/berth-robotics/berth/internal/engine"
	"github.com/berth-robotics/berth/internal/signing"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

const defaultSocket = "/run/berth/berthd.sock"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "berthd:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "dial-stdio" {
		fs := flag.NewFlagSet("berthd dial-stdio", flag.ContinueOnError)
		socket := fs.String("socket", defaultSocket, "the agent's unix socket")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return agent.DialStdio(ctx, *socket, os.Stdin, os.Stdout)
	}
	if len(args) > 0 && args[0] == "version" {
		fmt.Println(version)
		return nil
	}
	host, _ := os.Hostname()
	fs := flag.NewFlagSet("berthd", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: berthd [flags]        run the agent\n       berthd dial-stdio [--socket PATH]   join stdin/stdout to the agent socket (used over SSH)\n       berthd version\n\nflags:\n")
		fs.PrintDefaults()
	}
	cfg := agent.Config{Version: version}
	fs.StringVar(&cfg.StateDir, "state-dir", "/var/lib/berth", "where the agent keeps releases, journals and locks")
	fs.StringVar(&cfg.DockerHost, "docker-host", "", "Docker Engine address (default: DOCKER_HOST, else the local socket)")
	fs.StringVar(&cfg.Socket, "socket", defaultSocket, "unix socket for the local API (root and the berth group only)")
	fs.StringVar(&cfg.Name, "name", host, "this agent's instance name; agents with different names on one engine ignore each other")
	server := fs.String("server", "", "fleet mode: the fleet server's URL (https://host:port); the device registers once and follows its target")
	key := fs.String("provisioning-key", "", "fleet mode: the fleet's provisioning key, used once to register (default $BERTH_PROVISIONING_KEY)")
	fingerprint := fs.String("server-fingerprint", "", "fleet mode: pin the server's TLS certificate by its SHA-256 fingerprint (as berth server prints it)")
	var trusted []string
	fs.Func("trusted-key", "fleet mode: an ed25519 public key (ed25519:<base64>, as berth keys generate prints it) that signs the releases this device runs; repeatable. Without it, the keys the server gives at registration are pinned", func(s string) error {
		if _, err := signing.ParsePublicKey(s); err != nil {
			return err
		}
		trusted = append(trusted, s)
		return nil
	})
	poll := fs.Duration("poll-wait", 30*time.Second, "fleet mode: how long one long poll of the target waits (a change wakes it at once)")
	logJSON := fs.Bool("log-json", false, "log JSON lines instead of text")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (see berthd -h)", fs.Arg(0))
	}
	if *key == "" {
		*key = os.Getenv("BERTH_PROVISIONING_KEY")
	}
	if *server != "" {
		cfg.Fleet = &agent.FleetConfig{Server: *server, ProvisioningKey: *key, Fingerprint: *fingerprint, PollWait: *poll, TrustedKeys: trusted}
	} else if *key != "" || *fingerprint != "" || len(trusted) > 0 {
		return fmt.Errorf("--provisioning-key, --server-fingerprint and --trusted-key need --server")
	}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, nil)
	if *logJSON {
		h = slog.NewJSONHandler(os.Stderr, nil)
	}
	log := slog.New(h)
	eng, err := engine.New(ctx, cfg.DockerHost, cfg.Name)
	if err != nil {
		return err
	}
	defer eng.Close()
	a, err := agent.New(cfg, eng, log)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}
