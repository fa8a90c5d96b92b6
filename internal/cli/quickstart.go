package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-robotics/berth/internal/agent"
	"github.com/berth-robotics/berth/internal/engine"
	"github.com/berth-robotics/berth/internal/goimage"
	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/server"
	"github.com/berth-robotics/berth/internal/serverapi"
)

func newQuickstart(version string) *cobra.Command {
	var exit bool
	var dir, port, serverAddr string
	c := &cobra.Command{
		Use:   "quickstart [--exit]",
		Short: "Run berth on this machine: a fleet server with its dashboard, an agent, the example app built locally and deployed",
		Long: `quickstart starts a fleet server with its web dashboard (data under
./.berth/quickstart/server) and an agent in its fleet (state under
./.berth/quickstart) against the local Docker Engine, builds the example app
in examples/hello with the local Go toolchain (no registry needed), deploys
it, and prints what runs and where, and the dashboard's URL and how to log in.
It runs until Ctrl-C, then removes the example app (its volume stays).
With --exit it checks the app answers, removes it and exits 0.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return runQuickstart(c.Context(), version, dir, port, serverAddr, exit, c.OutOrStdout(), c.ErrOrStderr())
		},
	}
	c.Flags().BoolVar(&exit, "exit", false, "verify the example answers, clean up and exit (for CI)")
	c.Flags().StringVar(&dir, "dir", filepath.Join(".berth", "quickstart"), "the agent's state directory")
	c.Flags().StringVar(&port, "port", "18080", "host port (on 127.0.0.1) for the example app")
	c.Flags().StringVar(&serverAddr, "server-listen", "127.0.0.1:7070", "address of the fleet server and its dashboard (loopback)")
	return c
}

func runQuickstart(ctx context.Context, version, dir, port, serverAddr string, exit bool, out, errOut io.Writer) error {
	start := time.Now()
	if _, err := os.Stat(filepath.Join("examples", "hello", "compose.yaml")); err != nil {
		return fmt.Errorf("run quickstart from the root of the berth repository (examples/hello not found): %w", err)
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	socket := filepath.Join(dir, "berthd.sock")
	if len(socket) > 100 { // unix socket paths are short
		socket = filepath.Join(os.TempDir(), fmt.Sprintf("berth-quickstart-%d.sock", os.Getuid()))
	}
	step := func(format string, args ...any) {
		fmt.Fprintf(out, "%5.1fs  %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}

	eng, err := engine.New(ctx, "", "quickstart")
	if err != nil {
		return err
	}
	defer eng.Close()
	info, err := eng.Info(ctx)
	if err != nil {
		return err
	}
	step("Docker Engine %s (API %s) answers", info.Version, info.APIVersion)

	step("building the example image berth-example/hello:latest from examples/hello (local Go toolchain, FROM scratch)")
	bin, err := goimage.Binary(ctx, filepath.Join("examples", "hello"))
	if err != nil {
		return err
	}
	bctx, err := goimage.Context(bin, `LABEL org.opencontainers.image.title="berth example"`)
	if err != nil {
		return err
	}
	if _, err := eng.BuildImage(ctx, bctx, "berth-example/hello:latest"); err != nil {
		return err
	}

	logf, err := os.OpenFile(filepath.Join(dir, "berthd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()

	// The fleet server, with its dashboard, and a fleet for the agent.
	srv, err := startQuickstartServer(filepath.Join(dir, "server"), serverAddr, logf)
	if err != nil {
		return err
	}
	defer srv.stop()
	step("fleet server and dashboard at %s/ui/ (log: %s)", srv.url, logf.Name())
	cfg := agent.Config{StateDir: dir, Socket: socket, Name: "quickstart", Version: version,
		Settle: release.Duration(2 * time.Second), VerifyTimeout: release.Duration(time.Minute),
		Fleet: &agent.FleetConfig{Server: srv.url, ProvisioningKey: srv.key, PollWait: 10 * time.Second}}
	ag, err := agent.New(cfg, eng, slog.New(slog.NewTextHandler(logf, nil)))
	if err != nil {
		return err
	}
	actx, stopAgent := context.WithCancel(context.Background())
	agentDone := make(chan error, 1)
	go func() { agentDone <- ag.Run(actx) }()
	defer func() {
		stopAgent()
		<-agentDone
	}()
	if err := waitSocket(ctx, socket, agentDone); err != nil {
		return err
	}
	step("agent %q serves unix://%s (log: %s)", cfg.Name, socket, logf.Name())

	os.Setenv("HELLO_PORT", port)
	to := "unix://" + socket
	f := deployFlags{files: []string{filepath.Join("examples", "hello", "compose.yaml")}, to: to, version: "quickstart"}
	if err := runDeploy(ctx, f, out); err != nil {
		return err
	}
	url := "http://127.0.0.1:" + port + "/"
	body, err := get(ctx, url)
	if err != nil {
		return fmt.Errorf("the example app was deployed but %s does not answer: %w", url, err)
	}
	step("%s answers: %s", url, strings.TrimSpace(body))
	cleanup := func() error {
		cl, err := dial(context.Background(), to, false)
		if err != nil {
			return err
		}
		defer cl.Close()
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err = cl.Remove(cctx, "hello", false)
		return err
	}
	if exit {
		if err := cleanup(); err != nil {
			return fmt.Errorf("clean up the example: %w", err)
		}
		step("quickstart verified; example removed (its volume is kept)")
		return nil
	}
	fmt.Fprintf(out, `
The dashboard: %s/ui/ — log in with the admin token in %s
(the agent "quickstart" is a device of fleet "quickstart"; the example app shows as a local override)
The example app runs at %s
Try, in another terminal:
  go run ./cmd/berth status --to %s
  go run ./cmd/berth logs   --to %s --app hello -f
  GREETING=Hi go run ./cmd/berth deploy -f examples/hello/compose.yaml --to %s
  go run ./cmd/berth rollback --to %s --app hello
Ctrl-C stops the agent and removes the example app (its volume stays).
`, srv.url, srv.tokenFile, url, to, to, to, to)
	select {
	case <-ctx.Done():
	case err := <-agentDone:
		agentDone <- err
		return fmt.Errorf("agent stopped: %w", err)
	}
	fmt.Fprintln(out, "\nstopping: removing the example app")
	return cleanup()
}

func waitSocket(ctx context.Context, socket string, agentDone chan error) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if cl, err := dial(ctx, "unix://"+socket, false); err == nil {
			_, err := cl.State(ctx)
			cl.Close()
			if err == nil {
				return nil
			}
		}
		select {
		case err := <-agentDone:
			agentDone <- err
			return fmt.Errorf("agent did not start: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return errors.New("agent socket did not answer within 30s")
}

func get(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return string(b), nil
}

// quickstartServer is the fleet server quickstart runs in-process.
type quickstartServer struct {
	url, key, tokenFile string
	stop                func()
}

// startQuickstartServer serves the fleet server and its dashboard from
// dataDir on addr (loopback, plain HTTP) and makes sure the fleet
// "quickstart" exists, returning a provisioning key for it.
func startQuickstartServer(dataDir, addr string, logw io.Writer) (*quickstartServer, error) {
	sctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	cfg := server.Config{DataDir: dataDir, Listen: addr, Logger: slog.New(slog.NewTextHandler(logw, nil)),
		PollInterval: 10 * time.Second, Ready: func(url, _ string) { ready <- url }}
	go func() { done <- server.Serve(sctx, cfg) }()
	qs := &quickstartServer{tokenFile: filepath.Join(dataDir, "admin.token"), stop: func() { cancel(); <-done }}
	select {
	case qs.url = <-ready:
	case err := <-done:
		cancel()
		return nil, fmt.Errorf("fleet server on %s (another one running? --server-listen picks another address): %w", addr, err)
	case <-time.After(30 * time.Second):
		qs.stop()
		return nil, errors.New("the fleet server did not start within 30s")
	}
	fail := func(err error) (*quickstartServer, error) { qs.stop(); return nil, err }
	tok, err := os.ReadFile(qs.tokenFile)
	if err != nil {
		return fail(fmt.Errorf("the fleet server's admin token: %w", err))
	}
	cl, err := serverapi.New(qs.url, serverapi.Options{Token: strings.TrimSpace(string(tok))})
	if err != nil {
		return fail(err)
	}
	defer cl.Close()
	ctx, cancelReq := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancelReq()
	f, err := cl.CreateFleet(ctx, "quickstart")
	if errors.Is(err, release.ErrConflict) {
		f, err = cl.RotateProvisioningKey(ctx, "quickstart") // its devices keep their tokens
	}
	if err != nil {
		return fail(fmt.Errorf("fleet quickstart: %w", err))
	}
	qs.key = f.ProvisioningKey
	return qs, nil
}
