package server

import (
	"errors"
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
		`[]`,
	} {
		f.Add([]byte(s), "application/vnd.oci.image.manifest.v1+json")
	}
	f.Fuzz(func(t *testing.T, body []byte, contentType string) {
		m, err := parseManifest(body, contentType)
		if err != nil {
			if !errors.Is(err, release.ErrInvalid) {
				t.Fatalf("a refusal that is not ErrInvalid: %v", err)
			}
			return
		}
		switch m.MediaType {
		case mediaDockerManifest, "application/vnd.oci.image.manifest.v1+json":
			if m.Config == nil {
				t.Fatal("a manifest without a config was read")
			}
		case mediaDockerList, "application/vnd.oci.image.index.v1+json":
		default:
			t.Fatalf("media type %q was read", m.MediaType)
		}
	})
}
