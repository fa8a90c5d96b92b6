package server

import (
	"bufio"
	"bytes"
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
	"github.com/berth-robotics/berth/internal/registry"
	"github.com/berth-robotics/berth/internal/release"
)

// The push side of the OCI distribution spec under /v2/ (internal/registry
// speaks the protocol; this file keeps what arrives), so that `docker
// login` and `docker push` to the server work. A pushed layer is not kept
// as it came: it is decompressed and split into the content store like any
// upload, so devices later fetch only the pieces they lack. What the
// registry must remember beside the store lives in one directory:
//
//	registry/state.json        compressed digest → diffID of each pushed
//	                           layer, manifests' media types and images,
//	                           tags (name:tag → manifest digest)
//	registry/manifests/<hex>   each manifest as pushed
//	registry/uploads/<id>      uploads under way; an hour untouched: removed
//
// Blobs that are neither layers nor small enough to be a piece (an SBOM
// attestation over 16 MiB) are kept whole in the content store's blobs/.
// A manifest PUT registers its image as POST /v1/content/images does, so a
// release can pin the image by its ID (the config digest, which is what
// `docker images` shows on the classic image store); other manifests
// (attestations, signatures, artifacts) are kept unregistered. Blobs and
// manifests are one namespace across repository names. Pulling layers
// through /v2 is not offered (devices pull through the content exchange):
// a layer's bytes are served only when it was pushed uncompressed.

// Registry limits, unless Options say otherwise.
const (
	defaultMaxBlob  = 4 << 30  // one pushed blob, as sent
	defaultMaxLayer = 16 << 30 // one layer, decompressed
	maxUploads      = 256      // uploads under way at once
	uploadIdle      = time.Hour
)

var uploadID = regexp.MustCompile(`^[0-9a-f]{32}$`)

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

// registry answers a /v2 request through internal/registry, over the
// content store (regBackend).
func (s *Server) registry(w http.ResponseWriter, r *http.Request, p principal) error {
	b := &regBackend{s: s, r: r, p: p}
	if r.PathValue("path") != "" {
		c, err := s.contentStore()
		if err != nil {
			return err
		}
		b.c = c
	}
	return registry.Serve(w, r, r.PathValue("path"), b, registry.Options{UploadTimeout: uploadDeadline})
}

// regBackend keeps what one /v2 request brings in the server's content
// store; r and p are for the audit log.
type regBackend struct {
	s *Server
	c *Content
	r *http.Request
	p principal
}

// StatBlob finds a blob: a layer pushed before whose index is still in the
// store, a config kept as a piece, or a blob kept whole.
func (b *regBackend) StatBlob(d content.Digest) (int64, error) {
	size, _, err := b.c.blobSize(d)
	return size, err
}

// OpenBlob serves a blob as pushed: a piece or a whole blob as it is, a
// layer only when it was pushed uncompressed (its bytes are then the
// layer, rebuilt from its pieces).
func (b *regBackend) OpenBlob(d content.Digest) (io.ReadCloser, int64, error) {
	size, isLayer, err := b.c.blobSize(d)
	if err != nil {
		return nil, 0, err
	}
	if !isLayer {
		if rc, err := b.c.store.OpenBlob(d); err == nil {
			return rc, size, nil
		}
		data, err := b.c.store.Get(d)
		if err != nil {
			return nil, 0, err
		}
		return io.NopCloser(bytes.NewReader(data)), size, nil
	}
	ix, err := b.c.store.Index(d)
	if err != nil {
		return nil, 0, registry.Errorf(registry.CodeUnsupported, release.ErrNotFound, "layer %s is held as pieces, not as it was pushed; berth's registry takes pushes (devices fetch through berth)", d)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(content.Rebuild(ix, b.c.store.Get, pw)) }()
	return pr, size, nil
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
	if size, err := c.store.BlobSize(d); err == nil {
		return size, false, nil
	}
	if c.store.Has(d) {
		if b, err := c.store.Get(d); err == nil {
			return int64(len(b)), false, nil
		}
	}
	return 0, false, registry.Errorf(registry.CodeBlobUnknown, release.ErrNotFound, "blob %s is not on this server", d)
}

// StartUpload makes an upload file. Files' times are the real clock's, not
// Options.Now's.
func (b *regBackend) StartUpload(string) (string, error) {
	if b.c.sweepUploads(time.Now()) >= maxUploads {
		return "", fmt.Errorf("%d uploads are under way; finish some, or wait an hour for idle ones to be dropped: %w", maxUploads, errTooMany)
	}
	var idb [16]byte
	rand.Read(idb[:])
	id := hex.EncodeToString(idb[:])
	f, err := os.OpenFile(b.c.registryDir("uploads", id), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return "", err
	}
	return id, f.Close()
}

func (c *Content) uploadPath(id string) (string, error) {
	if !uploadID.MatchString(id) {
		return "", registry.Errorf(registry.CodeBlobUploadUnknown, release.ErrNotFound, "no upload %q", id)
	}
	path := c.registryDir("uploads", id)
	if _, err := os.Stat(path); err != nil {
		return "", registry.Errorf(registry.CodeBlobUploadUnknown, release.ErrNotFound, "no upload %q (finished, cancelled, or idle for over an hour)", id)
	}
	return path, nil
}

func (b *regBackend) UploadSize(id string) (int64, error) {
	path, err := b.c.uploadPath(id)
	if err != nil {
		return 0, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

func (b *regBackend) CancelUpload(id string) error {
	path, err := b.c.uploadPath(id)
	if err != nil {
		return err
	}
	return os.Remove(path)
}

// AppendUpload appends to an upload, bounded by MaxBlob.
func (b *regBackend) AppendUpload(id string, body io.Reader) (int64, error) {
	path, err := b.c.uploadPath(id)
	if err != nil {
		return 0, err
	}
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
	room := b.s.opts.MaxBlob - size
	n, err := io.Copy(f, io.LimitReader(body, room+1))
	if err == nil && n > room {
		err = registry.Errorf(registry.CodeSizeInvalid, errTooLarge, "blob over %d bytes; nothing of it was kept", b.s.opts.MaxBlob)
	}
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		f.Close()
		os.Remove(path)
		var re *registry.Error
		switch {
		case errors.As(err, &re):
			return 0, err
		case errors.Is(err, syscall.ENOSPC):
			return 0, fmt.Errorf("upload: the server's disk is full; the upload was dropped: %w", release.ErrNoSpace)
		}
		return 0, registry.Errorf(registry.CodeBlobUploadInvalid, release.ErrInvalid, "upload: %v; the upload was dropped, start again", err)
	}
	return size + n, nil
}

// FinishUpload checks the upload against d and keeps it (ingest).
func (b *regBackend) FinishUpload(id string, d content.Digest) error {
	path, err := b.c.uploadPath(id)
	if err != nil {
		return err
	}
	defer os.Remove(path)
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	return b.c.ingest(path, d, fi.Size(), b.s.opts.MaxLayer)
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
		return registry.Errorf(registry.CodeDigestInvalid, release.ErrInvalid, "the upload's digest is sha256:%s, not %s; nothing was kept", got, d)
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
			return registry.Errorf(registry.CodeBlobUploadInvalid, release.ErrInvalid, "blob %s: bad gzip: %v", d, err)
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
		if size > content.MaxPiece {
			// Not a layer, too big to be a piece (an SBOM, an artifact):
			// kept whole.
			return c.store.PutBlob(d, br)
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
		err = registry.Errorf(registry.CodeSizeInvalid, errTooLarge, "layer %s decompresses to over %d bytes; nothing of it was kept", d, maxLayer)
	}
	if err != nil {
		batch.Abort()
		var re *registry.Error
		if errors.As(err, &re) || errors.Is(err, release.ErrNoSpace) {
			return err
		}
		return registry.Errorf(registry.CodeBlobUploadInvalid, release.ErrInvalid, "layer %s: %v; nothing was kept", d, err)
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

// PutManifest keeps an image manifest (Docker schema 2 or OCI), whose
// config and layers must have been pushed, and registers its image; an
// index (manifest list), whose manifests must have been pushed; or any
// other manifest whose blobs were pushed (an artifact, an attestation),
// unregistered.
func (b *regBackend) PutManifest(name, ref string, m *registry.Manifest) error {
	c := b.c
	var images []string
	if m.IsIndex() {
		st, err := c.readState()
		if err != nil {
			return err
		}
		for _, ch := range m.Manifests {
			pm, ok := st.Manifests[ch.Digest.String()]
			if !ok {
				return registry.Errorf(registry.CodeManifestBlobUnknown, release.ErrInvalid, "the index names manifest %s, which has not been pushed", ch.Digest)
			}
			images = append(images, pm.Images...)
		}
	} else {
		var err error
		if images, err = b.registerManifest(name, ref, m); err != nil {
			return err
		}
	}
	if err := atomicfile.Write(c.registryDir("manifests", strings.TrimPrefix(m.Digest, "sha256:")), m.Body); err != nil {
		return err
	}
	tag := ""
	if !strings.HasPrefix(ref, "sha256:") {
		tag = ref
	}
	if err := c.updateState(func(st *registryState) error {
		st.Manifests[m.Digest] = pushedManifest{MediaType: m.MediaType, Images: images}
		if tag != "" {
			st.Tags[name+":"+tag] = m.Digest
		}
		return nil
	}); err != nil {
		return err
	}
	if tag != "" {
		b.s.audit(b.r, b.p, "image.tag", "image/"+name+":"+tag, map[string]any{"manifest": m.Digest, "images": images})
	}
	return nil
}

// registerManifest checks a manifest against what was pushed and, for an
// image a device can run, registers it. Other manifests (BuildKit's
// provenance attestations, whose layer is an in-toto statement; artifacts)
// need their blobs only, and are kept unregistered.
func (b *regBackend) registerManifest(name, ref string, m *registry.Manifest) ([]string, error) {
	c := b.c
	st, err := c.readState()
	if err != nil {
		return nil, err
	}
	if !m.IsImage() {
		for _, l := range append([]ocispec.Descriptor{*m.Config}, m.Layers...) {
			if registry.IsForeign(l.MediaType) {
				continue
			}
			ld, err := registry.ParseDigest(l.Digest.String())
			if err != nil {
				return nil, err
			}
			if _, _, err := c.blobSize(ld); err != nil {
				return nil, registry.Errorf(registry.CodeManifestBlobUnknown, release.ErrInvalid, "blob %s has not been pushed", l.Digest)
			}
		}
		return nil, nil
	}
	cd, err := registry.ParseDigest(m.Config.Digest.String())
	if err != nil {
		return nil, err
	}
	cfg, err := c.store.Get(cd)
	if err != nil {
		return nil, registry.Errorf(registry.CodeManifestBlobUnknown, release.ErrInvalid, "config %s has not been pushed", cd)
	}
	img, err := imagetar.FromConfig(cfg)
	if err != nil {
		return nil, registry.Errorf(registry.CodeManifestInvalid, release.ErrInvalid, "config %s: %v", cd, err)
	}
	var diffIDs []string
	for _, l := range m.Layers {
		pl, ok := st.Blobs[l.Digest.String()]
		if !ok {
			return nil, registry.Errorf(registry.CodeManifestBlobUnknown, release.ErrInvalid, "layer %s has not been pushed (a foreign or non-distributable layer cannot be kept)", l.Digest)
		}
		diffIDs = append(diffIDs, pl.DiffID)
	}
	if !slices.Equal(diffIDs, img.DiffIDs) {
		return nil, registry.Errorf(registry.CodeManifestInvalid, release.ErrInvalid, "the manifest's layers decompress to %d layers that are not the %d its config lists", len(diffIDs), len(img.DiffIDs))
	}
	if err := c.check(img); err != nil {
		return nil, err
	}
	created, err := c.register(img)
	if err != nil {
		return nil, err
	}
	if created {
		b.s.audit(b.r, b.p, "image.push", "image/"+img.ID, map[string]any{"layers": len(img.DiffIDs), "os": img.OS, "arch": img.Arch, "ref": name + ":" + ref})
	}
	return []string{img.ID}, nil
}

// Manifest returns a manifest pushed, by tag or digest.
func (b *regBackend) Manifest(name, ref string) (*registry.Manifest, error) {
	st, err := b.c.readState()
	if err != nil {
		return nil, err
	}
	d := ref
	if !strings.HasPrefix(ref, "sha256:") {
		var ok bool
		if d, ok = st.Tags[name+":"+ref]; !ok {
			return nil, registry.Errorf(registry.CodeManifestUnknown, release.ErrNotFound, "no manifest %s:%s", name, ref)
		}
	}
	pm, ok := st.Manifests[d]
	if _, err := registry.ParseDigest(d); err != nil || !ok {
		return nil, registry.Errorf(registry.CodeManifestUnknown, release.ErrNotFound, "no manifest %s@%s", name, ref)
	}
	body, err := os.ReadFile(b.c.registryDir("manifests", strings.TrimPrefix(d, "sha256:")))
	if err != nil {
		return nil, err
	}
	return &registry.Manifest{Digest: d, MediaType: pm.MediaType, Body: body}, nil
}
