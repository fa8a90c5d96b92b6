package imagetar

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/berth-robotics/berth/internal/imagetar/ocitest"
	"github.com/berth-robotics/berth/internal/release"
)

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// ociLayout is ocitest.Layout as the tar imagetar reads.
func ociLayout(t *testing.T, archs ...string) []byte {
	t.Helper()
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	files := ocitest.Layout("robot/planner:1.4", archs...)
	for _, name := range slices.Sorted(maps.Keys(files)) {
		b := files[name]
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg})
		tw.Write(b)
	}
	tw.Close()
	return out.Bytes()
}

func readLayers(name string, r io.Reader) (string, error) {
	b, err := io.ReadAll(r)
	return sha(b), err
}

func TestOCILayoutPicksThePlatform(t *testing.T) {
	layout := ociLayout(t, "amd64", "arm64")
	imgs, err := ReadFor(bytes.NewReader(layout), "arm64", readLayers)
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 1 || imgs[0].Arch != "arm64" || len(imgs[0].Tags) != 1 || imgs[0].Tags[0] != "robot/planner:1.4" {
		t.Fatalf("images for arm64: %+v", imgs)
	}
	all, err := Read(bytes.NewReader(layout), readLayers)
	if err != nil || len(all) != 2 {
		t.Fatalf("every platform: %d images, %v (the attestation is no image)", len(all), err)
	}
	_, err = ReadFor(bytes.NewReader(layout), "riscv64", readLayers)
	if !errors.Is(err, release.ErrInvalid) || !strings.Contains(err.Error(), "amd64, arm64") || !strings.Contains(err.Error(), "riscv64") {
		t.Fatalf("no image for the device: %v", err)
	}
}

func FuzzOCIManifests(f *testing.F) {
	layout := ociLayout(&testing.T{}, "amd64")
	f.Add([]byte(`{"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:00"}]}`))
	tr := tar.NewReader(bytes.NewReader(layout))
	small := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		b, _ := io.ReadAll(tr)
		small[h.Name] = b
	}
	f.Add(small["index.json"])
	f.Fuzz(func(t *testing.T, index []byte) {
		s := map[string][]byte{}
		for k, v := range small {
			s[k] = v
		}
		s["index.json"] = index
		ms, err := ociManifests(s, "amd64")
		if err == nil && len(ms) == 0 {
			t.Fatal("no manifests and no error")
		}
	})
}
