package registry

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/release"
)

// memBackend keeps everything in memory: the protocol's tests need no
// storage.
type memBackend struct {
	blobs     map[content.Digest][]byte
	uploads   map[string]*bytes.Buffer
	manifests map[string]*Manifest
	n         int
}

func newMem() *memBackend {
	return &memBackend{blobs: map[content.Digest][]byte{}, uploads: map[string]*bytes.Buffer{}, manifests: map[string]*Manifest{}}
}

func (m *memBackend) StatBlob(d content.Digest) (int64, error) {
	b, ok := m.blobs[d]
	if !ok {
		return 0, Errorf(CodeBlobUnknown, release.ErrNotFound, "blob %s", d)
	}
	return int64(len(b)), nil
}

func (m *memBackend) OpenBlob(d content.Digest) (io.ReadCloser, int64, error) {
	b, ok := m.blobs[d]
	if !ok {
		return nil, 0, Errorf(CodeBlobUnknown, release.ErrNotFound, "blob %s", d)
	}
	return io.NopCloser(bytes.NewReader(b)), int64(len(b)), nil
}

func (m *memBackend) upload(id string) (*bytes.Buffer, error) {
	u, ok := m.uploads[id]
	if !ok {
		return nil, Errorf(CodeBlobUploadUnknown, release.ErrNotFound, "upload %s", id)
	}
	return u, nil
}

func (m *memBackend) StartUpload(string) (string, error) {
	m.n++
	id := fmt.Sprint("u", m.n)
	m.uploads[id] = &bytes.Buffer{}
	return id, nil
}

func (m *memBackend) UploadSize(id string) (int64, error) {
	u, err := m.upload(id)
	if err != nil {
		return 0, err
	}
	return int64(u.Len()), nil
}

func (m *memBackend) AppendUpload(id string, body io.Reader) (int64, error) {
	u, err := m.upload(id)
	if err != nil {
		return 0, err
	}
	_, err = u.ReadFrom(body)
	return int64(u.Len()), err
}

func (m *memBackend) FinishUpload(id string, d content.Digest) error {
	u, err := m.upload(id)
	if err != nil {
		return err
	}
	delete(m.uploads, id)
	if sha256.Sum256(u.Bytes()) != d {
		return Errorf(CodeDigestInvalid, release.ErrInvalid, "not %s", d)
	}
	m.blobs[d] = u.Bytes()
	return nil
}

func (m *memBackend) CancelUpload(id string) error {
	if _, err := m.upload(id); err != nil {
		return err
	}
	delete(m.uploads, id)
	return nil
}

func (m *memBackend) PutManifest(repo, ref string, man *Manifest) error {
	m.manifests[repo+"@"+man.Digest] = man
	m.manifests[repo+":"+ref] = man
	return nil
}

func (m *memBackend) Manifest(repo, ref string) (*Manifest, error) {
	sep := ":"
	if strings.HasPrefix(ref, "sha256:") {
		sep = "@"
	}
	man, ok := m.manifests[repo+sep+ref]
	if !ok {
		return nil, Errorf(CodeManifestUnknown, release.ErrNotFound, "no %s", ref)
	}
	return man, nil
}

func serve(b Backend) *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := Serve(w, r, strings.TrimPrefix(r.URL.Path, "/v2/"), b, Options{}); err != nil {
			WriteError(w, Status(err), err, err.Error())
		}
	}))
}

func do(t *testing.T, method, url string, body []byte, header ...string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(method, url, bytes.NewReader(body))
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// TestProtocol: the requests of a push, answered with the statuses and
// headers the spec asks for.
func TestProtocol(t *testing.T) {
	b := newMem()
	srv := serve(b)
	defer srv.Close()
	blob := []byte("some bytes of a blob, in three chunks")
	d := content.Sum(blob)

	if r := do(t, "GET", srv.URL+"/v2/", nil); r.StatusCode != 200 || r.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Fatalf("GET /v2/: %d", r.StatusCode)
	}
	r := do(t, "POST", srv.URL+"/v2/a/b/blobs/uploads/", nil)
	loc := r.Header.Get("Location")
	if r.StatusCode != 202 || loc == "" {
		t.Fatalf("POST: %d %q", r.StatusCode, loc)
	}
	r = do(t, "PATCH", srv.URL+loc, blob[:10], "Content-Range", "0-9")
	if r.StatusCode != 202 || r.Header.Get("Range") != "0-9" {
		t.Fatalf("PATCH: %d %q", r.StatusCode, r.Header.Get("Range"))
	}
	if r := do(t, "PATCH", srv.URL+loc, blob[:10], "Content-Range", "0-9"); r.StatusCode != 416 || r.Header.Get("Range") != "0-9" {
		t.Errorf("a chunk out of place: %d %q, want 416 0-9", r.StatusCode, r.Header.Get("Range"))
	}
	if r := do(t, "GET", srv.URL+loc, nil); r.StatusCode != 204 || r.Header.Get("Range") != "0-9" {
		t.Errorf("upload status after a refused chunk: %d %q", r.StatusCode, r.Header.Get("Range"))
	}
	do(t, "PATCH", srv.URL+loc, blob[10:20])
	if r := do(t, "PUT", srv.URL+loc+"?digest="+d.String(), blob[20:]); r.StatusCode != 201 || r.Header.Get("Docker-Content-Digest") != d.String() {
		t.Fatalf("PUT: %d", r.StatusCode)
	}
	if r := do(t, "HEAD", srv.URL+"/v2/other/blobs/"+d.String(), nil); r.StatusCode != 200 || r.ContentLength != int64(len(blob)) {
		t.Errorf("HEAD under another name: %d %d", r.StatusCode, r.ContentLength)
	}
	if r := do(t, "POST", srv.URL+"/v2/c/blobs/uploads/?mount="+d.String()+"&from=a/b", nil); r.StatusCode != 201 {
		t.Errorf("mount of a blob held: %d", r.StatusCode)
	}
	if r := do(t, "DELETE", srv.URL+"/v2/a/b/blobs/"+d.String(), nil); r.StatusCode != 405 {
		t.Errorf("DELETE of a blob: %d, want 405", r.StatusCode)
	}
	if r := do(t, "PUT", srv.URL+"/v2/a/b/manifests/1", []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`)); r.StatusCode != 201 {
		t.Errorf("PUT manifest: %d", r.StatusCode)
	}
	if r := do(t, "HEAD", srv.URL+"/v2/a/b/manifests/1", nil); r.StatusCode != 200 || r.Header.Get("Content-Type") != "application/vnd.oci.image.index.v1+json" {
		t.Errorf("HEAD manifest: %d %q", r.StatusCode, r.Header.Get("Content-Type"))
	}
	if r := do(t, "GET", srv.URL+"/v2/a/b/tags/list", nil); r.StatusCode != 404 {
		t.Errorf("tags list: %d, want 404", r.StatusCode)
	}
	if r := do(t, "POST", srv.URL+"/v2/a/b/blobs/uploads/?digest=sha512:abc", nil); r.StatusCode != 400 {
		t.Errorf("a sha512 digest: %d, want 400", r.StatusCode)
	}
}
