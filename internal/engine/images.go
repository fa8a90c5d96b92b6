package engine

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/docker/docker/api/types/image"

	"github.com/berth-robotics/berth/internal/imagetar"
	"github.com/berth-robotics/berth/internal/release"
)

// ImageInfo is what the transfer needs to know of an image in the engine.
type ImageInfo struct {
	ID      string   // sha256:… of the config
	DiffIDs []string // uncompressed layer digests, bottom first
	OS      string
	Arch    string
	Size    int64
	Tags    []string
	Labels  map[string]string
}

// Image describes one image by reference or ID.
func (c *Client) Image(ctx context.Context, ref string) (ImageInfo, error) {
	i, err := c.api.ImageInspect(ctx, ref)
	if err != nil {
		return ImageInfo{}, wrapNotFound("image "+ref, err)
	}
	return ImageInfo{ID: i.ID, DiffIDs: i.RootFS.Layers, OS: i.Os, Arch: i.Architecture, Size: i.Size, Tags: i.RepoTags, Labels: labelsOf(i)}, nil
}

// Save streams `docker save` of the images (uncompressed tar).
func (c *Client) Save(ctx context.Context, refs []string) (io.ReadCloser, error) {
	rc, err := c.api.ImageSave(ctx, refs)
	if err != nil {
		return nil, wrapNotFound("save "+strings.Join(refs, " "), err)
	}
	return rc, nil
}

// Load feeds a docker-load tar to the engine and returns what it reported.
func (c *Client) Load(ctx context.Context, r io.Reader) (string, error) {
	resp, err := c.api.ImageLoad(ctx, r)
	if err != nil {
		return "", fmt.Errorf("load images: %w", err)
	}
	defer resp.Body.Close()
	var out strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var m struct {
			Stream      string `json:"stream"`
			Error       string `json:"error"`
			ErrorDetail struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if json.Unmarshal(sc.Bytes(), &m) != nil {
			out.WriteString(sc.Text() + "\n")
			continue
		}
		if m.Error != "" {
			return out.String(), fmt.Errorf("engine refused the load: %s: %w", m.Error, release.ErrInvalid)
		}
		out.WriteString(m.Stream)
	}
	return out.String(), sc.Err()
}

// Holdings is what the engine holds, for planning transfers and keeping the
// content store to what is useful.
type Holdings struct {
	Chains  map[string]bool // chain IDs of every layer stack: a layer can be left out of a load exactly when its chain is here
	DiffIDs map[string]bool // every layer
	Images  []string        // image IDs
}

// Holdings lists the engine's images and layers.
func (c *Client) Holdings(ctx context.Context) (*Holdings, error) {
	list, err := c.api.ImageList(ctx, image.ListOptions{All: true})
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	h := &Holdings{Chains: map[string]bool{}, DiffIDs: map[string]bool{}}
	for _, s := range list {
		i, err := c.api.ImageInspect(ctx, s.ID)
		if err != nil {
			continue // removed meanwhile
		}
		h.Images = append(h.Images, i.ID)
		for _, d := range i.RootFS.Layers {
			h.DiffIDs[d] = true
		}
		for _, ch := range imagetar.ChainIDs(i.RootFS.Layers) {
			h.Chains[ch] = true
		}
	}
	return h, nil
}

func labelsOf(i image.InspectResponse) map[string]string {
	if i.Config == nil {
		return nil
	}
	return i.Config.Labels
}
