package imagetar

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"testing"

	"github.com/berth-robotics/berth/internal/release"
)

// layerTar is a one-file layer.
func layerTar(content string) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	tw.WriteHeader(&tar.Header{Name: "file", Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg})
	tw.Write([]byte(content))
	tw.Close()
	return b.Bytes()
}

// saveArchive is an archive as docker save writes it for two images whose
// second layers are the same bytes: the second image's is a link to the
// first's (a symlink, or with hard a hard link).
func saveArchive(t *testing.T, linkTo string, hard bool) []byte {
	t.Helper()
	base1, base2, shared := layerTar("one"), layerTar("two"), layerTar("shared")
	cfg := func(a, b []byte) []byte {
		c, _ := json.Marshal(map[string]any{"os": "linux", "architecture": "amd64",
			"rootfs": map[string]any{"type": "layers", "diff_ids": []string{sha(a), sha(b)}}})
		return c
	}
	c1, c2 := cfg(base1, shared), cfg(base2, shared)
	man, _ := json.Marshal([]manifestEntry{
		{Config: "c1.json", RepoTags: []string{"a:1"}, Layers: []string{"l1/layer.tar", "s1/layer.tar"}},
		{Config: "c2.json", RepoTags: []string{"b:1"}, Layers: []string{"l2/layer.tar", "s2/layer.tar"}},
	})
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	put := func(name string, b []byte) {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg})
		tw.Write(b)
	}
	put("l1/layer.tar", base1)
	put("s1/layer.tar", shared)
	put("l2/layer.tar", base2)
	if hard {
		tw.WriteHeader(&tar.Header{Name: "s2/layer.tar", Linkname: linkTo, Typeflag: tar.TypeLink})
	} else {
		tw.WriteHeader(&tar.Header{Name: "s2/layer.tar", Linkname: linkTo, Typeflag: tar.TypeSymlink, Mode: 0o777})
	}
	put("c1.json", c1)
	put("c2.json", c2)
	put("manifest.json", man)
	tw.Close()
	return out.Bytes()
}

// TestSharedLayerLinks: docker save writes a layer that another image's
// layer already holds as a link to it; both images read whole. A link that
// names nothing in the archive (outside it, or in a cycle) is a missing
// layer.
func TestSharedLayerLinks(t *testing.T) {
	for _, c := range []struct {
		name, to string
		hard     bool
	}{
		{"symlink as docker save writes it", "../s1/layer.tar", false},
		{"hard link", "s1/layer.tar", true},
	} {
		imgs, err := Read(bytes.NewReader(saveArchive(t, c.to, c.hard)), readLayers)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if len(imgs) != 2 || imgs[1].DiffIDs[1] != imgs[0].DiffIDs[1] {
			t.Errorf("%s: %+v", c.name, imgs)
		}
	}
	for _, to := range []string{"../../etc/passwd", "/etc/passwd", "s2/layer.tar", "../s2/layer.tar", "../nothing/layer.tar"} {
		_, err := Read(bytes.NewReader(saveArchive(t, to, false)), readLayers)
		if !errors.Is(err, release.ErrInvalid) {
			t.Errorf("a link to %s: %v, want a missing layer", to, err)
		}
	}
}
