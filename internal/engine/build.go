package engine

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/image"

	"github.com/berth-robotics/berth/internal/release"
)

// BuildOptions describe one image build with the engine's classic builder.
type BuildOptions struct {
	Context    io.Reader // a tar of the build context
	Dockerfile string    // its path inside the context tar
	Tags       []string
	Target     string // multi-stage target; "" builds the last stage
	Args       map[string]string
	Labels     map[string]string
	Platform   string // os/arch[/variant]; "" is the engine's own
}

// Build builds an image with the engine's classic builder, calls line with
// each line of the builder's output, and returns the image ID. The
// intermediate containers are removed, also when the build fails.
func (c *Client) Build(ctx context.Context, o BuildOptions, line func(string)) (string, error) {
	args := make(map[string]*string, len(o.Args))
	for k, v := range o.Args {
		args[k] = &v
	}
	resp, err := c.api.ImageBuild(ctx, o.Context, build.ImageBuildOptions{
		Tags: o.Tags, Dockerfile: o.Dockerfile, Target: o.Target, BuildArgs: args, Labels: o.Labels,
		Platform: o.Platform, Remove: true, ForceRemove: true, Version: build.BuilderV1,
	})
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
			Stream string `json:"stream"`
			Status string `json:"status"`
			Error  string `json:"error"`
			Aux    struct {
				ID string `json:"ID"`
			} `json:"aux"`
		}
		if json.Unmarshal(sc.Bytes(), &m) != nil {
			emit(sc.Text() + "\n")
			continue
		}
		if m.Error != "" {
			emit("\n")
			return "", fmt.Errorf("build failed: %s: %w", strings.TrimSpace(m.Error), release.ErrInvalid)
		}
		if m.Aux.ID != "" {
			id = m.Aux.ID
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
