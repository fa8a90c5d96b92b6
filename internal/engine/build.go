package engine

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/versions"

	"github.com/berth-robotics/berth/internal/release"
)

// BuildOptions describe one image build: with the engine's classic builder
// from a context tar, or with its BuildKit from a client session.
type BuildOptions struct {
	Context    io.Reader // classic: a tar of the build context
	Dockerfile string    // its path inside the context tar (BuildKit: inside the session's dockerfile directory)
	Tags       []string
	Target     string // multi-stage target; "" builds the last stage
	Args       map[string]string
	Labels     map[string]string
	Platform   string // os/arch[/variant]; "" is the engine's own

	// Session, when set, builds with BuildKit: the context, the Dockerfile
	// and the secrets come from the client session of this ID, attached
	// with DialSession (see internal/buildkit), and Context is unused.
	Session string
	// Trace gets each BuildKit progress message (moby.buildkit.trace: a
	// protobuf StatusResponse of BuildKit's control API), undecoded: this
	// package stays free of BuildKit, which berthd links no part of.
	Trace func(msg []byte)
}

// Builders says which builders the engine offers.
type Builders struct {
	Default  string // the engine's default: "1" classic, "2" BuildKit
	BuildKit bool   // a BuildKit build (version=2, with a /session) is accepted
	API      string // the negotiated API version
	OS       string
	Arch     string // the engine's architecture, as GOARCH names it
	Variant  string // arm: v7 (the engine reports none; berth assumes v7 for arm)
}

// Platform is the engine's own platform, os/arch[/variant].
func (b Builders) Platform() string {
	p := b.OS + "/" + b.Arch
	if b.Variant != "" {
		p += "/" + b.Variant
	}
	return p
}

// Builders asks the engine which builders it offers. An engine's default
// may be the classic builder while it has BuildKit built in: Linux engines
// since API 1.39 (Docker 18.09) take version=2 builds with a client session.
func (c *Client) Builders(ctx context.Context) (Builders, error) {
	p, err := c.api.Ping(ctx)
	if err != nil {
		return Builders{}, fmt.Errorf("engine ping: %w", err)
	}
	b := Builders{Default: string(p.BuilderVersion), API: c.api.ClientVersion(), OS: p.OSType}
	if v, err := c.api.ServerVersion(ctx); err == nil {
		b.Arch = v.Arch
		if b.Arch == "arm" {
			b.Variant = "v7"
		}
	}
	if b.Default == "" {
		b.Default = string(build.BuilderV1)
	}
	b.BuildKit = b.Default == string(build.BuilderBuildKit) ||
		(p.OSType != "windows" && versions.GreaterThanOrEqualTo(b.API, "1.39"))
	return b, nil
}

// DialSession opens the engine's /session endpoint, hijacked, for a
// BuildKit client session (its Run's dialer).
func (c *Client) DialSession(ctx context.Context, proto string, meta map[string][]string) (net.Conn, error) {
	conn, err := c.api.DialHijack(ctx, "/session", proto, meta)
	if err != nil {
		return nil, fmt.Errorf("engine /session: %w", err)
	}
	return conn, nil
}

// Build builds an image, calls line with each line of the classic builder's
// output (BuildKit's progress goes to o.Trace), and returns the image ID.
// The classic builder's intermediate containers are removed, also when the
// build fails.
func (c *Client) Build(ctx context.Context, o BuildOptions, line func(string)) (string, error) {
	args := make(map[string]*string, len(o.Args))
	for k, v := range o.Args {
		args[k] = &v
	}
	opts := build.ImageBuildOptions{
		Tags: o.Tags, Dockerfile: o.Dockerfile, Target: o.Target, BuildArgs: args, Labels: o.Labels,
		Platform: o.Platform, Remove: true, ForceRemove: true, Version: build.BuilderV1,
	}
	body := o.Context
	if o.Session != "" {
		opts.Version, opts.SessionID, opts.RemoteContext = build.BuilderBuildKit, o.Session, "client-session"
		body = nil
	}
	resp, err := c.api.ImageBuild(ctx, body, opts)
	if err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	defer resp.Body.Close()
	var id, partial string
	emit := func(s string) {
		s = partial + s
		for {
			i := strings.IndexByte(s, '\n')
			if i < 0 {
				break
			}
			if line != nil {
				line(strings.TrimRight(s[:i], "\r"))
			}
			s = s[i+1:]
		}
		partial = s
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var m struct {
			ID     string          `json:"id"`
			Stream string          `json:"stream"`
			Status string          `json:"status"`
			Error  string          `json:"error"`
			Aux    json.RawMessage `json:"aux"`
		}
		if json.Unmarshal(sc.Bytes(), &m) != nil {
			emit(sc.Text() + "\n")
			continue
		}
		if m.Error != "" {
			emit("\n")
			return "", fmt.Errorf("build failed: %s: %w", strings.TrimSpace(m.Error), release.ErrInvalid)
		}
		if m.ID == "moby.buildkit.trace" {
			var msg []byte // the JSON of []byte: base64
			if err := json.Unmarshal(m.Aux, &msg); err != nil {
				emit("(a BuildKit progress message berth cannot read was skipped)\n")
			} else if o.Trace != nil {
				o.Trace(msg)
			}
			continue
		}
		if len(m.Aux) > 0 {
			var aux struct {
				ID string `json:"ID"`
			}
			if json.Unmarshal(m.Aux, &aux) == nil && aux.ID != "" {
				id = aux.ID
			}
		}
		emit(m.Stream)
		if m.Status != "" {
			emit(m.Status + "\n")
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("build: reading the builder's output: %w", err)
	}
	emit("\n")
	if id == "" && len(o.Tags) > 0 {
		return c.ImageID(ctx, o.Tags[0])
	}
	if id == "" {
		return "", fmt.Errorf("build: the engine named no image")
	}
	return id, nil
}

// Import makes an image of a root filesystem tar (docker import), with
// Dockerfile-like changes such as "ENV PATH=…", and tags it ref.
func (c *Client) Import(ctx context.Context, rootfs io.Reader, ref string, changes []string) (string, error) {
	rc, err := c.api.ImageImport(ctx, image.ImportSource{Source: rootfs, SourceName: "-"}, ref, image.ImportOptions{Changes: changes})
	if err != nil {
		return "", fmt.Errorf("import %s: %w", ref, err)
	}
	defer rc.Close()
	out, err := io.ReadAll(rc)
	if err != nil {
		return "", fmt.Errorf("import %s: %w", ref, err)
	}
	if i := strings.Index(string(out), `"error"`); i >= 0 {
		return "", fmt.Errorf("import %s: %s", ref, strings.TrimSpace(string(out[i:])))
	}
	return c.ImageID(ctx, ref)
}
