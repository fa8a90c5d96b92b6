package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-robotics/berth/internal/build"
	"github.com/berth-robotics/berth/internal/devloop"
	"github.com/berth-robotics/berth/internal/engine"
	"github.com/berth-robotics/berth/internal/localapi"
	"github.com/berth-robotics/berth/internal/release"
)

func newDev() *cobra.Command {
	var f deployFlags
	var settle, poll time.Duration
	c := &cobra.Command{
		Use:   "dev [-f compose.yaml] [-p APP] --to TARGET",
		Short: "Watch a Compose project; on each saved change rebuild, send and switch it on the device",
		Long: `dev builds the services of a Compose file that have build: sections, deploys
the app to the device as berth deploy does, then watches their build contexts
and the Compose file. On each saved change it rebuilds the services whose
context changed (the builder's cache keeps the rest of each build), sends only
the pieces that changed, and switches with the usual health gate — a service
without a healthcheck must run --settle (default 2s, shorter than the agent's
own 10s) without restarting — while the app's logs keep coming. A switch that
fails rolls back on the device, and dev goes on watching. Ctrl-C stops it and
leaves the last release that passed its health gate running.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			f.acceptNew = acceptNewHostKey(c)
			return runDev(c.Context(), f, settle, poll, c.OutOrStdout())
		},
	}
	f.project.add(c, true)
	c.Flags().BoolVar(&f.force, "force", false, "switch without waiting for update locks or maintenance windows")
	c.Flags().DurationVar(&settle, "settle", 2*time.Second, "how long a service without a healthcheck must run without restarting to count as up (the agent's own setting otherwise, 10s by default)")
	c.Flags().DurationVar(&poll, "poll", 300*time.Millisecond, "how often the build contexts are looked at")
	f.build.add(c, false)
	addTarget(c, &f.to)
	return c
}

// runDev is berth dev: the CLI's build, push, switch and logs, in
// devloop's watch loop.
func runDev(ctx context.Context, f deployFlags, settle, poll time.Duration, out io.Writer) error {
	p, err := f.project.load(ctx)
	if err != nil {
		return err
	}
	if len(p.Builds) == 0 {
		return fmt.Errorf("%s has no service with a build: section: nothing for berth dev to rebuild (berth deploy sends it as it is): %w", strings.Join(p.ComposeFiles, ", "), release.ErrInvalid)
	}
	cl, err := dial(ctx, f.to, f.acceptNew)
	if err != nil {
		return err
	}
	defer cl.Close()
	info, err := cl.ContentInfo(ctx)
	if err != nil {
		return fmt.Errorf("ask %s for its platform: %w", f.to, err)
	}
	eng, err := engine.New(ctx, "", "berth-cli")
	if err != nil {
		return fmt.Errorf("berth dev builds with the local Docker Engine, which does not answer: %w", err)
	}
	defer eng.Close()
	platform := ""
	if ei, err := eng.Info(ctx); err == nil && ei.Arch != info.Arch {
		platform = "linux/" + info.Arch
	}
	bo, err := f.build.options(ctx, eng, out)
	if err != nil {
		return err
	}
	bo.Platform = platform
	files := p.ComposeFiles // absolute
	contexts := map[string]string{}
	for svc, b := range p.Builds {
		contexts[svc] = b.Context
	}
	var mu sync.Mutex // the spec: pinned by builds, read by deploys
	version := ""
	loop := &devloop.Loop{
		Contexts: contexts, Files: files, Poll: poll, Out: out,
		Build: func(ctx context.Context, services []string) error {
			if services == nil { // the Compose file changed, or the first round
				np, err := f.project.load(ctx)
				if err != nil {
					return err
				}
				mu.Lock()
				p = np
				mu.Unlock()
			}
			v, err := buildVersion(ctx, p, "")
			if err != nil {
				return err
			}
			plan, err := build.NewPlan(p, v, services...)
			if err != nil {
				return err
			}
			if _, err := build.Run(ctx, eng, plan, bo); err != nil {
				return err
			}
			mu.Lock()
			plan.Pin(p.Spec)
			version = v.Describe
			mu.Unlock()
			return nil
		},
		Deploy: func(ctx context.Context) error {
			mu.Lock()
			spec, ver, proj := *p.Spec, version, p
			mu.Unlock()
			values, err := proj.ReadFiles() // runtime configs and secrets
			if err != nil {
				return err
			}
			var images []string
			seen := map[string]bool{}
			for _, name := range sortedServices(&spec) {
				if spec.Services[name].PullPolicy == release.PullAlways {
					continue // the device pulls it
				}
				if img := spec.Services[name].Image; !seen[img] {
					seen[img] = true
					images = append(images, img)
				}
			}
			start := time.Now()
			if _, err := push(ctx, cl, images, out, false, true); err != nil {
				return fmt.Errorf("sending the images: %w", err)
			}
			fmt.Fprintf(out, "switching %s to %s: a service without a healthcheck must run %s without restarting (dev mode; the agent's own setting otherwise)\n", p.App, ver, settle)
			req := localapi.DeployRequest{Version: ver, Spec: spec, Force: f.force, By: whoDeploys(), Settle: release.Duration(settle), Files: values}
			resp, err := cl.Deploy(ctx, p.App, req)
			if err != nil {
				return fmt.Errorf("deploy %s: %w", p.App, err)
			}
			if resp.NoChange {
				fmt.Fprintf(out, "%s already runs release %s; nothing to switch\n", p.App, release.ShortID(resp.Release))
				return nil
			}
			last, err := follow(ctx, cl, p.App, resp, out, false, start)
			if err != nil {
				return err
			}
			if last.Phase != release.PhaseIdle {
				return fmt.Errorf("release %s was not committed (%s): %s; the device runs what it ran before", release.ShortID(resp.Release), last.Phase, last.Error)
			}
			fmt.Fprintf(out, "%s %s is running (release %s)\n", p.App, ver, release.ShortID(resp.Release))
			return nil
		},
		Logs: func(ctx context.Context) {
			mu.Lock()
			names := sortedServices(p.Spec)
			mu.Unlock()
			var wg sync.WaitGroup
			for _, svc := range names {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_ = cl.Logs(ctx, p.App, svc, true, "5", &prefixed{out: out, prefix: svc + " | "})
				}()
			}
			wg.Wait()
		},
	}
	return loop.Run(ctx)
}

// prefixed writes whole lines, each with a prefix (several services'
// logs into one terminal).
type prefixed struct {
	mu     sync.Mutex
	out    io.Writer
	prefix string
	buf    []byte
}

func (p *prefixed) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		if _, err := fmt.Fprintf(p.out, "%s%s\n", p.prefix, p.buf[:i]); err != nil {
			return 0, err
		}
		p.buf = p.buf[i+1:]
	}
}
