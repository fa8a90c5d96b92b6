package cli

import (
	"bytes"
	"context"
	"encoding/json"
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
	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/server"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/transfer"
)

func newQuickstart(version string) *cobra.Command {
	var exit bool
	var dir, port, serverAddr string
	c := &cobra.Command{
		Use:   "quickstart [--exit]",
		Short: "Run berth on this machine: a fleet server with its dashboard, an agent, the robot example built, released and running",
		Long: `quickstart starts a fleet server with its web dashboard (data under
./.berth/quickstart/server) and an agent in its fleet "quickstart" (state under
./.berth/quickstart) against the local Docker Engine; builds examples/robot
(three services) from source with this machine's Go toolchain (no registry
needed: berth build --local-go-image), creates a release of it on the server
(uploading the images), assigns it to the fleet, and waits until the agent has
fetched it from the server, switched and found every service healthy. It
prints the example's web UI, the dashboard's URL and how to log in, and runs
until Ctrl-C, then removes the example app (its volume stays). With --exit it
checks the web UI answers, removes the app and exits 0.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return runQuickstart(c.Context(), version, dir, port, serverAddr, exit, c.OutOrStdout(), c.ErrOrStderr())
		},
	}
	c.Flags().BoolVar(&exit, "exit", false, "verify the example answers, clean up and exit (for CI)")
	c.Flags().StringVar(&dir, "dir", filepath.Join(".berth", "quickstart"), "the agent's state directory")
	c.Flags().StringVar(&port, "port", "18090", "host port (on 127.0.0.1) for the example's web UI")
	c.Flags().StringVar(&serverAddr, "server-listen", "127.0.0.1:7070", "address of the fleet server and its dashboard (loopback)")
	return c
}

func runQuickstart(ctx context.Context, version, dir, port, serverAddr string, exit bool, out, errOut io.Writer) error {
	start := time.Now()
	example := filepath.Join("examples", "robot", "compose.yaml")
	if _, err := os.Stat(example); err != nil {
		return fmt.Errorf("run quickstart from the root of the berth repository (%s not found): %w", example, err)
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

	// The example, built from source, released on the server, assigned.
	os.Setenv("ROBOT_UI_PORT", port)
	tok, err := os.ReadFile(srv.tokenFile)
	if err != nil {
		return err
	}
	server := []string{"--server", srv.url, "--token", strings.TrimSpace(string(tok))}
	step("building examples/robot (berth build --local-go-image) and creating a release of it on the server")
	var created bytes.Buffer
	if Main(ctx, version, append([]string{"release", "create", "-f", example, "--fleet", "quickstart", "--app", "robot",
		"--version", "quickstart", "--local-go-image", "--json"}, server...), &created, errOut) != 0 {
		return errors.New("the example's release was not created (the lines above say why)")
	}
	var rel struct {
		ID     string `json:"id"`
		Upload struct {
			BytesSent int64 `json:"bytes_sent"`
		} `json:"upload"`
	}
	if err := json.Unmarshal(created.Bytes(), &rel); err != nil || rel.ID == "" {
		return fmt.Errorf("release create --json said %q: %v", created.String(), err)
	}
	step("release %s of robot created (%s uploaded); assigning it to fleet quickstart", release.ShortID(rel.ID), transfer.Human(rel.Upload.BytesSent))
	if Main(ctx, version, append([]string{"release", "assign", rel.ID, "--fleet", "quickstart", "--all"}, server...), io.Discard, errOut) != 0 {
		return errors.New("the example's release was not assigned (the lines above say why)")
	}
	to := "unix://" + socket
	if err := awaitFleetRelease(ctx, to, "robot", rel.ID, 5*time.Minute, agentDone); err != nil {
		return err
	}
	step("the agent fetched the release from the server, switched, and every service is healthy")
	url := "http://127.0.0.1:" + port + "/"
	body, err := get(ctx, url)
	if err != nil {
		return fmt.Errorf("the example runs but its web UI %s does not answer: %w", url, err)
	}
	step("%s answers (%d bytes of the robot's web UI)", url, len(body))
	cleanup := func() error {
		cl, err := dial(context.Background(), to, false)
		if err != nil {
			return err
		}
		defer cl.Close()
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err = cl.Remove(cctx, "robot", false, "")
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
(the agent "quickstart" is a device of fleet "quickstart", running release %s of robot)
The robot's web UI: %s
Try, in another terminal (examples/robot/README.md walks through more):
  go run ./cmd/berth status --to %s
  go run ./cmd/berth logs   --to %s --app robot -f
  STOP_DISTANCE_M=1.2 go run ./cmd/berth deploy -f %s --to %s --local-go-image
  go run ./cmd/berth rollback --to %s --app robot
Ctrl-C stops the server and the agent and removes the example app (its volume stays).
`, srv.url, srv.tokenFile, release.ShortID(rel.ID), url, to, to, example, to, to)
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

// awaitFleetRelease waits until the agent at to runs the fleet release id
// of app, idle, every service healthy (or running, without a healthcheck).
func awaitFleetRelease(ctx context.Context, to, app, id string, limit time.Duration, agentDone chan error) error {
	cl, err := dial(ctx, to, false)
	if err != nil {
		return err
	}
	defer cl.Close()
	deadline := time.Now().Add(limit)
	var last release.AppState
	for time.Now().Before(deadline) {
		if st, err := cl.State(ctx); err == nil {
			last = st.Apps[app]
			if last.FleetFailed == id {
				return fmt.Errorf("the agent tried release %s of %s and rolled it back: %s", release.ShortID(id), app, last.Error)
			}
			if last.FleetRelease == id && last.Phase == release.PhaseIdle && allHealthy(last) {
				return nil
			}
		}
		select {
		case err := <-agentDone:
			agentDone <- err
			return fmt.Errorf("agent stopped: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	return fmt.Errorf("the agent did not run release %s of %s within %s (last: phase %s, release %s, error %q); its log says more",
		release.ShortID(id), app, limit, last.Phase, release.ShortID(last.FleetRelease), last.Error)
}

func allHealthy(a release.AppState) bool {
	if len(a.Services) == 0 {
		return false
	}
	for _, s := range a.Services {
		if s.State != "running" || (s.Health != "" && s.Health != "healthy") {
			return false
		}
	}
	return true
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
