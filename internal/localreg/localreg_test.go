package localreg

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"sync"
	"testing"

	"github.com/klauspost/compress/gzip"

	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/registry"
)

// recorder is a Sink that keeps what it was given.
type recorder struct {
	mu     sync.Mutex
	files  int
	layers []*content.Index
	config []byte
}

func (r *recorder) Files(fs []content.File) { r.mu.Lock(); r.files += len(fs); r.mu.Unlock() }
func (r *recorder) Layer(ix *content.Index) {
	r.mu.Lock()
	r.layers = append(r.layers, ix)
	r.mu.Unlock()
}
func (r *recorder) Image(_ *registry.Manifest, cfg []byte) {
	r.mu.Lock()
	r.config = cfg
	r.mu.Unlock()
}

func layerTar(t *testing.T, n int) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for i := 0; i < n; i++ {
		body := bytes.Repeat([]byte(fmt.Sprintf("file %d of a layer\n", i)), 5000+i)
		tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("f%d", i), Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
		tw.Write(body)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func gz(b []byte) []byte {
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	zw.Write(b)
	zw.Close()
	return out.Bytes()
}

func req(t *testing.T, method, url string, body []byte, header ...string) *http.Response {
	t.Helper()
	r, _ := http.NewRequest(method, url, bytes.NewReader(body))
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// TestEndpoint: an image pushed as the engine pushes it (a gzip layer
// streamed in one PATCH, the config, the manifest) lands in the cache and
// reaches the sink — files, the layer, the image; a restarted endpoint
// still answers that it has the layer, so the engine skips it next time.
func TestEndpoint(t *testing.T) {
	dir := t.TempDir()
	store, err := content.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "localreg.json")
	srv, err := Listen(store, state, 0)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	srv.Receive(rec)
	base := "http://" + srv.Addr() + "/v2/" + Repository
	tarball := layerTar(t, 40)
	blob := gz(tarball)
	bd, diffID := content.Sum(blob), content.Sum(tarball)
	if r := req(t, "HEAD", base+"/blobs/"+bd.String(), nil); r.StatusCode != 404 {
		t.Fatalf("HEAD before: %d", r.StatusCode)
	}
	r := req(t, "POST", base+"/blobs/uploads/", nil)
	loc := r.Header.Get("Location")
	if r = req(t, "PATCH", "http://"+srv.Addr()+loc, blob); r.StatusCode != 202 {
		t.Fatalf("PATCH: %d", r.StatusCode)
	}
	if r = req(t, "PUT", "http://"+srv.Addr()+loc+"?digest="+bd.String(), nil); r.StatusCode != 201 {
		t.Fatalf("PUT: %d", r.StatusCode)
	}
	cfg := fmt.Appendf(nil, `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[%q]}}`, diffID.String())
	cd := content.Sum(cfg)
	if r = req(t, "POST", base+"/blobs/uploads/?digest="+cd.String(), cfg); r.StatusCode != 201 {
		t.Fatalf("config: %d", r.StatusCode)
	}
	man := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":%q,"size":%d},"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":%q,"size":%d}]}`,
		cd, len(cfg), bd, len(blob))
	if r = req(t, "PUT", base+"/manifests/x", man, "Content-Type", registry.MediaDockerManifest); r.StatusCode != 201 {
		t.Fatalf("manifest: %d", r.StatusCode)
	}
	if rec.files != 40 || len(rec.layers) != 1 || rec.layers[0].DiffID != diffID || !bytes.Equal(rec.config, cfg) {
		t.Fatalf("sink got %d files, %d layers, config %q", rec.files, len(rec.layers), rec.config)
	}
	if ix, err := store.Index(diffID); err != nil || len(store.Missing(ix)) > 0 {
		t.Fatalf("the layer in the cache: %v", err)
	}
	// A wrong digest: refused.
	r = req(t, "POST", base+"/blobs/uploads/", nil)
	loc = r.Header.Get("Location")
	if r = req(t, "PUT", "http://"+srv.Addr()+loc+"?digest="+content.Sum([]byte("x")).String(), blob); r.StatusCode != 400 {
		t.Errorf("a wrong digest: %d, want 400", r.StatusCode)
	}
	srv.Close()

	srv, err = Listen(store, state, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if r := req(t, "HEAD", "http://"+srv.Addr()+"/v2/"+Repository+"/blobs/"+bd.String(), nil); r.StatusCode != 200 || r.ContentLength != int64(len(blob)) {
		t.Errorf("HEAD after a restart: %d %d, want 200 %d", r.StatusCode, r.ContentLength, len(blob))
	}
}
