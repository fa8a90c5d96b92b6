package build

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/berth-robotics/berth/internal/compose"
	"github.com/berth-robotics/berth/internal/engine"
	"github.com/berth-robotics/berth/internal/release"
)

// Image labels every build gets.
const (
	LabelVersion  = "org.opencontainers.image.version"
	LabelRevision = "org.opencontainers.image.revision"
)

// ArgVersion is the build arg berth passes to every build, the version (a
// Dockerfile uses it with ARG BERTH_VERSION; args of the file or the command
// line win). The revision is in the image's label.
const ArgVersion = "BERTH_VERSION"

// Target is one image to build: a service's build: section and its tags.
type Target struct {
	Service string
	compose.Build
	Tag  string   // <app>-<service>:<version>: what the release runs
	Tags []string // Tag, and the file's image: name if it gives one
}

// Plan is what a build makes: one image per service with a build: section.
type Plan struct {
	App     string
	Version Version
	Targets []Target // sorted by service
}

// NewPlan plans the builds of p at version v: of the named services, or of
// every service with a build: section when none is named.
func NewPlan(p *compose.Project, v Version, services ...string) (*Plan, error) {
	plan := &Plan{App: p.App, Version: v}
	want := services
	if len(want) == 0 {
		want = slices.Sorted(maps.Keys(p.Builds))
	}
	seen := map[string]bool{}
	for _, s := range want {
		if seen[s] {
			continue
		}
		seen[s] = true
		b, ok := p.Builds[s]
		if !ok {
			if _, exists := p.Spec.Services[s]; exists {
				return nil, fmt.Errorf("service %s has no build: section: %w", s, release.ErrInvalid)
			}
			return nil, fmt.Errorf("no service %s in app %s: %w", s, p.App, release.ErrInvalid)
		}
		t := Target{Service: s, Build: b, Tag: p.App + "-" + s + ":" + v.Tag()}
		t.Tags = []string{t.Tag}
		if b.Image != "" && b.Image != t.Tag {
			t.Tags = append(t.Tags, b.Image)
		}
		plan.Targets = append(plan.Targets, t)
	}
	slices.SortFunc(plan.Targets, func(a, b Target) int { return strings.Compare(a.Service, b.Service) })
	return plan, nil
}

// Pin points the spec's services at the images the plan builds.
func (p *Plan) Pin(spec *release.Spec) {
	for _, t := range p.Targets {
		if s, ok := spec.Services[t.Service]; ok {
			s.Image = t.Tag
			spec.Services[t.Service] = s
		}
	}
}

// Engine is the part of engine.Client that builds use.
type Engine interface {
	Build(ctx context.Context, o engine.BuildOptions, line func(string)) (string, error)
	Image(ctx context.Context, ref string) (engine.ImageInfo, error)
	Builders(ctx context.Context) (engine.Builders, error)
	DialSession(ctx context.Context, proto string, meta map[string][]string) (net.Conn, error)
}

// Options steer Run.
type Options struct {
	// Platform is os/arch[/variant] to build for; "" is the engine's own.
	// Another than the engine's own makes the auto builder BuildKit, which
	// runs build stages FROM --platform=$BUILDPLATFORM natively and
	// cross-compiles; the classic builder would need an emulator.
	Platform string
	// Native is the engine's own platform, os/arch[/variant]; Run finds it
	// when empty.
	Native string
	// Args override build args of the file (and berth's own).
	Args map[string]string
	// Out gets one prefixed line stream per service and the summary; nil
	// prints nothing (failed builds' logs are still in the results).
	Out io.Writer
	// Parallel bounds the builds at once; default 4.
	Parallel int
	// Builder picks the engine's builder: BuilderAuto (""), BuilderBuildKit
	// or BuilderClassic.
	Builder Builder
}

// Result is what became of one target.
type Result struct {
	Service  string        `json:"service"`
	Image    string        `json:"image"`
	Builder  Builder       `json:"builder,omitempty"` // the builder that built it (or would have)
	ID       string        `json:"id,omitempty"`
	Seconds  float64       `json:"seconds"`
	UpToDate bool          `json:"up_to_date,omitempty"` // not built: the image of this version was there
	Error    string        `json:"error,omitempty"`
	Log      []string      `json:"-"`
	Duration time.Duration `json:"-"`
}

// Stale reports whether t must be built: the image of this version is not
// in the engine, the tree is dirty (an uncommitted edit has no version of its
// own), or the image was built from another commit or for another platform.
func Stale(ctx context.Context, eng Engine, plan *Plan, t Target, platform string) bool {
	if plan.Version.Dirty {
		return true
	}
	info, err := eng.Image(ctx, t.Tag)
	if err != nil {
		return true
	}
	if info.Labels[LabelRevision] != plan.Version.Revision {
		return true
	}
	if platform != "" {
		goos, arch := splitPlatform(platform)
		if info.OS != goos || info.Arch != arch {
			return true
		}
	}
	return false
}

// ownArgsWarning reports the classic builder's warning about build args
// that no Dockerfile line consumed, when it names only berth's own.
func ownArgsWarning(l string) bool {
	rest, ok := strings.CutPrefix(l, "[Warning] One or more build-args [")
	if !ok {
		return false
	}
	names, ok := strings.CutSuffix(rest, "] were not consumed")
	if !ok {
		return false
	}
	for _, n := range strings.Fields(names) {
		if _, platform := platformArgs("linux/amd64")[n]; n != ArgVersion && !platform {
			return false
		}
	}
	return true
}

// platformArgs are BuildKit's automatic platform build args for a build on
// and for the platform os/arch[/variant].
func platformArgs(p string) map[string]string {
	if p == "" {
		return nil
	}
	parts := strings.SplitN(p, "/", 3)
	if len(parts) < 2 {
		return nil
	}
	variant := ""
	if len(parts) == 3 {
		variant = parts[2]
	}
	return map[string]string{
		"BUILDPLATFORM": p, "BUILDOS": parts[0], "BUILDARCH": parts[1], "BUILDVARIANT": variant,
		"TARGETPLATFORM": p, "TARGETOS": parts[0], "TARGETARCH": parts[1], "TARGETVARIANT": variant,
	}
}

// splitPlatform splits os/arch[/variant] into os and arch.
func splitPlatform(p string) (goos, arch string) {
	goos, arch, _ = strings.Cut(p, "/")
	arch, _, _ = strings.Cut(arch, "/")
	return goos, arch
}

// Run builds the plan's targets in parallel, all of them even when one
// fails, and returns a result per target; the error names the ones that
// failed. A build secret that cannot be read, or a builder the targets need
// and the engine lacks, fails the run before anything is built.
func Run(ctx context.Context, eng Engine, plan *Plan, o Options) ([]Result, error) {
	start := time.Now()
	if o.Native == "" {
		b, err := eng.Builders(ctx)
		if err != nil {
			return nil, err
		}
		o.Native = b.Platform()
	}
	if o.Platform == o.Native {
		o.Platform = ""
	}
	builders, err := chooseBuilders(ctx, eng, plan, o.Builder, o.Platform != "")
	if err != nil {
		return nil, err
	}
	par := o.Parallel
	if par <= 0 {
		par = 4
	}
	width := 0
	for _, t := range plan.Targets {
		width = max(width, len(t.Service))
	}
	var mu sync.Mutex
	say := func(service, line string) {
		if o.Out == nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(o.Out, "%-*s | %s\n", width, service, line)
	}
	results := make([]Result, len(plan.Targets))
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for i, t := range plan.Targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				results[i] = Result{Service: t.Service, Image: t.Tag, Builder: builders[i], Error: ctx.Err().Error()}
				return
			}
			defer func() { <-sem }()
			results[i] = buildOne(ctx, eng, plan, t, o, builders[i], say)
		}()
	}
	wg.Wait()

	var failed []string
	for _, r := range results {
		if r.Error != "" {
			failed = append(failed, r.Service)
		}
	}
	if o.Out != nil {
		fmt.Fprintf(o.Out, "\n%s %s: %d built, %d failed, %.1fs\n", plan.App, plan.Version.Describe, len(results)-len(failed), len(failed), time.Since(start).Seconds())
		for _, r := range results {
			if r.Error != "" {
				fmt.Fprintf(o.Out, "  %-*s  FAILED after %.1fs: %s\n", width, r.Service, r.Seconds, r.Error)
			} else {
				fmt.Fprintf(o.Out, "  %-*s  %s  %s  %.1fs\n", width, r.Service, r.Image, release.ShortID(r.ID), r.Seconds)
			}
		}
		for _, r := range results {
			if r.Error != "" {
				fmt.Fprintf(o.Out, "\n--- full log of %s ---\n%s\n--- end of %s ---\n", r.Service, strings.Join(r.Log, "\n"), r.Service)
			}
		}
	}
	if len(failed) > 0 {
		var built []string
		for _, r := range results {
			if r.Error == "" {
				built = append(built, r.Service)
			}
		}
		what := "none was built"
		if len(built) > 0 {
			what = "the images of " + strings.Join(built, ", ") + " were built and tagged"
		}
		return results, fmt.Errorf("build of %s failed: %s (%s)", plan.App, strings.Join(failed, ", "), what)
	}
	return results, nil
}

func buildOne(ctx context.Context, eng Engine, plan *Plan, t Target, o Options, builder Builder, say func(service, line string)) Result {
	start := time.Now()
	r := Result{Service: t.Service, Image: t.Tag, Builder: builder}
	line := func(l string) {
		if strings.TrimSpace(l) == "" || ownArgsWarning(l) {
			return // berth's own args, offered to every Dockerfile
		}
		r.Log = append(r.Log, l)
		say(t.Service, l)
	}
	fail := func(err error) Result {
		r.Duration = time.Since(start)
		r.Seconds = r.Duration.Seconds()
		r.Error = err.Error()
		line("error: " + r.Error)
		return r
	}
	if len(t.Platforms) > 0 && o.Platform != "" && !slices.Contains(t.Platforms, o.Platform) {
		return fail(fmt.Errorf("the robot is %s, but build.platforms lists only %s", o.Platform, strings.Join(t.Platforms, ", ")))
	}
	args := map[string]string{ArgVersion: plan.Version.Describe}
	maps.Copy(args, t.Args)
	maps.Copy(args, o.Args)
	labels := map[string]string{LabelVersion: plan.Version.Describe, LabelRevision: plan.Version.Revision}
	maps.Copy(labels, t.Labels)

	if st, err := os.Stat(t.Context); err != nil || !st.IsDir() {
		return fail(fmt.Errorf("the build context %s is not a directory: check build.context", t.Context))
	}
	dfAbs := t.Dockerfile
	if !filepath.IsAbs(dfAbs) {
		dfAbs = filepath.Join(t.Context, dfAbs)
	}
	if _, err := os.Stat(dfAbs); err != nil {
		return fail(fmt.Errorf("no Dockerfile at %s: write one there, or name yours with build.dockerfile", dfAbs))
	}
	bo := engine.BuildOptions{Tags: t.Tags, Target: t.Target, Args: args, Labels: labels, Platform: o.Platform}
	var id string
	var err error
	// The platform args, so one Dockerfile serves both builders: BuildKit
	// sets the TARGET ones from the platform itself, but a global ARG
	// BUILDPLATFORM (which the classic builder needs to expand FROM
	// --platform=$BUILDPLATFORM) takes its value from the build args; the
	// classic builder builds only for its own platform and sets none.
	for k, v := range platformArgs(o.Native) {
		if _, set := bo.Args[k]; !set && (builder != BuilderBuildKit || strings.HasPrefix(k, "BUILD")) {
			bo.Args[k] = v
		}
	}
	if builder == BuilderBuildKit {
		id, err = buildKit(ctx, eng, t, dfAbs, bo, line)
	} else {
		id, err = classic(ctx, eng, t, bo, line)
	}
	if err != nil {
		if msg := err.Error(); strings.Contains(msg, "registry") || strings.Contains(msg, "pull access denied") || strings.Contains(msg, "dial tcp") {
			err = fmt.Errorf("%w (a FROM image is not in the engine and cannot be pulled: make it locally and tag it, e.g. --local-go-image for the Go image, or name one with --build-arg)", err)
		}
		return fail(err)
	}
	if o.Platform != "" {
		info, err := eng.Image(ctx, id)
		if err != nil {
			return fail(err)
		}
		if goos, arch := splitPlatform(o.Platform); info.OS != goos || info.Arch != arch {
			return fail(fmt.Errorf("built for %s/%s, but the robot is %s: give the Dockerfile's FROM images for %s", info.OS, info.Arch, o.Platform, o.Platform))
		}
	}
	r.ID = id
	r.Duration = time.Since(start)
	r.Seconds = r.Duration.Seconds()
	return r
}

// classic builds t with the engine's classic builder from a context tar.
func classic(ctx context.Context, eng Engine, t Target, bo engine.BuildOptions, line func(string)) (string, error) {
	pr, pw := io.Pipe()
	dfc := make(chan string, 1)
	go func() {
		df, err := contextTar(pw, t.Context, t.Dockerfile)
		dfc <- df
		pw.CloseWithError(err)
	}()
	// the Dockerfile's name inside the tar is known once the walk passed it;
	// it is the relative path unless the Dockerfile lies outside the context
	bo.Context, bo.Dockerfile = pr, dockerfileInTar(t.Context, t.Dockerfile)
	id, err := eng.Build(ctx, bo, line)
	pr.CloseWithError(io.ErrClosedPipe)
	<-dfc
	return id, err
}
