package engine

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/errdefs"

	"github.com/berth-robotics/berth/internal/imagetar"
	"github.com/berth-robotics/berth/internal/release"
)

// ImageInfo is what the transfer needs to know of an image in the engine.
type ImageInfo struct {
	// ID is the engine's image ID: the config's digest on the classic image
	// store, the manifest's (or index's) digest on the containerd one.
	ID      string
	DiffIDs []string // uncompressed layer digests, bottom first
	OS      string
	Arch    string
	Size    int64
	Tags    []string
	Digests []string // name@sha256:… of the manifests the image was pushed or pulled as
	Labels  map[string]string
}

// Image describes one image by reference or ID.
func (c *Client) Image(ctx context.Context, ref string) (ImageInfo, error) {
	i, err := c.api.ImageInspect(ctx, ref)
	if err != nil {
		return ImageInfo{}, wrapNotFound("image "+ref, err)
	}
	return ImageInfo{ID: i.ID, DiffIDs: i.RootFS.Layers, OS: i.Os, Arch: i.Architecture, Size: i.Size, Tags: i.RepoTags, Digests: i.RepoDigests, Labels: labelsOf(i)}, nil
}

// Push asks the engine to push ref (a name:tag it holds) to the registry the
// name points to (one on 127.0.0.1 is taken over plain HTTP); progress, if
// not nil, gets each line the engine reports ("Pushed", "Layer already
// exists"). The engine sends only the layers the registry lacks.
func (c *Client) Push(ctx context.Context, ref string, progress func(id, status string)) error {
	rc, err := c.api.ImagePush(ctx, ref, image.PushOptions{RegistryAuth: "e30="}) // {}: no credentials
	if err != nil {
		return wrapNotFound("push "+ref, err)
	}
	defer rc.Close()
	dec := json.NewDecoder(bufio.NewReader(rc))
	for {
		var m struct {
			ID          string `json:"id"`
			Status      string `json:"status"`
			Error       string `json:"error"`
			ErrorDetail struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&m); err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("push %s: the engine's progress: %w", ref, err)
		}
		if m.Error != "" {
			return fmt.Errorf("the engine's push of %s: %s", ref, m.Error)
		}
		if progress != nil && m.Status != "" {
			progress(m.ID, m.Status)
		}
	}
}

// Untag removes a name (name:tag or name@digest) from the image it names;
// the image stays while another name or a container holds it.
func (c *Client) Untag(ctx context.Context, ref string) error {
	_, err := c.api.ImageRemove(ctx, ref, image.RemoveOptions{Force: false, PruneChildren: false})
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("untag %s: %w", ref, err)
	}
	return nil
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

// LabelPartial marks an image the agent loaded to hold a layer stack while
// the rest of an image's layers arrive (its value: the Unix time it was
// made). It stands for no release; the agent removes it once an image that
// uses the same layers is in, or after a few hours.
const LabelPartial = "berth.partial"

// Holdings is what the engine holds, for planning transfers and keeping the
// content store to what is useful.
type Holdings struct {
	Chains  map[string]bool // chain IDs of every layer stack: a layer can be left out of a load exactly when its chain is here
	DiffIDs map[string]bool // every layer
	Images  []string        // image IDs
	// Partial are the images labelled LabelPartial; Whole are the chain IDs
	// of the other images' layer stacks.
	Partial []PartialImage
	Whole   map[string]bool
}

// PartialImage is an image that holds a layer stack for a transfer under
// way (LabelPartial).
type PartialImage struct {
	ID    string
	Chain string // the chain ID of its whole stack
	Made  time.Time
}

// Holdings lists the engine's images and layers.
func (c *Client) Holdings(ctx context.Context) (*Holdings, error) {
	list, err := c.api.ImageList(ctx, image.ListOptions{All: true})
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	h := &Holdings{Chains: map[string]bool{}, DiffIDs: map[string]bool{}, Whole: map[string]bool{}}
	for _, s := range list {
		i, err := c.api.ImageInspect(ctx, s.ID)
		if err != nil {
			continue // removed meanwhile
		}
		h.Images = append(h.Images, i.ID)
		for _, d := range i.RootFS.Layers {
			h.DiffIDs[d] = true
		}
		chains := imagetar.ChainIDs(i.RootFS.Layers)
		for _, ch := range chains {
			h.Chains[ch] = true
		}
		if made, ok := labelsOf(i)[LabelPartial]; ok && len(chains) > 0 {
			sec, _ := strconv.ParseInt(made, 10, 64)
			h.Partial = append(h.Partial, PartialImage{ID: i.ID, Chain: chains[len(chains)-1], Made: time.Unix(sec, 0)})
			continue
		}
		for _, ch := range chains {
			h.Whole[ch] = true
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
