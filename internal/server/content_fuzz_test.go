package server

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/berth-robotics/berth/internal/release"
)

// FuzzImageRegistration feeds image registrations as an uploader could
// send them: never a panic; what is refused is ErrInvalid; what is read
// names each image by its config's SHA-256 and well-formed layers, and an
// empty content store registers none that has a layer.
func FuzzImageRegistration(f *testing.F) {
	for _, s := range []string{
		`{"images": [{"config": "eyJvcyI6ImxpbnV4Iiwicm9vdGZzIjp7InR5cGUiOiJsYXllcnMiLCJkaWZmX2lkcyI6W119fQ==", "tags": ["a:1"]}]}`,
		`{"images": [{"config": "e30="}]}`,
		`{"images": []}`,
		`{"images": [{"config": "bm90IGpzb24="}]}`,
		`{"images": [{"config": "e30="}], "more": true}`,
		`{"images": [{"config": "e30="}]} {}`,
	} {
		f.Add([]byte(s))
	}
	c, err := OpenContent(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { c.Close() })
	f.Fuzz(func(t *testing.T, body []byte) {
		imgs, err := parseImages(body)
		if err != nil {
			if !errors.Is(err, release.ErrInvalid) {
				t.Fatalf("a refusal that is not ErrInvalid: %v", err)
			}
			return
		}
		for _, img := range imgs {
			sum := sha256.Sum256(img.Config)
			if img.ID != "sha256:"+hex.EncodeToString(sum[:]) {
				t.Fatalf("image %s is not its config's digest", img.ID)
			}
			for _, d := range img.DiffIDs {
				if len(d) != 71 {
					t.Fatalf("a layer %q", d)
				}
			}
			err := c.check(img)
			if len(img.DiffIDs) > 0 && !errors.Is(err, release.ErrConflict) && !errors.Is(err, release.ErrInvalid) {
				t.Fatalf("an image whose layers are not here: %v", err)
			}
		}
	})
}
