package registry

import (
	"errors"
	"fmt"
	"testing"

	"github.com/berth-robotics/berth/internal/release"
)

// FuzzManifest feeds manifests as a pusher could send them: never a
// panic; what is refused is ErrInvalid; what is read is of a media type
// berth takes, with well-formed digests (a manifest with a config).
func FuzzManifest(f *testing.F) {
	for _, s := range []string{
		`{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":2},"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":3}]}`,
		`{"schemaVersion":2,"config":{"digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111"}}`,
		`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"digest":"sha256:3333333333333333333333333333333333333333333333333333333333333333","platform":{"os":"linux","architecture":"arm64"}}]}`,
		`{"schemaVersion":1,"name":"a","tag":"1"}`,
		`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"md5:abc"}}`,
		`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":2},"layers":[{"mediaType":"application/vnd.in-toto+json","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":3}],"subject":{"digest":"sha256:3333333333333333333333333333333333333333333333333333333333333333","size":9}}`,
		`[]`,
	} {
		f.Add([]byte(s), "application/vnd.oci.image.manifest.v1+json")
	}
	f.Fuzz(func(t *testing.T, body []byte, contentType string) {
		m, err := ParseManifest(body, contentType)
		if err != nil {
			if !errors.Is(err, release.ErrInvalid) {
				t.Fatalf("a refusal that is not ErrInvalid: %v", err)
			}
			return
		}
		switch m.MediaType {
		case MediaDockerManifest, "application/vnd.oci.image.manifest.v1+json":
			if m.Config == nil {
				t.Fatal("a manifest without a config was read")
			}
		case MediaDockerList, "application/vnd.oci.image.index.v1+json":
			if m.IsImage() {
				t.Fatal("an index is an image")
			}
		default:
			t.Fatalf("media type %q was read", m.MediaType)
		}
		if len(m.Digest) != 71 || string(m.Body) != string(body) {
			t.Fatalf("digest %q, body kept %d of %d bytes", m.Digest, len(m.Body), len(body))
		}
	})
}

// TestIsImage: what a device can run, and what is an artifact kept as it is.
func TestIsImage(t *testing.T) {
	const cfg = `"config":{"mediaType":"%s","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":2}`
	for _, tc := range []struct {
		name, body string
		image      bool
	}{
		{"docker", `{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",` + sprintf(cfg, MediaDockerConfig) + `,"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":3}]}`, true},
		{"oci-zstd", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` + sprintf(cfg, "application/vnd.oci.image.config.v1+json") + `,"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":3}]}`, true},
		{"no-layers", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` + sprintf(cfg, "application/vnd.oci.image.config.v1+json") + `,"layers":[]}`, true},
		{"buildkit-attestation", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` + sprintf(cfg, "application/vnd.oci.image.config.v1+json") + `,"layers":[{"mediaType":"application/vnd.in-toto+json","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":3,"annotations":{"in-toto.io/predicate-type":"https://slsa.dev/provenance/v0.2"}}]}`, false},
		{"artifact", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.example+type",` + sprintf(cfg, "application/vnd.oci.empty.v1+json") + `,"layers":[]}`, false},
		{"helm", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` + sprintf(cfg, "application/vnd.cncf.helm.config.v1+json") + `,"layers":[]}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ParseManifest([]byte(tc.body), "")
			if err != nil {
				t.Fatal(err)
			}
			if m.IsImage() != tc.image {
				t.Errorf("IsImage = %v, want %v", m.IsImage(), tc.image)
			}
		})
	}
}

var sprintf = fmt.Sprintf
