package server

import (
	"bufio"
	"compress/gzip"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berth-robotics/berth/internal/atomicfile"
	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/imagetar"
	"github.com/berth-robotics/berth/internal/release"
)

// The push side of the OCI distribution spec under /v2/, so that
// `docker login` and `docker push` to the server work. A pushed layer is
// not kept as it came: it is decompressed and split into the content store
// like any upload, so devices later fetch only the pieces they lack. What
// the registry must remember beside the store lives in one directory:
//
//	registry/state.json        compressed digest → diffID of each pushed
//	                           layer, manifests' media types and images,
//	                           tags (name:tag → manifest digest)
//	registry/manifests/<hex>   each manifest as pushed
//	registry/uploads/<id>      uploads under way; an hour untouched: removed
//
// A manifest PUT registers its image as POST /v1/content/images does, so
// a release can pin the image by its ID (the config digest, which is what
// `docker images` shows). Blobs and manifests are one namespace across
// repository names. Pulling through /v2 is not offered: devices pull
// through the content exchange.

// Registry limits, unless Options say otherwise.
const (
	defaultMaxBlob  = 4 << 30  // one pushed blob, as sent
	defaultMaxLayer = 16 << 30 // one layer, decompressed
	maxManifest     = 4 << 20
	maxConfigBlob   = 16 << 20 // a blob that is not a layer (a config)
	maxUploads      = 256      // uploads under way at once
	uploadIdle      = time.Hour
)

// Media types of manifests.
const (
	mediaDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	mediaDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
	mediaDockerConfig   = "application/vnd.docker.container.image.v1+json"
)

var (
	repoName = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagName  = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
	uploadID = regexp.MustCompile(`^[0-9a-f]{32}$`)
)

// registryState is registry/state.json.
type registryState struct {
	Blobs     map[string]pushedLayer    `json:"blobs"`     // by compressed digest
	Manifests map[string]pushedManifest `json:"manifests"` // by digest
	Tags      map[string]string         `json:"tags"`      // "name:tag" → manifest digest
}

type pushedLayer struct {
	DiffID string `json:"diff_id"`
	Size   int64  `json:"size"`
}

type pushedManifest struct {
	MediaType string   `json:"media_type"`
	Images    []string `json:"images,omitempty"` // registered image IDs
}

// regErr is an error in the distribution spec's words: its code goes in
// the body beside the message.
type regErr struct {
	code string
	err  error
}

func (e *regErr) Error() string { return e.err.Error() }
func (e *regErr) Unwrap() error { return e.err }

func regError(code string, sentinel error, format string, args ...any) error {
	return &regErr{code: code, err: fmt.Errorf(format+": %w", append(args, sentinel)...)}
}

func (c *Content) registryDir(parts ...string) string {
	return filepath.Join(append([]string{c.dir, "registry"}, parts...)...)
}

// openRegistry makes the registry's directories and drops uploads left
// idle (a client that went away, a crash).
func (c *Content) openRegistry() error {
	for _, d := range []string{"manifests", "uploads"} {
		if err := os.MkdirAll(c.registryDir(d), 0o700); err != nil {
			return fmt.Errorf("registry: %w", err)
		}
	}
	c.sweepUploads(time.Now())
	return nil
}

// sweepUploads removes uploads untouched for uploadIdle and says how many
// remain.
func (c *Content) sweepUploads(now time.Time) int {
	ents, err := os.ReadDir(c.registryDir("uploads"))
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && now.Sub(fi.ModTime()) > uploadIdle {
			os.Remove(c.registryDir("uploads", e.Name()))
			continue
		}
		n++
	}
	return n
}

// loadState reads the state; call with regMu held.
func (c *Content) loadState() (*registryState, error) {
	st := &registryState{Blobs: map[string]pushedLayer{}, Manifests: map[string]pushedManifest{}, Tags: map[string]string{}}
	b, err := os.ReadFile(c.registryDir("state.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("registry state %s is damaged: %v", c.registryDir("state.json"), err)
	}
	return st, nil
}

// updateState changes the state under regMu and writes it whole.
func (c *Content) updateState(fn func(st *registryState) error) error {
	c.regMu.Lock()
	defer c.regMu.Unlock()
	st, err := c.loadState()
	if err != nil {
		return err
	}
	if err := fn(st); err != nil {
		return err
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return atomicfile.Write(c.registryDir("state.json"), b)
}

// readState returns a copy of the state.
func (c *Content) readState() (*registryState, error) {
	c.regMu.Lock()
	defer c.regMu.Unlock()
	return c.loadState()
}

// registryRoutes are the /v2 endpoints. A repository name has slashes in
// it, which mux patterns cannot match in the middle of a path, so one
// handler per method parses the rest (registry).
func (s *Server) registryRoutes() []route {
	return []route{
		{"GET /v1/content/tags", needDeployer, s.contentTags},
		{"GET /v2/{path...}", needDeployer, s.registry},
		{"POST /v2/{path...}", needDeployer, s.registry},
		{"PATCH /v2/{path...}", needDeployer, s.registry},
		{"PUT /v2/{path...}", needDeployer, s.registry},
		{"DELETE /v2/{path...}", needDeployer, s.registry},
	}
}

// PushedTag is one tag pushed through /v2, as GET /v1/content/tags lists
// it.
type PushedTag struct {
	Name     string   `json:"name"`     // repository, "robot/app"
	Tag      string   `json:"tag"`      // "1"
	Manifest string   `json:"manifest"` // the digest docker push printed
	Images   []string `json:"images"`   // registered image IDs (one per platform)
}

// contentTags lists the tags pushed through /v2 (?name= keeps one
// repository's), so that a release can pin a pushed image by its ID.
func (s *Server) contentTags(w http.ResponseWriter, r *http.Request, p principal) error {
	c, err := s.contentStore()
	if err != nil {
		return err
	}
	st, err := c.readState()
	if err != nil {
		return err
	}
	want := r.URL.Query().Get("name")
	tags := []PushedTag{}
	for _, ref := range slices.Sorted(maps.Keys(st.Tags)) {
		i := strings.LastIndex(ref, ":")
		name, tag := ref[:i], ref[i+1:]
		if want != "" && name != want {
			continue
		}
		d := st.Tags[ref]
		imgs := st.Manifests[d].Images
		if imgs == nil {
			imgs = []string{}
		}
		tags = append(tags, PushedTag{Name: name, Tag: tag, Manifest: d, Images: imgs})
	}
	reply(w, http.StatusOK, tags)
	return nil
}

// registry dispatches a /v2 request (HEAD arrives as GET's route).
func (s *Server) registry(w http.ResponseWriter, r *http.Request, p principal) error {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	rest := r.PathValue("path")
	if rest == "" {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			return regError("UNSUPPORTED", release.ErrNotFound, "%s /v2/: only GET", r.Method)
		}
		reply(w, http.StatusOK, struct{}{})
		return nil
	}
	c, err := s.contentStore()
	if err != nil {
		return err
	}
	// The last of the markers splits name from the rest: a repository
	// may be called robot/blobs/app.
	var name, kind, ref string
	at := 0
	for _, k := range []string{"/blobs/uploads/", "/blobs/", "/manifests/"} {
		if i := strings.LastIndex(rest, k); i > at {
			name, kind, ref, at = rest[:i], k, rest[i+len(k):], i
		}
	}
	if kind == "" && strings.HasSuffix(rest, "/blobs/uploads") {
		name, kind = strings.TrimSuffix(rest, "/blobs/uploads"), "/blobs/uploads/"
	}
	if kind == "" {
		return regError("UNSUPPORTED", release.ErrNotFound, "no such registry endpoint: %s %s (berth's registry takes pushes only)", r.Method, r.URL.Path)
	}
	if len(name) > 255 || !repoName.MatchString(name) {
		return regError("NAME_INVALID", release.ErrInvalid, "repository name %q is not valid", name)
	}
	method := r.Method
	if method == http.MethodHead {
		method = http.MethodGet
	}
	switch {
	case kind == "/blobs/uploads/" && ref == "" && method == http.MethodPost:
		return s.startUpload(w, r, p, c, name)
	case kind == "/blobs/uploads/" && method == http.MethodPatch:
		return s.patchUpload(w, r, c, name, ref)
	case kind == "/blobs/uploads/" && method == http.MethodPut:
		return s.finishUpload(w, r, p, c, name, ref)
	case kind == "/blobs/uploads/" && method == http.MethodGet:
		return c.uploadStatus(w, name, ref)
	case kind == "/blobs/uploads/" && method == http.MethodDelete:
		path, err := c.uploadPath(ref)
		if err != nil {
			return err
		}
		os.Remove(path)
		w.WriteHeader(http.StatusNoContent)
		return nil
	case kind == "/blobs/" && method == http.MethodGet:
		return c.statBlob(w, r, ref)
	case kind == "/manifests/" && method == http.MethodPut:
		return s.putManifest(w, r, p, c, name, ref)
	case kind == "/manifests/" && method == http.MethodGet:
		return c.getManifest(w, r, name, ref)
	}
	return regError("UNSUPPORTED", release.ErrNotFound, "%s %s is not supported (berth's registry takes pushes only)", r.Method, r.URL.Path)
}

// parseBlobDigest reads a "sha256:<64 hex>" digest.
func parseBlobDigest(s string) (content.Digest, error) {
	d, err := content.ParseDigest(s)
	if err != nil || !strings.HasPrefix(s, "sha256:") || strings.ToLower(s) != s {
		return content.Digest{}, regError("DIGEST_INVALID", release.ErrInvalid, "digest %q: want sha256:<64 lowercase hex digits>", s)
	}
	return d, nil
}

// statBlob answers HEAD (and GET, without the bytes of a layer) for a
// blob: a layer pushed before whose index is still in the store, or a
// config kept as a piece.
func (c *Content) statBlob(w http.ResponseWriter, r *http.Request, ref string) error {
	d, err := parseBlobDigest(ref)
	if err != nil {
		return err
	}
	size, isLayer, err := c.blobSize(d)
	if err != nil {
		return err
	}
	w.Header().Set("Docker-Content-Digest", d.String())
	w.Header().Set("Content-Length", fmt.Sprint(size))
	w.Header().Set("Content-Type", "application/octet-stream")
	if r.Method == http.MethodHead {
		w.WriteHeader(http.StatusOK)
		return nil
	}
	if isLayer {
		w.Header().Del("Content-Length")
		return regError("UNSUPPORTED", release.ErrNotFound, "layer %s is held as pieces; berth's registry takes pushes only (devices fetch through berth)", d)
	}
	b, err := c.store.Get(d)
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
	return nil
}

// blobSize finds a blob: its size as pushed, and whether it is a layer.
func (c *Content) blobSize(d content.Digest) (int64, bool, error) {
	st, err := c.readState()
	if err != nil {
		return 0, false, err
	}
	if l, ok := st.Blobs[d.String()]; ok {
		diff, err := content.ParseDigest(l.DiffID)
		if err != nil {
			return 0, false, err
		}
		if _, err := c.store.Index(diff); err == nil {
			return l.Size, true, nil
		}
	}
	if c.store.Has(d) {
		if b, err := c.store.Get(d); err == nil {
			return int64(len(b)), false, nil
		}
	}
	return 0, false, regError("BLOB_UNKNOWN", release.ErrNotFound, "blob %s is not on this server", d)
}

func (c *Content) uploadPath(id string) (string, error) {
	if !uploadID.MatchString(id) {
		return "", regError("BLOB_UPLOAD_UNKNOWN", release.ErrNotFound, "no upload %q", id)
	}
	path := c.registryDir("uploads", id)
	if _, err := os.Stat(path); err != nil {
		return "", regError("BLOB_UPLOAD_UNKNOWN", release.ErrNotFound, "no upload %q (finished, cancelled, or idle for over an hour)", id)
	}
	return path, nil
}

// uploadAccepted answers 202 for an upload under way.
func uploadAccepted(w http.ResponseWriter, name, id string, size int64) {
	end := size
	if end > 0 {
		end--
	}
	w.Header().Set("Location", "/v2/"+name+"/blobs/uploads/"+id)
	w.Header().Set("Docker-Upload-UUID", id)
	w.Header().Set("Range", fmt.Sprintf("0-%d", end))
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
}

func (c *Content) uploadStatus(w http.ResponseWriter, name, id string) error {
	path, err := c.uploadPath(id)
	if err != nil {
		return err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	end := fi.Size()
	if end > 0 {
		end--
	}
	w.Header().Set("Docker-Upload-UUID", id)
	w.Header().Set("Range", fmt.Sprintf("0-%d", end))
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// startUpload begins an upload (POST …/blobs/uploads/): whole with
// ?digest=, or in chunks to follow. A cross-repository mount of a blob the
// server has is answered 201; of one it lacks, with an upload.
func (s *Server) startUpload(w http.ResponseWriter, r *http.Request, p principal, c *Content, name string) error {
	q := r.URL.Query()
	if m := q.Get("mount"); m != "" {
		if d, err := parseBlobDigest(m); err == nil {
			if _, _, err := c.blobSize(d); err == nil {
				blobCreated(w, name, d)
				return nil
			}
		}
	}
	// Files' times are the real clock's, not Options.Now's.
	if c.sweepUploads(time.Now()) >= maxUploads {
		return fmt.Errorf("%d uploads are under way; finish some, or wait an hour for idle ones to be dropped: %w", maxUploads, errTooMany)
	}
	var idb [16]byte
	rand.Read(idb[:])
	id := hex.EncodeToString(idb[:])
	path := c.registryDir("uploads", id)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	f.Close()
	if q.Get("digest") != "" {
		return s.finishUpload(w, r, p, c, name, id)
	}
	uploadAccepted(w, name, id, 0)
	return nil
}

// appendBody appends the request body to an upload, bounded by MaxBlob.
func (s *Server) appendBody(w http.ResponseWriter, r *http.Request, path string) (int64, error) {
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(uploadDeadline))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := fi.Size()
	if cr := r.Header.Get("Content-Range"); cr != "" {
		var start, end int64
		if n, _ := fmt.Sscanf(strings.TrimPrefix(cr, "bytes="), "%d-%d", &start, &end); n != 2 || start != size || end < start {
			w.Header().Set("Range", fmt.Sprintf("0-%d", max(size-1, 0)))
			return 0, regError("BLOB_UPLOAD_INVALID", errRange, "Content-Range %q does not continue the upload, which has %d bytes", cr, size)
		}
	}
	room := s.opts.MaxBlob - size
	n, err := io.Copy(f, io.LimitReader(r.Body, room+1))
	if err == nil && n > room {
		err = regError("SIZE_INVALID", errTooLarge, "blob over %d bytes; nothing of it was kept", s.opts.MaxBlob)
	}
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		f.Close()
		os.Remove(path)
		var re *regErr
		switch {
		case errors.As(err, &re):
			return 0, err
		case errors.Is(err, syscall.ENOSPC):
			return 0, fmt.Errorf("upload: the server's disk is full; the upload was dropped: %w", release.ErrNoSpace)
		}
		return 0, regError("BLOB_UPLOAD_INVALID", release.ErrInvalid, "upload: %v; the upload was dropped, start again", err)
	}
	return size + n, nil
}

// errRange answers 416.
var errRange = errors.New("range not satisfiable")

func (s *Server) patchUpload(w http.ResponseWriter, r *http.Request, c *Content, name, id string) error {
	path, err := c.uploadPath(id)
	if err != nil {
		return err
	}
	size, err := s.appendBody(w, r, path)
	if err != nil {
		return err
	}
	uploadAccepted(w, name, id, size)
	return nil
}

// finishUpload completes an upload (PUT …?digest=, with the last chunk or
// none): the bytes are checked against the digest, then kept.
func (s *Server) finishUpload(w http.ResponseWriter, r *http.Request, p principal, c *Content, name, id string) error {
	path, err := c.uploadPath(id)
	if err != nil {
		return err
	}
	defer os.Remove(path)
	d, err := parseBlobDigest(r.URL.Query().Get("digest"))
	if err != nil {
		return err
	}
	size, err := s.appendBody(w, r, path)
	if err != nil {
		return err
	}
	if err := c.ingest(path, d, size, s.opts.MaxLayer); err != nil {
		return err
	}
	blobCreated(w, name, d)
	return nil
}

func blobCreated(w http.ResponseWriter, name string, d content.Digest) {
	w.Header().Set("Location", "/v2/"+name+"/blobs/"+d.String())
	w.Header().Set("Docker-Content-Digest", d.String())
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
}

// ingest keeps an uploaded blob that must be d: a layer (tar, gzip or
// zstd) split into the store, anything else small (a config) as a piece.
func (c *Content) ingest(path string, d content.Digest, size, maxLayer int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != d.Hex() {
		return regError("DIGEST_INVALID", release.ErrInvalid, "the upload's digest is sha256:%s, not %s; nothing was kept", got, d)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	br := bufio.NewReaderSize(f, 1<<16)
	head, _ := br.Peek(512)
	var layer io.Reader
	switch {
	case len(head) >= 2 && head[0] == 0x1f && head[1] == 0x8b:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return regError("BLOB_UPLOAD_INVALID", release.ErrInvalid, "blob %s: bad gzip: %v", d, err)
		}
		layer = zr
	case len(head) >= 4 && string(head[:4]) == "\x28\xb5\x2f\xfd":
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(1<<30))
		if err != nil {
			return err
		}
		defer zr.Close()
		layer = zr
	case len(head) == 512 && (string(head[257:262]) == "ustar" || (size <= 10240 && size%512 == 0 && strings.Count(string(head), "\x00") == 512)):
		layer = br
	default:
		if size > maxConfigBlob {
			return regError("BLOB_UPLOAD_INVALID", release.ErrInvalid, "blob %s is neither a layer (tar, gzip or zstd) nor a config of at most %d bytes", d, maxConfigBlob)
		}
		b, err := io.ReadAll(br)
		if err != nil {
			return err
		}
		return c.store.Put(d, b)
	}
	lr := &boundedReader{r: layer, left: maxLayer}
	batch := c.store.Batch()
	ix, err := content.Split(lr, batch.Put)
	if lr.over {
		err = regError("SIZE_INVALID", errTooLarge, "layer %s decompresses to over %d bytes; nothing of it was kept", d, maxLayer)
	}
	if err != nil {
		batch.Abort()
		var re *regErr
		if errors.As(err, &re) || errors.Is(err, release.ErrNoSpace) {
			return err
		}
		return regError("BLOB_UPLOAD_INVALID", release.ErrInvalid, "layer %s: %v; nothing was kept", d, err)
	}
	if err := batch.Commit(); err != nil {
		return err
	}
	if err := c.store.PutIndex(ix); err != nil {
		return err
	}
	return c.updateState(func(st *registryState) error {
		st.Blobs[d.String()] = pushedLayer{DiffID: ix.DiffID.String(), Size: size}
		return nil
	})
}

// boundedReader fails once more than left bytes come through: a bound
// on what a small compressed blob may expand to.
type boundedReader struct {
	r    io.Reader
	left int64
	over bool
}

func (b *boundedReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		var one [1]byte
		n, err := b.r.Read(one[:])
		if n > 0 {
			b.over = true
			return 0, errTooLarge
		}
		return 0, err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	return n, err
}

// manifestBody is what a manifest or an index says, of either family.
type manifestBody struct {
	SchemaVersion int                  `json:"schemaVersion"`
	MediaType     string               `json:"mediaType"`
	Config        *ocispec.Descriptor  `json:"config"`
	Layers        []ocispec.Descriptor `json:"layers"`
	Manifests     []ocispec.Descriptor `json:"manifests"`
}

// parseManifest reads a manifest or an index as pushed, its media type
// from its body or else the Content-Type. It is pure, for the fuzzer.
func parseManifest(body []byte, contentType string) (manifestBody, error) {
	var m manifestBody
	if err := json.Unmarshal(body, &m); err != nil {
		return m, regError("MANIFEST_INVALID", release.ErrInvalid, "manifest: %v", err)
	}
	if ct, _, _ := strings.Cut(contentType, ";"); m.MediaType == "" {
		m.MediaType = strings.TrimSpace(ct)
	}
	if m.SchemaVersion != 2 {
		return m, regError("MANIFEST_INVALID", release.ErrInvalid, "manifest schema version %d: berth takes schema 2 (Docker) and OCI manifests only", m.SchemaVersion)
	}
	switch m.MediaType {
	case mediaDockerManifest, ocispec.MediaTypeImageManifest:
		if m.Config == nil {
			return m, regError("MANIFEST_INVALID", release.ErrInvalid, "the manifest has no config")
		}
		for _, d := range append([]ocispec.Descriptor{*m.Config}, m.Layers...) {
			if _, err := parseBlobDigest(d.Digest.String()); err != nil {
				return m, err
			}
		}
	case mediaDockerList, ocispec.MediaTypeImageIndex:
		for _, d := range m.Manifests {
			if _, err := parseBlobDigest(d.Digest.String()); err != nil {
				return m, err
			}
		}
	default:
		return m, regError("MANIFEST_INVALID", release.ErrInvalid, "manifest media type %q: berth takes %s, %s and their indexes", m.MediaType, mediaDockerManifest, ocispec.MediaTypeImageManifest)
	}
	return m, nil
}

// putManifest takes an image manifest (Docker schema 2 or OCI), whose
// config and layers must have been pushed, and registers its image; or an
// index (manifest list), whose manifests must have been pushed.
func (s *Server) putManifest(w http.ResponseWriter, r *http.Request, p principal, c *Content, name, ref string) error {
	body, err := readBinary(w, r, maxManifest)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(body)
	d := "sha256:" + hex.EncodeToString(sum[:])
	tag := ""
	if strings.HasPrefix(ref, "sha256:") {
		if ref != d {
			return regError("DIGEST_INVALID", release.ErrInvalid, "the manifest's digest is %s, not %s", d, ref)
		}
	} else if tagName.MatchString(ref) {
		tag = ref
	} else {
		return regError("TAG_INVALID", release.ErrInvalid, "tag %q is not valid", ref)
	}
	m, err := parseManifest(body, r.Header.Get("Content-Type"))
	if err != nil {
		return err
	}
	mt := m.MediaType
	var images []string
	switch mt {
	case mediaDockerManifest, ocispec.MediaTypeImageManifest:
		if images, err = s.registerManifest(r, p, c, name, ref, m); err != nil {
			return err
		}
	case mediaDockerList, ocispec.MediaTypeImageIndex:
		st, err := c.readState()
		if err != nil {
			return err
		}
		for _, ch := range m.Manifests {
			pm, ok := st.Manifests[ch.Digest.String()]
			if !ok {
				return regError("MANIFEST_BLOB_UNKNOWN", release.ErrInvalid, "the index names manifest %s, which has not been pushed", ch.Digest)
			}
			images = append(images, pm.Images...)
		}
	}
	if err := atomicfile.Write(c.registryDir("manifests", strings.TrimPrefix(d, "sha256:")), body); err != nil {
		return err
	}
	if err := c.updateState(func(st *registryState) error {
		st.Manifests[d] = pushedManifest{MediaType: mt, Images: images}
		if tag != "" {
			st.Tags[name+":"+tag] = d
		}
		return nil
	}); err != nil {
		return err
	}
	if tag != "" {
		s.audit(r, p, "image.tag", "image/"+name+":"+tag, map[string]any{"manifest": d, "images": images})
	}
	w.Header().Set("Location", "/v2/"+name+"/manifests/"+d)
	w.Header().Set("Docker-Content-Digest", d)
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
	return nil
}

// registerManifest checks an image manifest against what was pushed and
// registers its image (if its config is an image config; other artifacts,
// such as build attestations, are kept unregistered).
func (s *Server) registerManifest(r *http.Request, p principal, c *Content, name, ref string, m manifestBody) ([]string, error) {
	cd, err := parseBlobDigest(m.Config.Digest.String())
	if err != nil {
		return nil, err
	}
	st, err := c.readState()
	if err != nil {
		return nil, err
	}
	if m.Config.MediaType != mediaDockerConfig && m.Config.MediaType != ocispec.MediaTypeImageConfig {
		for _, l := range append([]ocispec.Descriptor{*m.Config}, m.Layers...) {
			if _, ok := st.Blobs[l.Digest.String()]; ok {
				continue
			}
			if ld, err := parseBlobDigest(l.Digest.String()); err != nil || !c.store.Has(ld) {
				return nil, regError("MANIFEST_BLOB_UNKNOWN", release.ErrInvalid, "blob %s has not been pushed", l.Digest)
			}
		}
		return nil, nil
	}
	cfg, err := c.store.Get(cd)
	if err != nil {
		return nil, regError("MANIFEST_BLOB_UNKNOWN", release.ErrInvalid, "config %s has not been pushed", cd)
	}
	img, err := imagetar.FromConfig(cfg)
	if err != nil {
		return nil, regError("MANIFEST_INVALID", release.ErrInvalid, "config %s: %v", cd, err)
	}
	var diffIDs []string
	for _, l := range m.Layers {
		pl, ok := st.Blobs[l.Digest.String()]
		if !ok {
			return nil, regError("MANIFEST_BLOB_UNKNOWN", release.ErrInvalid, "layer %s has not been pushed (a foreign or non-distributable layer cannot be kept)", l.Digest)
		}
		diffIDs = append(diffIDs, pl.DiffID)
	}
	if !slices.Equal(diffIDs, img.DiffIDs) {
		return nil, regError("MANIFEST_INVALID", release.ErrInvalid, "the manifest's layers decompress to %d layers that are not the %d its config lists", len(diffIDs), len(img.DiffIDs))
	}
	if err := c.check(img); err != nil {
		return nil, err
	}
	created, err := c.register(img)
	if err != nil {
		return nil, err
	}
	if created {
		s.audit(r, p, "image.push", "image/"+img.ID, map[string]any{"layers": len(img.DiffIDs), "os": img.OS, "arch": img.Arch, "ref": name + ":" + ref})
	}
	return []string{img.ID}, nil
}

// getManifest answers GET and HEAD for a manifest pushed, by tag or digest.
func (c *Content) getManifest(w http.ResponseWriter, r *http.Request, name, ref string) error {
	st, err := c.readState()
	if err != nil {
		return err
	}
	d := ref
	if !strings.HasPrefix(ref, "sha256:") {
		var ok bool
		if d, ok = st.Tags[name+":"+ref]; !ok {
			return regError("MANIFEST_UNKNOWN", release.ErrNotFound, "no manifest %s:%s", name, ref)
		}
	}
	pm, ok := st.Manifests[d]
	if _, err := parseBlobDigest(d); err != nil || !ok {
		return regError("MANIFEST_UNKNOWN", release.ErrNotFound, "no manifest %s@%s", name, ref)
	}
	body, err := os.ReadFile(c.registryDir("manifests", strings.TrimPrefix(d, "sha256:")))
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", pm.MediaType)
	w.Header().Set("Docker-Content-Digest", d)
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
	return nil
}

// writeRegistryError writes an error of a /v2 request in the distribution
// spec's form, which Docker shows its user.
func writeRegistryError(w http.ResponseWriter, status int, err error, msg string) {
	code := "UNKNOWN"
	var re *regErr
	switch {
	case errors.As(err, &re):
		code = re.code
	case status == http.StatusUnauthorized:
		code = "UNAUTHORIZED"
	case status == http.StatusForbidden:
		code = "DENIED"
	case status == http.StatusTooManyRequests:
		code = "TOOMANYREQUESTS"
	case status == http.StatusRequestEntityTooLarge:
		code = "SIZE_INVALID"
	case status == http.StatusNotFound:
		code = "NAME_UNKNOWN"
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="berth"`)
	}
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	type item struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	writeJSON(w, status, struct {
		Errors []item `json:"errors"`
	}{[]item{{code, msg}}})
}
