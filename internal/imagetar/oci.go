package imagetar

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berth-robotics/berth/internal/release"
)

// Docker's names for the OCI media types, which older tools still write.
const (
	dockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	dockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
)

// maxIndexDepth bounds nested indexes (an index of indexes of manifests is
// as deep as real layouts go).
const maxIndexDepth = 4

// ociManifests turns an OCI layout's index.json into manifest entries (blob
// paths) for the images of architecture arch, or of every platform when arch
// is "". Attestation manifests (platform unknown/unknown) are skipped.
func ociManifests(small map[string][]byte, arch string) ([]manifestEntry, error) {
	type found struct {
		desc ocispec.Descriptor
		name string
	}
	var all []found
	var walk func(data []byte, depth int, name string) error
	walk = func(data []byte, depth int, name string) error {
		if depth > maxIndexDepth {
			return fmt.Errorf("OCI layout: indexes nested deeper than %d: %w", maxIndexDepth, release.ErrInvalid)
		}
		var ix ocispec.Index
		if err := json.Unmarshal(data, &ix); err != nil {
			return fmt.Errorf("OCI layout: bad index: %v: %w", err, release.ErrInvalid)
		}
		for _, d := range ix.Manifests {
			n := name
			if v := d.Annotations["io.containerd.image.name"]; v != "" {
				n = v
			} else if v := d.Annotations[ocispec.AnnotationRefName]; v != "" && n == "" {
				n = v
			}
			switch d.MediaType {
			case ocispec.MediaTypeImageIndex, dockerManifestList:
				b, err := blob(small, d)
				if err != nil {
					return err
				}
				if err := walk(b, depth+1, n); err != nil {
					return err
				}
			case ocispec.MediaTypeImageManifest, dockerManifest:
				if d.Platform != nil && d.Platform.OS == "unknown" {
					continue // an attestation, not an image
				}
				all = append(all, found{d, n})
			}
		}
		return nil
	}
	if err := walk(small["index.json"], 0, ""); err != nil {
		return nil, err
	}
	var out []manifestEntry
	var platforms []string
	for _, f := range all {
		b, err := blob(small, f.desc)
		if err != nil {
			return nil, err
		}
		var m ocispec.Manifest
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("OCI layout: manifest %s: %v: %w", f.desc.Digest, err, release.ErrInvalid)
		}
		cfgPath, err := blobPath(m.Config)
		if err != nil {
			return nil, err
		}
		// The descriptor's platform may be absent (a single-image layout):
		// the config says then.
		a := ""
		if f.desc.Platform != nil {
			a = f.desc.Platform.Architecture
		} else if cfg, ok := small[cfgPath]; ok {
			if img, err := FromConfig(cfg); err == nil {
				a = img.Arch
			}
		}
		if a != "" && !slices.Contains(platforms, a) {
			platforms = append(platforms, a)
		}
		if arch != "" && a != "" && a != arch {
			continue
		}
		e := manifestEntry{Config: cfgPath}
		if tag := refTag(f.name); tag != "" {
			e.RepoTags = []string{tag}
		}
		for _, l := range m.Layers {
			p, err := blobPath(l)
			if err != nil {
				return nil, err
			}
			e.Layers = append(e.Layers, p)
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		sort.Strings(platforms)
		if len(platforms) > 0 {
			return nil, fmt.Errorf("OCI layout has images for %s, none for %s (the device's architecture); build for it, e.g. docker buildx build --platform linux/%s: %w", strings.Join(platforms, ", "), arch, arch, release.ErrInvalid)
		}
		return nil, fmt.Errorf("OCI layout lists no image manifests: %w", release.ErrInvalid)
	}
	return out, nil
}

func blobPath(d ocispec.Descriptor) (string, error) {
	if err := d.Digest.Validate(); err != nil {
		return "", fmt.Errorf("OCI layout: digest %q: %v: %w", d.Digest, err, release.ErrInvalid)
	}
	return "blobs/" + d.Digest.Algorithm().String() + "/" + d.Digest.Encoded(), nil
}

func blob(small map[string][]byte, d ocispec.Descriptor) ([]byte, error) {
	p, err := blobPath(d)
	if err != nil {
		return nil, err
	}
	b, ok := small[p]
	if !ok {
		return nil, fmt.Errorf("OCI layout: blob %s is missing: %w", d.Digest, release.ErrInvalid)
	}
	return b, nil
}

// refTag makes a tag a Docker Engine takes from an OCI reference name: a
// full name with a tag stays; a bare tag ("1.0", as some tools write) cannot
// name an image and is dropped.
func refTag(name string) string {
	if name == "" || !strings.ContainsAny(name, ":/") || strings.ContainsAny(name, " \t\n") {
		return ""
	}
	return name
}
