package registry

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berth-robotics/berth/internal/release"
)

// Media types of Docker's manifests and configs (the OCI ones are ocispec's).
const (
	MediaDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	MediaDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
	MediaDockerConfig   = "application/vnd.docker.container.image.v1+json"
)

// Manifest is a manifest or an index as pushed: its bytes, digest and what
// it says, of either family (Docker schema 2, OCI).
type Manifest struct {
	Digest       string               `json:"-"`
	Body         []byte               `json:"-"`
	MediaType    string               `json:"mediaType"`
	ArtifactType string               `json:"artifactType,omitempty"`
	Config       *ocispec.Descriptor  `json:"config"`
	Layers       []ocispec.Descriptor `json:"layers"`
	Manifests    []ocispec.Descriptor `json:"manifests"`
	Subject      *ocispec.Descriptor  `json:"subject"`
}

// IsIndex reports whether m lists manifests rather than blobs.
func (m *Manifest) IsIndex() bool {
	return m.MediaType == MediaDockerList || m.MediaType == ocispec.MediaTypeImageIndex
}

// IsImage reports whether m describes an image a Docker Engine can run: an
// image config and layers that are filesystem tars. Other manifests are
// artifacts kept as they are — BuildKit's provenance attestations (an
// image config whose one layer is an in-toto statement), signatures,
// SBOMs, anything with an artifactType.
func (m *Manifest) IsImage() bool {
	if m.IsIndex() || m.Config == nil || m.ArtifactType != "" {
		return false
	}
	if m.Config.MediaType != MediaDockerConfig && m.Config.MediaType != ocispec.MediaTypeImageConfig {
		return false
	}
	for _, l := range m.Layers {
		if !IsLayer(l.MediaType) {
			return false
		}
	}
	return true
}

// IsLayer reports whether a descriptor's media type is a filesystem layer
// (a tar, as is or compressed): Docker's and OCI's, distributable or not.
func IsLayer(mediaType string) bool {
	switch mediaType {
	case "application/vnd.docker.image.rootfs.diff.tar",
		"application/vnd.docker.image.rootfs.diff.tar.gzip",
		"application/vnd.docker.image.rootfs.diff.tar.zstd",
		"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":
		return true
	}
	return strings.HasPrefix(mediaType, "application/vnd.oci.image.layer.")
}

// IsForeign reports whether a layer need not be pushed: Docker's foreign
// layers and OCI's non-distributable ones.
func IsForeign(mediaType string) bool {
	return mediaType == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" ||
		strings.HasPrefix(mediaType, "application/vnd.oci.image.layer.nondistributable.")
}

// ParseManifest reads a manifest or an index as pushed, its media type from
// its body or else the Content-Type, and checks its digests are sha256. It
// is pure, for the fuzzer.
func ParseManifest(body []byte, contentType string) (*Manifest, error) {
	var m struct {
		SchemaVersion int `json:"schemaVersion"`
		Manifest
	}
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, Errorf(CodeManifestInvalid, release.ErrInvalid, "manifest: %v", err)
	}
	if ct, _, _ := strings.Cut(contentType, ";"); m.MediaType == "" {
		m.MediaType = strings.TrimSpace(ct)
	}
	if m.SchemaVersion != 2 {
		return nil, Errorf(CodeManifestInvalid, release.ErrInvalid, "manifest schema version %d: berth takes schema 2 (Docker) and OCI manifests only", m.SchemaVersion)
	}
	var refs []ocispec.Descriptor
	switch m.MediaType {
	case MediaDockerManifest, ocispec.MediaTypeImageManifest:
		if m.Config == nil {
			return nil, Errorf(CodeManifestInvalid, release.ErrInvalid, "the manifest has no config")
		}
		refs = append([]ocispec.Descriptor{*m.Config}, m.Layers...)
	case MediaDockerList, ocispec.MediaTypeImageIndex:
		refs = m.Manifests
	default:
		return nil, Errorf(CodeManifestInvalid, release.ErrInvalid, "manifest media type %q: berth takes %s, %s and their indexes", m.MediaType, MediaDockerManifest, ocispec.MediaTypeImageManifest)
	}
	if m.Subject != nil {
		refs = append(refs, *m.Subject)
	}
	for _, d := range refs {
		if _, err := ParseDigest(d.Digest.String()); err != nil {
			return nil, err
		}
		if d.Size < 0 {
			return nil, Errorf(CodeManifestInvalid, release.ErrInvalid, "descriptor %s: negative size", d.Digest)
		}
	}
	sum := sha256.Sum256(body)
	m.Manifest.Digest = "sha256:" + hex.EncodeToString(sum[:])
	m.Manifest.Body = body
	return &m.Manifest, nil
}
