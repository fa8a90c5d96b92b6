// Package localreg receives images from the local Docker Engine the way a
// registry does. During a push berth serves the distribution API
// (internal/registry) on loopback and asks the engine to push there: the
// engine then sends only the layers the endpoint lacks — it remembers which
// compressed digests it pushed to which host:port, and asks before sending
// each — one stream per layer, several at once. Each layer is split into
// the sender's content cache as it arrives, and its files are handed on
// (Sink) while the rest is still coming, so that their new pieces travel to
// the device at once.
//
// The endpoint listens on a stable port (the engine's memory is per
// host:port), 127.0.0.1 (engines take loopback registries over plain HTTP
// without configuration). It remembers beside the cache which compressed
// digest gave which layer, so that the engine's question "do you have
// this?" is answered yes for every layer the cache holds whole.
package localreg

import (
	"bufio"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/berth-robotics/berth/internal/atomicfile"
	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/imagetar"
	"github.com/berth-robotics/berth/internal/registry"
	"github.com/berth-robotics/berth/internal/release"
)

// DefaultPort is the endpoint's first port: stable, so that the engine's
// memory of what it pushed there lasts from one push to the next; not 5000,
// which macOS's AirPlay receiver takes.
const DefaultPort = 5747

// Ports is how many ports from the first one a Server tries (another berth
// pushing at the same time holds the first).
const Ports = 4

// Repository is the repository name the engine pushes to.
const Repository = "berth/push"

// Sink takes what the endpoint receives: the files of a layer as it is
// read, each layer read whole, each image manifest with its config. Calls
// come from the engine's uploads, several at once.
type Sink interface {
	Files(files []content.File)
	Layer(ix *content.Index)
	Image(m *registry.Manifest, config []byte)
}

// Server is the endpoint.
type Server struct {
	store *content.Store
	state string // the digest → layer memory, a JSON file beside the cache
	ln    net.Listener
	srv   *http.Server

	mu        sync.Mutex
	blobs     map[string]layerBlob // compressed digest → the layer it gave
	whole     map[content.Digest]bool
	uploads   map[string]*upload
	manifests map[string]*registry.Manifest // "repo@digest", "repo:tag"
	sink      Sink
	n         int
}

type layerBlob struct {
	DiffID string `json:"diff_id"`
	Size   int64  `json:"size"`
}

// Listen starts an endpoint for the cache store on 127.0.0.1, on the first
// free port of port … port+Ports-1; state is the file where it remembers
// which compressed digests gave which layers.
func Listen(store *content.Store, state string, port int) (*Server, error) {
	s := &Server{store: store, state: state, blobs: map[string]layerBlob{}, whole: map[content.Digest]bool{},
		uploads: map[string]*upload{}, manifests: map[string]*registry.Manifest{}}
	if b, err := os.ReadFile(state); err == nil {
		var st struct {
			Blobs map[string]layerBlob `json:"blobs"`
		}
		if json.Unmarshal(b, &st) == nil && st.Blobs != nil {
			s.blobs = st.Blobs
		}
	}
	var errs []error
	for p := port; p < port+Ports; p++ {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err == nil {
			s.ln = ln
			break
		}
		errs = append(errs, err)
	}
	if s.ln == nil {
		return nil, fmt.Errorf("no port for berth's loopback endpoint among %d–%d (another berth push holds them?): %w", port, port+Ports-1, errors.Join(errs...))
	}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: time.Minute}
	go s.srv.Serve(s.ln)
	return s, nil
}

// Addr is the endpoint's host:port, as image names start.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the endpoint and drops uploads under way.
func (s *Server) Close() error {
	err := s.srv.Close()
	s.mu.Lock()
	ups := s.uploads
	s.uploads = map[string]*upload{}
	s.mu.Unlock()
	for _, u := range ups {
		u.cancel(errors.New("the endpoint closed"))
	}
	return err
}

// Receive sends what arrives from now on to sink (nil: nowhere).
func (s *Server) Receive(sink Sink) {
	s.mu.Lock()
	s.sink = sink
	s.mu.Unlock()
}

func (s *Server) currentSink() Sink {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sink
}

// ServeHTTP answers the distribution API under /v2/.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path, ok := strings.CutPrefix(r.URL.Path, "/v2/")
	if !ok && r.URL.Path != "/v2" {
		http.NotFound(w, r)
		return
	}
	if err := registry.Serve(w, r, path, s, registry.Options{}); err != nil {
		registry.WriteError(w, registry.Status(err), err, err.Error())
	}
}

// complete reports whether the cache holds a layer whole (memoized: a
// layer's pieces are not collected from the cache while berth runs).
func (s *Server) complete(diffID string) bool {
	d, err := content.ParseDigest(diffID)
	if err != nil {
		return false
	}
	s.mu.Lock()
	ok := s.whole[d]
	s.mu.Unlock()
	if ok {
		return true
	}
	ix, err := s.store.Index(d)
	if err != nil || len(s.store.Missing(ix)) > 0 {
		return false
	}
	s.mu.Lock()
	s.whole[d] = true
	s.mu.Unlock()
	return true
}

// StatBlob: a layer whose cache copy is whole, a config kept as a piece, a
// blob kept whole.
func (s *Server) StatBlob(d content.Digest) (int64, error) {
	s.mu.Lock()
	l, ok := s.blobs[d.String()]
	s.mu.Unlock()
	if ok && s.complete(l.DiffID) {
		return l.Size, nil
	}
	if size, err := s.store.BlobSize(d); err == nil {
		return size, nil
	}
	if s.store.Has(d) {
		if b, err := s.store.Get(d); err == nil {
			return int64(len(b)), nil
		}
	}
	return 0, registry.Errorf(registry.CodeBlobUnknown, release.ErrNotFound, "blob %s is not in berth's cache", d)
}

// OpenBlob serves configs and whole blobs; layers are held as pieces.
func (s *Server) OpenBlob(d content.Digest) (io.ReadCloser, int64, error) {
	if rc, err := s.store.OpenBlob(d); err == nil {
		size, err := s.store.BlobSize(d)
		return rc, size, err
	}
	if b, err := s.store.Get(d); err == nil {
		return io.NopCloser(strings.NewReader(string(b))), int64(len(b)), nil
	}
	if ix, err := s.store.Index(d); err == nil {
		// Pushed uncompressed: its bytes are the layer, rebuilt.
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(content.Rebuild(ix, s.store.Get, pw)) }()
		return pr, ix.Size, nil
	}
	if _, err := s.StatBlob(d); err == nil {
		return nil, 0, registry.Errorf(registry.CodeUnsupported, release.ErrNotFound, "layer %s is held as pieces in berth's cache, not as it was pushed", d)
	}
	return nil, 0, registry.Errorf(registry.CodeBlobUnknown, release.ErrNotFound, "blob %s is not in berth's cache", d)
}

// StartUpload starts reading a blob as it comes.
func (s *Server) StartUpload(string) (string, error) {
	s.mu.Lock()
	s.n++
	id := fmt.Sprintf("%d-%d", time.Now().UnixNano(), s.n)
	s.mu.Unlock()
	u := s.newUpload(id)
	s.mu.Lock()
	s.uploads[id] = u
	s.mu.Unlock()
	return id, nil
}

func (s *Server) upload(id string) (*upload, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.uploads[id]
	if !ok {
		return nil, registry.Errorf(registry.CodeBlobUploadUnknown, release.ErrNotFound, "no upload %q", id)
	}
	return u, nil
}

func (s *Server) UploadSize(id string) (int64, error) {
	u, err := s.upload(id)
	if err != nil {
		return 0, err
	}
	return u.size(), nil
}

func (s *Server) AppendUpload(id string, body io.Reader) (int64, error) {
	u, err := s.upload(id)
	if err != nil {
		return 0, err
	}
	if err := u.write(body); err != nil {
		s.drop(id)
		return 0, err
	}
	return u.size(), nil
}

func (s *Server) drop(id string) {
	s.mu.Lock()
	u := s.uploads[id]
	delete(s.uploads, id)
	s.mu.Unlock()
	if u != nil {
		u.cancel(errors.New("upload dropped"))
	}
}

func (s *Server) CancelUpload(id string) error {
	if _, err := s.upload(id); err != nil {
		return err
	}
	s.drop(id)
	return nil
}

// FinishUpload waits for the blob's reading to end and checks it is d. A
// layer's pieces and index are in the cache by then (what a wrong digest
// leaves there is named by its own content, so it harms nothing); the
// endpoint remembers d as that layer.
func (s *Server) FinishUpload(id string, d content.Digest) error {
	u, err := s.upload(id)
	if err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.uploads, id)
	s.mu.Unlock()
	res := u.finish()
	if res.err != nil {
		return res.err
	}
	if res.digest != d {
		return registry.Errorf(registry.CodeDigestInvalid, release.ErrInvalid, "the upload's digest is %s, not %s; nothing of it was kept", res.digest, d)
	}
	if res.layer == nil {
		if res.blob != "" {
			f, err := os.Open(res.blob)
			if err != nil {
				return err
			}
			defer os.Remove(res.blob)
			defer f.Close()
			return s.store.PutBlob(d, f)
		}
		return s.store.Put(d, res.data)
	}
	s.mu.Lock()
	s.blobs[d.String()] = layerBlob{DiffID: res.layer.DiffID.String(), Size: res.n}
	s.whole[res.layer.DiffID] = true
	b, err := json.Marshal(map[string]any{"blobs": s.blobs})
	s.mu.Unlock()
	if err != nil {
		return err
	}
	if err := atomicfile.Write(s.state, b); err != nil {
		return err
	}
	if sink := s.currentSink(); sink != nil {
		sink.Layer(res.layer)
	}
	return nil
}

// PutManifest takes an image manifest whose config and layers are here
// (and hands it to the sink), an index or an artifact whose parts are.
func (s *Server) PutManifest(repo, ref string, m *registry.Manifest) error {
	var config []byte
	switch {
	case m.IsIndex():
		for _, ch := range m.Manifests {
			if _, err := s.Manifest(repo, ch.Digest.String()); err != nil {
				return registry.Errorf(registry.CodeManifestBlobUnknown, release.ErrInvalid, "the index names manifest %s, which has not been pushed", ch.Digest)
			}
		}
	case m.IsImage():
		cd, err := registry.ParseDigest(m.Config.Digest.String())
		if err != nil {
			return err
		}
		if config, err = s.store.Get(cd); err != nil {
			return registry.Errorf(registry.CodeManifestBlobUnknown, release.ErrInvalid, "config %s has not been pushed", cd)
		}
		img, err := imagetar.FromConfig(config)
		if err != nil {
			return registry.Errorf(registry.CodeManifestInvalid, release.ErrInvalid, "config %s: %v", cd, err)
		}
		var diffIDs []string
		s.mu.Lock()
		for _, l := range m.Layers {
			diffIDs = append(diffIDs, s.blobs[l.Digest.String()].DiffID)
		}
		s.mu.Unlock()
		if !slices.Equal(diffIDs, img.DiffIDs) {
			return registry.Errorf(registry.CodeManifestBlobUnknown, release.ErrInvalid, "the manifest's layers are not the %d the config lists, or were not all pushed", len(img.DiffIDs))
		}
	default:
		for _, l := range append(m.Layers, *m.Config) {
			d, err := registry.ParseDigest(l.Digest.String())
			if err != nil {
				return err
			}
			if _, err := s.StatBlob(d); err != nil && !registry.IsForeign(l.MediaType) {
				return registry.Errorf(registry.CodeManifestBlobUnknown, release.ErrInvalid, "blob %s has not been pushed", l.Digest)
			}
		}
	}
	s.mu.Lock()
	s.manifests[repo+"@"+m.Digest] = m
	if !strings.HasPrefix(ref, "sha256:") {
		s.manifests[repo+":"+ref] = m
	}
	s.mu.Unlock()
	if config != nil {
		if sink := s.currentSink(); sink != nil {
			sink.Image(m, config)
		}
	}
	return nil
}

// Manifest returns a manifest pushed while the endpoint ran.
func (s *Server) Manifest(repo, ref string) (*registry.Manifest, error) {
	sep := ":"
	if strings.HasPrefix(ref, "sha256:") {
		sep = "@"
	}
	s.mu.Lock()
	m, ok := s.manifests[repo+sep+ref]
	s.mu.Unlock()
	if !ok {
		return nil, registry.Errorf(registry.CodeManifestUnknown, release.ErrNotFound, "no manifest %s%s%s", repo, sep, ref)
	}
	return m, nil
}

// upload reads one blob as it arrives: a layer (tar, gzip or zstd) is split
// into the cache, anything else kept aside until its digest is known.
type upload struct {
	s    *Server
	pw   *io.PipeWriter
	mu   sync.Mutex
	n    int64
	done chan result
	res  *result
}

type result struct {
	digest content.Digest // of the bytes as pushed
	n      int64
	layer  *content.Index
	data   []byte // a small blob that is not a layer
	blob   string // a larger one, in a temporary file
	err    error
}

func (s *Server) newUpload(id string) *upload {
	pr, pw := io.Pipe()
	u := &upload{s: s, pw: pw, done: make(chan result, 1)}
	go func() {
		res := s.read(pr)
		pr.CloseWithError(res.err)
		u.done <- res
	}()
	return u
}

func (u *upload) size() int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.n
}

func (u *upload) write(body io.Reader) error {
	n, err := io.Copy(u.pw, body)
	u.mu.Lock()
	u.n += n
	u.mu.Unlock()
	if err != nil {
		return registry.Errorf(registry.CodeBlobUploadInvalid, release.ErrInvalid, "upload: %v", err)
	}
	return nil
}

func (u *upload) finish() result {
	u.pw.Close()
	return <-u.done
}

func (u *upload) cancel(err error) {
	u.pw.CloseWithError(err)
	r := <-u.done
	if r.blob != "" {
		os.Remove(r.blob)
	}
}

// read splits a layer into the cache as it arrives, or keeps another blob,
// hashing the bytes as pushed.
func (s *Server) read(r io.Reader) result {
	h := newHasher(r)
	br := bufio.NewReaderSize(h, 1<<16)
	head, _ := br.Peek(512)
	var layer io.Reader
	var closer func()
	switch {
	case len(head) >= 2 && head[0] == 0x1f && head[1] == 0x8b:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return result{err: registry.Errorf(registry.CodeBlobUploadInvalid, release.ErrInvalid, "bad gzip: %v", err)}
		}
		layer = zr
	case len(head) >= 4 && string(head[:4]) == "\x28\xb5\x2f\xfd":
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(1<<30))
		if err != nil {
			return result{err: err}
		}
		layer, closer = zr, zr.Close
	case len(head) == 512 && (string(head[257:262]) == "ustar" || strings.Count(string(head), "\x00") == 512):
		layer = br
	default:
		return s.readBlob(br, h)
	}
	if closer != nil {
		defer closer()
	}
	sink := s.currentSink()
	ix, err := s.store.SplitInto(layer, func(fs []content.File) error {
		if sink != nil {
			sink.Files(fs)
		}
		return nil
	})
	if err != nil {
		return result{err: registry.Errorf(registry.CodeBlobUploadInvalid, release.ErrInvalid, "layer: %v", err)}
	}
	if _, err := io.Copy(io.Discard, br); err != nil { // what follows the end of the stream, hashed too
		return result{err: err}
	}
	return result{digest: h.sum(), n: h.n, layer: ix}
}

// readBlob keeps a blob that is not a layer: in memory up to a piece's
// size, in a temporary file beyond.
func (s *Server) readBlob(r io.Reader, h *hasher) result {
	data, err := io.ReadAll(io.LimitReader(r, content.MaxPiece+1))
	if err != nil {
		return result{err: err}
	}
	if len(data) <= content.MaxPiece {
		return result{digest: h.sum(), n: h.n, data: data}
	}
	f, err := os.CreateTemp("", "berth-blob-*")
	if err != nil {
		return result{err: err}
	}
	defer f.Close()
	if _, err := f.Write(data); err == nil {
		_, err = io.Copy(f, r)
	}
	if err != nil {
		os.Remove(f.Name())
		return result{err: err}
	}
	return result{digest: h.sum(), n: h.n, blob: f.Name()}
}

// hasher hashes and counts what is read through it.
type hasher struct {
	r io.Reader
	h hash.Hash
	n int64
}

func newHasher(r io.Reader) *hasher { return &hasher{r: r, h: sha256.New()} }

func (h *hasher) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	h.n += int64(n)
	return n, err
}

func (h *hasher) sum() content.Digest { return content.Digest(h.h.Sum(nil)) }
