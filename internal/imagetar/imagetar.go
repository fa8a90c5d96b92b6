// Package imagetar reads and writes image archives in the form `docker save`
// writes and `docker load` reads (the classic layout and the OCI layout that
// newer engines write), and reads OCI image layouts as other tools write them
// (buildx --output type=oci, skopeo, buildah), picking the platform asked for
// from a multi-platform index. It streams: each layer tar goes to a callback
// as it passes, so a gigabyte image is read once and never held in memory.
package imagetar

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/klauspost/compress/zstd"

	"github.com/berth-robotics/berth/internal/release"
)

var zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}

// Image is one image of an archive.
type Image struct {
	ID      string   `json:"id"` // sha256:… of Config
	Config  []byte   `json:"config"`
	Tags    []string `json:"tags,omitempty"`
	DiffIDs []string `json:"diff_ids"`
	OS      string   `json:"os,omitempty"`
	Arch    string   `json:"arch,omitempty"`
}

type manifestEntry struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// resolve follows links from name to the archive entry it names, at most
// a few hops (a cycle or a long chain names nothing). Links only rename
// entries of the archive: nothing is read from anywhere else.
func resolve(links map[string]string, name string) string {
	for range 8 {
		to, ok := links[name]
		if !ok {
			return name
		}
		name = to
	}
	return ""
}

// maxJSON bounds the non-layer files kept in memory (configs, manifests).
const maxJSON = 16 << 20

// LayerFunc consumes one layer tar (already decompressed) and returns its
// diffID, the SHA-256 of the uncompressed stream.
type LayerFunc func(name string, r io.Reader) (diffID string, err error)

// Read parses an image archive, handing each layer to onLayer.
func Read(r io.Reader, onLayer LayerFunc) ([]Image, error) {
	return ReadFor(r, "", onLayer)
}

// ReadFor is Read that, for an OCI layout listing several platforms, keeps
// only the images for architecture arch ("" keeps every image). Layers of
// the other platforms still pass through onLayer: the archive is read once.
func ReadFor(r io.Reader, arch string, onLayer LayerFunc) ([]Image, error) {
	tr := tar.NewReader(r)
	small := map[string][]byte{}
	layers := map[string]string{} // archive path → diffID
	// docker save writes a layer whose content another image's layer has
	// already as a link to it: dir/layer.tar → ../other/layer.tar.
	links := map[string]string{} // archive path → the archive path it names
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("image archive: %v: %w", err, release.ErrInvalid)
		}
		switch h.Typeflag {
		case tar.TypeSymlink:
			links[path.Clean(h.Name)] = path.Join(path.Dir(path.Clean(h.Name)), h.Linkname)
			continue
		case tar.TypeLink:
			links[path.Clean(h.Name)] = path.Clean(h.Linkname)
			continue
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		name := path.Clean(h.Name)
		br := bufio.NewReaderSize(tr, 64<<10)
		head, _ := br.Peek(512)
		switch {
		case len(head) >= 2 && head[0] == 0x1f && head[1] == 0x8b:
			zr, err := gzip.NewReader(br)
			if err != nil {
				return nil, fmt.Errorf("image archive: %s: %v: %w", name, err, release.ErrInvalid)
			}
			d, err := onLayer(name, zr)
			if err != nil {
				return nil, fmt.Errorf("layer %s: %w", name, err)
			}
			layers[name] = d
		case len(head) >= 4 && bytes.Equal(head[:4], zstdMagic):
			zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
			if err != nil {
				return nil, fmt.Errorf("image archive: %s: %v: %w", name, err, release.ErrInvalid)
			}
			d, err := onLayer(name, zr)
			zr.Close()
			if err != nil {
				return nil, fmt.Errorf("layer %s: %w", name, err)
			}
			layers[name] = d
		case isTar(head, h.Size):
			d, err := onLayer(name, br)
			if err != nil {
				return nil, fmt.Errorf("layer %s: %w", name, err)
			}
			layers[name] = d
		case h.Size <= maxJSON:
			b, err := io.ReadAll(br)
			if err != nil {
				return nil, fmt.Errorf("image archive: %s: %w", name, err)
			}
			small[name] = b
		}
	}
	var man []manifestEntry
	if mb, ok := small["manifest.json"]; ok {
		if err := json.Unmarshal(mb, &man); err != nil || len(man) == 0 {
			return nil, fmt.Errorf("image archive: bad manifest.json: %v: %w", err, release.ErrInvalid)
		}
	} else if _, ok := small["index.json"]; ok {
		var err error
		if man, err = ociManifests(small, arch); err != nil {
			return nil, err
		}
	} else {
		return nil, fmt.Errorf("image archive has neither manifest.json nor index.json (is it a docker save archive or an OCI layout?): %w", release.ErrInvalid)
	}
	var out []Image
	for _, m := range man {
		cfg, ok := small[path.Clean(m.Config)]
		if !ok {
			return nil, fmt.Errorf("image archive: config %s is missing: %w", m.Config, release.ErrInvalid)
		}
		img, err := FromConfig(cfg)
		if err != nil {
			return nil, err
		}
		img.Tags = m.RepoTags
		if len(m.Layers) != len(img.DiffIDs) {
			return nil, fmt.Errorf("image %s: manifest lists %d layers, config %d: %w", img.ID, len(m.Layers), len(img.DiffIDs), release.ErrInvalid)
		}
		for i, l := range m.Layers {
			got, ok := layers[resolve(links, path.Clean(l))]
			if !ok {
				if b, small := small[path.Clean(l)]; small {
					return nil, fmt.Errorf("image %s: layer %s is not a tar (%d bytes): %w", img.ID, l, len(b), release.ErrInvalid)
				}
				return nil, fmt.Errorf("image %s: layer %s is missing from the archive: %w", img.ID, l, release.ErrInvalid)
			}
			if got != img.DiffIDs[i] {
				return nil, fmt.Errorf("image %s: layer %s has digest %s, the config says %s: %w", img.ID, l, got, img.DiffIDs[i], release.ErrInvalid)
			}
		}
		out = append(out, img)
	}
	return out, nil
}

// FromConfig describes an image by its config JSON.
func FromConfig(cfg []byte) (Image, error) {
	var c struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
		RootFS       struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(cfg, &c); err != nil {
		return Image{}, fmt.Errorf("image config: %v: %w", err, release.ErrInvalid)
	}
	for _, d := range c.RootFS.DiffIDs {
		if !strings.HasPrefix(d, "sha256:") || len(d) != 71 {
			return Image{}, fmt.Errorf("image config: bad diff_id %q: %w", d, release.ErrInvalid)
		}
	}
	sum := sha256.Sum256(cfg)
	return Image{ID: "sha256:" + hex.EncodeToString(sum[:]), Config: cfg, DiffIDs: c.RootFS.DiffIDs, OS: c.OS, Arch: c.Architecture}, nil
}

// isTar reports whether a file starting with head looks like a tar stream:
// a ustar header, or the all-zero end blocks of an empty tar.
func isTar(head []byte, size int64) bool {
	if len(head) < 512 {
		return false
	}
	if string(head[257:262]) == "ustar" {
		return true
	}
	return size <= 10240 && size%512 == 0 && bytes.Count(head, []byte{0}) == 512
}

// WriteFunc writes one layer tar (exactly size bytes) for a diffID.
type WriteFunc func(diffID string, w io.Writer) error

// Write produces a docker-load archive in the classic layout for imgs. Only
// the layers in include are written; the manifest still lists every layer,
// which the engine accepts when it holds the others already.
func Write(w io.Writer, imgs []Image, include map[string]int64, layer WriteFunc) error {
	tw := tar.NewWriter(w)
	var man []manifestEntry
	written := map[string]bool{}
	for _, img := range imgs {
		cfgName := strings.TrimPrefix(img.ID, "sha256:") + ".json"
		if !written[cfgName] {
			if err := writeFile(tw, cfgName, img.Config); err != nil {
				return err
			}
			written[cfgName] = true
		}
		m := manifestEntry{Config: cfgName, RepoTags: img.Tags}
		for _, d := range img.DiffIDs {
			name := strings.TrimPrefix(d, "sha256:") + "/layer.tar"
			m.Layers = append(m.Layers, name)
			size, ok := include[d]
			if !ok || written[name] {
				continue
			}
			written[name] = true
			if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: size, Typeflag: tar.TypeReg}); err != nil {
				return err
			}
			if err := layer(d, tw); err != nil {
				return fmt.Errorf("layer %s: %w", d, err)
			}
		}
		man = append(man, m)
	}
	mb, err := json.Marshal(man)
	if err != nil {
		return err
	}
	if err := writeFile(tw, "manifest.json", mb); err != nil {
		return err
	}
	return tw.Close()
}

func writeFile(tw *tar.Writer, name string, b []byte) error {
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	_, err := tw.Write(b)
	return err
}

// ChainIDs computes the OCI chain ID of each prefix of a layer stack.
func ChainIDs(diffIDs []string) []string {
	out := make([]string, len(diffIDs))
	for i, d := range diffIDs {
		if i == 0 {
			out[i] = d
			continue
		}
		sum := sha256.Sum256([]byte(out[i-1] + " " + d))
		out[i] = "sha256:" + hex.EncodeToString(sum[:])
	}
	return out
}
