package localreg

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/engine"
	"github.com/berth-robotics/berth/internal/localapi"
	"github.com/berth-robotics/berth/internal/transfer"
)

// fakeEngine is a Docker Engine at the edge of the test: one image whose
// ID is its manifest's digest (as on the containerd image store) or its
// config's (the classic store), pushed over HTTP as an engine pushes (HEAD,
// then POST and PUT of what is missing, the manifest) and saved as an
// archive.
type fakeEngine struct {
	layers     [][]byte // uncompressed tars
	config     []byte
	manifest   []byte
	containerd bool
	tags       map[string]bool
	pushed     []string // blobs it uploaded
	reach      bool     // false: the endpoint is out of its reach (Docker Desktop's VM)
}

func newFakeEngine(t *testing.T, containerd bool, layers ...[]byte) *fakeEngine {
	var ids, descs []string
	for _, l := range layers {
		ids = append(ids, fmt.Sprintf("%q", content.Sum(l).String()))
		descs = append(descs, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}`, content.Sum(gz(l)).String(), len(gz(l))))
	}
	cfg := fmt.Appendf(nil, `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[%s]}}`, strings.Join(ids, ","))
	man := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[%s]}`,
		content.Sum(cfg).String(), len(cfg), strings.Join(descs, ","))
	return &fakeEngine{layers: layers, config: cfg, manifest: man, containerd: containerd, tags: map[string]bool{}, reach: true}
}

func (e *fakeEngine) id() string {
	if e.containerd {
		return content.Sum(e.manifest).String()
	}
	return content.Sum(e.config).String()
}

func (e *fakeEngine) Image(_ context.Context, ref string) (engine.ImageInfo, error) {
	var diffIDs []string
	for _, l := range e.layers {
		diffIDs = append(diffIDs, content.Sum(l).String())
	}
	var tags []string
	for t := range e.tags {
		tags = append(tags, t)
	}
	return engine.ImageInfo{ID: e.id(), DiffIDs: diffIDs, Tags: append(tags, "app:1")}, nil
}

func (e *fakeEngine) TagImage(_ context.Context, _, ref string) error { e.tags[ref] = true; return nil }
func (e *fakeEngine) Untag(_ context.Context, ref string) error       { delete(e.tags, ref); return nil }

func (e *fakeEngine) Push(_ context.Context, ref string, _ func(string, string)) error {
	if !e.reach {
		return fmt.Errorf("Get \"https://%s/v2/\": dial tcp: connection refused", ref[:strings.Index(ref, "/")])
	}
	host, rest, _ := strings.Cut(ref, "/")
	repo, tag, _ := strings.Cut(rest, ":")
	base := "http://" + host + "/v2/" + repo
	put := func(blob []byte) error {
		d := content.Sum(blob).String()
		if r, err := http.Head(base + "/blobs/" + d); err == nil && r.StatusCode == 200 {
			return nil
		}
		e.pushed = append(e.pushed, d)
		r, err := http.Post(base+"/blobs/uploads/", "", nil)
		if err != nil {
			return err
		}
		req, _ := http.NewRequest("PUT", "http://"+host+r.Header.Get("Location")+"?digest="+d, bytes.NewReader(blob))
		if r, err = http.DefaultClient.Do(req); err != nil || r.StatusCode != 201 {
			return fmt.Errorf("blob %s: %v %v", d, r.StatusCode, err)
		}
		return nil
	}
	for _, l := range e.layers {
		if err := put(gz(l)); err != nil {
			return err
		}
	}
	if err := put(e.config); err != nil {
		return err
	}
	req, _ := http.NewRequest("PUT", base+"/manifests/"+tag, bytes.NewReader(e.manifest))
	req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	r, err := http.DefaultClient.Do(req)
	if err != nil || r.StatusCode != 201 {
		b, _ := io.ReadAll(r.Body)
		return fmt.Errorf("manifest: %v %v %s", r.StatusCode, err, b)
	}
	return nil
}

// Save writes a docker save archive (the classic layout).
func (e *fakeEngine) Save(context.Context, []string) (io.ReadCloser, error) {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	file := func(name string, data []byte) {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg})
		tw.Write(data)
	}
	var paths []string
	for i, l := range e.layers {
		p := fmt.Sprintf("l%d/layer.tar", i)
		file(p, l)
		paths = append(paths, p)
	}
	cfgName := content.Sum(e.config).Hex() + ".json"
	file(cfgName, e.config)
	m, _ := json.Marshal([]map[string]any{{"Config": cfgName, "RepoTags": []string{"app:1"}, "Layers": paths}})
	file("manifest.json", m)
	tw.Close()
	return io.NopCloser(&b), nil
}

// nullDevice is a device whose store is its content store and whose engine
// holds what was loaded (by config digest, as a device's engine names it).
type nullDevice struct {
	store  *content.Store
	images []string
}

func (d *nullDevice) ContentInfo(context.Context) (*localapi.ContentInfo, error) {
	info := &localapi.ContentInfo{Arch: "amd64", Images: d.images}
	ls, _ := d.store.Layers()
	for _, l := range ls {
		info.Layers = append(info.Layers, l.String())
	}
	return info, nil
}
func (d *nullDevice) Missing(_ context.Context, q []byte) ([]byte, error) {
	return transfer.Receiver{Store: d.store}.Missing(q)
}
func (d *nullDevice) PutPieces(_ context.Context, b []byte) (*localapi.PutPiecesResponse, error) {
	r, err := transfer.Receiver{Store: d.store}.PutBatch(b)
	return &r, err
}
func (d *nullDevice) PutIndex(_ context.Context, diffID string, body []byte, base string) error {
	return transfer.Receiver{Store: d.store}.PutIndex(diffID, body, base)
}
func (d *nullDevice) Load(_ context.Context, req localapi.LoadRequest) (*localapi.LoadResponse, error) {
	for _, im := range req.Images {
		d.images = append(d.images, content.Sum(im.Config).String())
	}
	return &localapi.LoadResponse{}, nil
}

// TestPushEngineIDs: the engine's image ID is the config's digest on the
// classic image store and the manifest's on the containerd one. Either way
// the push reports the config digest (what the device and the fleet server
// name the image by) beside the engine's ID, the cache remembers which is
// which, a second push of the same image needs no reading, and the
// docker save fallback (an engine that cannot reach the endpoint) gives
// the same.
func TestPushEngineIDs(t *testing.T) {
	for _, containerd := range []bool{false, true} {
		for _, reach := range []bool{true, false} {
			t.Run(fmt.Sprintf("containerd=%v/reach=%v", containerd, reach), func(t *testing.T) {
				dir := t.TempDir()
				cache, err := content.Open(dir)
				if err != nil {
					t.Fatal(err)
				}
				devStore, _ := content.Open(t.TempDir())
				eng := newFakeEngine(t, containerd, layerTar(t, 30), layerTar(t, 3))
				eng.reach = reach
				dev := &nullDevice{store: devStore}
				p := &Pusher{Engine: eng, Sender: &transfer.Sender{Store: cache, Device: dev}, CacheDir: dir}
				info, _ := eng.Image(context.Background(), "app:1")
				sum, err := p.Push(context.Background(), []Image{{Ref: "app:1", Info: info, Tags: []string{"app:1"}}})
				if err != nil {
					t.Fatal(err)
				}
				cfgID := content.Sum(eng.config).String()
				wantSource := map[bool]string{true: "engine push", false: "engine push, then docker save"}[reach]
				if sum.Source != wantSource || len(sum.PerImage) != 1 || sum.PerImage[0].ID != cfgID || sum.PerImage[0].EngineID != info.ID {
					t.Fatalf("summary: source %q, per image %+v; want %q, config %s, engine %s", sum.Source, sum.PerImage, wantSource, cfgID, info.ID)
				}
				if len(dev.images) != 1 || dev.images[0] != cfgID {
					t.Fatalf("the device loaded %v, want %s", dev.images, cfgID)
				}
				if got, ok := ConfigID(cache, dir, info.ID); !ok || got != cfgID {
					t.Fatalf("ConfigID(%s) = %q %v, want %s", info.ID, got, ok, cfgID)
				}
				if len(eng.tags) != 0 {
					t.Errorf("tags left on the image: %v", eng.tags)
				}
				// Again, to another device: nothing to read.
				dev2 := &nullDevice{store: mustOpen(t)}
				p.Sender.Device = dev2
				eng.pushed = nil
				sum, err = p.Push(context.Background(), []Image{{Ref: "app:1", Info: info}})
				if err != nil {
					t.Fatal(err)
				}
				if sum.Source != "cache" || len(eng.pushed) != 0 || len(dev2.images) != 1 || dev2.images[0] != cfgID {
					t.Errorf("second push: source %q, engine pushed %v, device loaded %v", sum.Source, eng.pushed, dev2.images)
				}
			})
		}
	}
}

func mustOpen(t *testing.T) *content.Store {
	s, err := content.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}
