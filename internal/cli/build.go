package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/berth-robotics/berth/internal/build"
	"github.com/berth-robotics/berth/internal/compose"
	"github.com/berth-robotics/berth/internal/engine"
	"github.com/berth-robotics/berth/internal/release"
)

// buildFlags are the flags berth build shares with deploy and release create.
type buildFlags struct {
	args       []string
	localGo    bool
	platform   string
	noBuild    bool
	forceBuild bool
	builder    string
}

func (b *buildFlags) add(c *cobra.Command, withSkip bool) {
	c.Flags().StringArrayVar(&b.args, "build-arg", nil, "KEY=VALUE build arg for every build (overrides the file's); repeatable")
	c.Flags().StringVar(&b.builder, "builder", "", "the engine's builder: auto, buildkit or classic (default: $"+build.EnvBuilder+", else auto: BuildKit when it is the engine's default or a service has build secrets)")
	c.Flags().BoolVar(&b.localGo, "local-go-image", false, "offline Go builds: make "+build.LocalGoImageRef()+" from this machine's Go toolchain (once) and pass it as the build arg GO_IMAGE")
	if withSkip {
		c.Flags().BoolVar(&b.noBuild, "no-build", false, "do not build services with build:; their images <app>-<service>:<version> must exist")
	}
}

func newBuild() *cobra.Command {
	var (
		pf      projectFlags
		version string
		asJSON  bool
		bf      buildFlags
	)
	c := &cobra.Command{
		Use:   "build [-f compose.yaml] [SERVICE...]",
		Short: "Build the images of the services with a build: section",
		Long: `build makes the image of every service with a build: section (or of the
services named) through the local Docker Engine: context, dockerfile, target,
args, labels, build secrets; in parallel, one prefixed line stream per
service, a summary at the end and the full log of each failed build.

The builder is the engine's BuildKit when the engine says it is its default,
when a service has build secrets (secrets: with a file: or an environment:
source, mounted by RUN --mount=type=secret,id=...; they never land in the
image), or when asked with --builder buildkit or BERTH_BUILDER=buildkit;
otherwise the classic builder. A secret that cannot be read, or BuildKit
needed from an engine without it, fails before anything is built.

Each image is tagged <app>-<service>:<version>, the version from git describe
--tags --dirty --always in the Compose file's directory, and labelled
org.opencontainers.image.version and .revision; every build gets the build
arg BERTH_VERSION.

berth deploy and berth release create build first what is stale.`,
		RunE: func(c *cobra.Command, services []string) error {
			ctx := c.Context()
			p, err := pf.load(ctx)
			if err != nil {
				return err
			}
			v, err := buildVersion(ctx, p, version)
			if err != nil {
				return err
			}
			plan, err := build.NewPlan(p, v, services...)
			if err != nil {
				return err
			}
			if len(plan.Targets) == 0 {
				return fmt.Errorf("no service of %s has a build: section: %w", p.App, release.ErrInvalid)
			}
			eng, err := engine.New(ctx, "", "berth-cli")
			if err != nil {
				return err
			}
			defer eng.Close()
			out := c.OutOrStdout()
			if asJSON {
				out = c.ErrOrStderr()
			}
			o, err := bf.options(ctx, eng, out)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "building %d image(s) of %s %s\n", len(plan.Targets), plan.App, v.Describe)
			res, err := build.Run(ctx, eng, plan, o)
			if asJSON {
				if jerr := printJSON(c.OutOrStdout(), map[string]any{"app": plan.App, "version": v.Describe, "revision": v.Revision, "images": res}); jerr != nil {
					return jerr
				}
			}
			return err
		},
	}
	pf.add(c, true)
	c.Flags().StringVar(&version, "version", "", "image version (default: git describe --tags --dirty --always)")
	c.Flags().StringVar(&bf.platform, "platform", "", "build for os/arch[/variant] (default: the engine's own)")
	c.Flags().BoolVar(&asJSON, "json", false, "print the results as JSON (progress goes to stderr)")
	bf.add(c, false)
	return c
}

// buildVersion is --version, else git describe in the project directory.
func buildVersion(ctx context.Context, p *compose.Project, flag string) (build.Version, error) {
	if flag != "" {
		return build.Version{Describe: flag}, nil
	}
	return build.GitVersion(ctx, p.Dir)
}

// options turns the flags into build.Options.
func (b *buildFlags) options(ctx context.Context, eng *engine.Client, out io.Writer) (build.Options, error) {
	o := build.Options{Out: out, Platform: b.platform, Args: map[string]string{}}
	name, flag := b.builder, "--builder"
	if name == "" {
		name, flag = os.Getenv(build.EnvBuilder), build.EnvBuilder
	}
	builder, err := build.ParseBuilder(name)
	if err != nil {
		return o, fmt.Errorf("%s: %w", flag, err)
	}
	o.Builder = builder
	if b.localGo {
		fmt.Fprintf(out, "making %s from this machine's Go toolchain (once)\n", build.LocalGoImageRef())
		ref, err := build.LocalGoImage(ctx, eng)
		if err != nil {
			return o, err
		}
		o.Args["GO_IMAGE"] = ref
	}
	for _, kv := range b.args {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return o, fmt.Errorf("--build-arg %q: want KEY=VALUE: %w", kv, release.ErrInvalid)
		}
		o.Args[k] = v
	}
	return o, nil
}

// buildStale builds, before a deploy or a release, the images of p's
// services with build: that are stale for the platform os/arch ("" is the
// local engine's), and points p's spec at them. Progress goes to out.
func buildStale(ctx context.Context, p *compose.Project, version string, bf buildFlags, platform string, out io.Writer) error {
	if len(p.Builds) == 0 {
		return nil
	}
	v, err := buildVersion(ctx, p, version)
	if err != nil {
		return err
	}
	plan, err := build.NewPlan(p, v)
	if err != nil {
		return err
	}
	plan.Pin(p.Spec)
	if bf.noBuild {
		return nil
	}
	eng, err := engine.New(ctx, "", "berth-cli")
	if err != nil {
		return fmt.Errorf("build the images of %s: %w (--no-build deploys images built before)", p.App, err)
	}
	defer eng.Close()
	if platform != "" {
		if info, err := eng.Info(ctx); err == nil && "linux/"+info.Arch == platform {
			platform = "" // the engine's own: no platform to ask the classic builder for
		}
	}
	stale := *plan
	stale.Targets = nil
	for _, t := range plan.Targets {
		if build.Stale(ctx, eng, plan, t, platform) {
			stale.Targets = append(stale.Targets, t)
		}
	}
	if len(stale.Targets) == 0 {
		fmt.Fprintf(out, "images of %s %s are up to date\n", p.App, v.Describe)
		return nil
	}
	o, err := bf.options(ctx, eng, out)
	if err != nil {
		return err
	}
	o.Platform = platform
	var names []string
	for _, t := range stale.Targets {
		names = append(names, t.Service)
	}
	fmt.Fprintf(out, "building %s of %s %s\n", strings.Join(names, ", "), p.App, v.Describe)
	if _, err := build.Run(ctx, eng, &stale, o); err != nil {
		return fmt.Errorf("%w; nothing was deployed", err)
	}
	return nil
}
