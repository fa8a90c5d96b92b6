package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-robotics/berth/internal/atomicfile"
	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/imagetar"
	"github.com/berth-robotics/berth/internal/localapi"
	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/transfer"
)

// Image content through the fleet server. CI (or a laptop) uploads images
// with the same exchange a laptop speaks to a robot — the server answers
// like berthd's local API, so transfer.Sender works against it unchanged —
// and devices fetch what their target names with transfer.Puller, each
// piece checked on arrival. The endpoints are in contentRoutes; the
// device side, and who may read what, in devicecontent.go.

// Content is the fleet server's image content, kept on disk in one
// directory:
//
//	pieces/, layers/, tmp/   a content store (content.Store), as devices keep
//	                         theirs: layer indexes and pieces, image configs
//	images/<64 hex>          the register: one file per image uploaded whole,
//	                         holding its config
//	registry/                what `docker push` left besides (registry.go)
//
// An image is registered only once every one of its layers' indexes is in
// the store, and the store keeps an index only once all its pieces are
// there: a registered image can be rebuilt byte for byte.
type Content struct {
	store   *content.Store
	indexes *transfer.IndexCache // decoded layer indexes, for devices' questions
	dir     string

	mu     sync.Mutex
	images map[string]*imageEntry // registered images read so far, by ID

	regMu sync.Mutex // registry/state.json (registry.go)
}

// imageEntry is a registered image: what ContentInfo and the device checks
// need of it.
type imageEntry struct {
	diffIDs []string
	chains  []string
}

// indexCacheSize is how many decoded layer indexes the server keeps: a
// release's layers and the layers devices hold as delta bases (an index
// holds 32 bytes per ~64 KiB piece plus each file's header: about 1 MB for
// a 1 GB layer of large files, far less for most).
const indexCacheSize = 256

// source answers devices' questions from the content store.
func (c *Content) source() transfer.Server {
	return transfer.Server{Store: c.store, Indexes: c.indexes}
}

// OpenContent opens (creating if needed) the content kept in dir.
func OpenContent(dir string) (*Content, error) {
	if err := os.MkdirAll(filepath.Join(dir, "images"), 0o700); err != nil {
		return nil, fmt.Errorf("content: %w", err)
	}
	st, err := content.Open(dir)
	if err != nil {
		return nil, err
	}
	c := &Content{store: st, dir: dir, images: map[string]*imageEntry{}, indexes: transfer.NewIndexCache(indexCacheSize)}
	if err := c.openRegistry(); err != nil {
		st.Close()
		return nil, err
	}
	return c, nil
}

// Close releases the store's codecs.
func (c *Content) Close() error { return c.store.Close() }

func (c *Content) imagePath(d content.Digest) string {
	return filepath.Join(c.dir, "images", d.Hex())
}

// image returns a registered image, or nil.
func (c *Content) image(id string) (*imageEntry, error) {
	d, err := content.ParseDigest(id)
	if err != nil {
		return nil, nil // not an image ID: not registered
	}
	c.mu.Lock()
	e := c.images[d.String()]
	c.mu.Unlock()
	if e != nil {
		return e, nil
	}
	cfg, err := os.ReadFile(c.imagePath(d))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	img, err := imagetar.FromConfig(cfg)
	if err != nil || img.ID != d.String() {
		return nil, fmt.Errorf("image register: %s is damaged (remove it and upload the image again): %v", c.imagePath(d), err)
	}
	e = &imageEntry{diffIDs: img.DiffIDs, chains: imagetar.ChainIDs(img.DiffIDs)}
	c.mu.Lock()
	c.images[d.String()] = e
	c.mu.Unlock()
	return e, nil
}

// registered lists the registered images' IDs, sorted.
func (c *Content) registered() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(c.dir, "images"))
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range ents {
		if d, err := content.ParseDigest(e.Name()); err == nil && e.Type().IsRegular() {
			ids = append(ids, d.String())
		}
	}
	return ids, nil
}

// check says why img cannot be registered yet: a layer whose index is not
// in the store, or whose pieces are not all there.
func (c *Content) check(img imagetar.Image) error {
	for _, id := range img.DiffIDs {
		d, err := content.ParseDigest(id)
		if err != nil {
			return err
		}
		ix, err := c.store.Index(d)
		if errors.Is(err, release.ErrNotFound) {
			return fmt.Errorf("image %s: layer %s has not been uploaded; send it first (berth release create does): %w", release.ShortID(img.ID), release.ShortID(id), release.ErrConflict)
		}
		if err != nil {
			return err
		}
		if m := c.store.Missing(ix); len(m) > 0 {
			return fmt.Errorf("image %s: layer %s lacks %d pieces on the server; upload the image again: %w", release.ShortID(img.ID), release.ShortID(id), len(m), release.ErrConflict)
		}
	}
	return nil
}

// register records img as uploaded whole (check first). It reports whether
// it was new.
func (c *Content) register(img imagetar.Image) (bool, error) {
	d, err := content.ParseDigest(img.ID)
	if err != nil {
		return false, err
	}
	if e, err := c.image(img.ID); err != nil || e != nil {
		return false, err
	}
	// The config as a piece, for transfer.Server.Config; then the register.
	if err := c.store.Put(d, img.Config); err != nil {
		return false, err
	}
	if err := atomicfile.Write(c.imagePath(d), img.Config); err != nil {
		return false, fmt.Errorf("image register: %w", err)
	}
	c.mu.Lock()
	c.images[img.ID] = &imageEntry{diffIDs: img.DiffIDs, chains: imagetar.ChainIDs(img.DiffIDs)}
	c.mu.Unlock()
	return true, nil
}

// info is what the server holds, as a sender asks a device: the layers
// whose indexes (and so all pieces) are here, the registered images and
// their chains. Any OS and architecture.
func (c *Content) info() (*localapi.ContentInfo, error) {
	info := &localapi.ContentInfo{Layers: []string{}, Chains: []string{}, Images: []string{}, MinFree: contentMinFree}
	layers, err := c.store.Layers()
	if err != nil {
		return nil, err
	}
	for _, l := range layers {
		info.Layers = append(info.Layers, l.String())
	}
	ids, err := c.registered()
	if err != nil {
		return nil, err
	}
	chains := map[string]bool{}
	for _, id := range ids {
		e, err := c.image(id)
		if err != nil {
			return nil, err
		}
		if e == nil {
			continue
		}
		info.Images = append(info.Images, id)
		for _, ch := range e.chains {
			chains[ch] = true
		}
	}
	for ch := range chains {
		info.Chains = append(info.Chains, ch)
	}
	slices.Sort(info.Chains)
	var st unix.Statfs_t
	if err := unix.Statfs(c.dir, &st); err == nil {
		// 0 would read as "unknown" to the sender: a full disk says 1
		// byte, so that the upload is refused before it starts.
		info.StateFree = max(1, st.Bavail*uint64(st.Bsize))
	}
	return info, nil
}

// contentMinFree is the room an upload leaves free on the server's disk.
const contentMinFree = 256 << 20

// uploadDeadline is how long one upload request (a batch of pieces, an
// index) may take to arrive, over the server's usual minute: a 64 MiB batch
// from CI at the far end of a slow link.
const uploadDeadline = 15 * time.Minute

// contentRoutes are the endpoints of the content exchange; docs/api.md
// documents them.
func (s *Server) contentRoutes() []route {
	return []route{
		{"GET /v1/content", needDeployer, s.contentInfo},
		{"POST /v1/content/missing", needDeployer, s.contentMissing},
		{"POST /v1/content/pieces", needDeployer, s.contentPieces},
		{"PUT /v1/content/layers/{diffid}", needDeployer, s.contentIndex},
		{"POST /v1/content/images", needDeployer, s.contentImages},

		{"GET /v1/device/content/images/{image}", needDevice, s.deviceImage},
		{"GET /v1/device/content/layers/{diffid}", needDevice, s.deviceLayer},
		{"POST /v1/device/content/layers/{diffid}/pieces", needDevice, s.devicePieces},
	}
}

// errNoContent answers content requests on a server without a content
// store (one made without Options.Content).
var errNoContent = fmt.Errorf("this server keeps no image content: %w", release.ErrNotFound)

// contentStore is the server's content, or errNoContent.
func (s *Server) contentStore() (*Content, error) {
	if s.content.c == nil {
		return nil, errNoContent
	}
	return s.content.c, nil
}

// readBinary reads a request body of at most limit bytes.
func readBinary(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return nil, fmt.Errorf("request body over %d bytes; nothing of it was stored: %w", mbe.Limit, errTooLarge)
	case err != nil:
		return nil, fmt.Errorf("request body: %v: %w", err, release.ErrInvalid)
	}
	return b, nil
}

// upload reads an upload's body: at most transfer.MaxBatch, with more time
// to arrive than other requests get.
func upload(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(uploadDeadline))
	return readBinary(w, r, transfer.MaxBatch)
}

// readErr remembers the error its reader gave (a decoder reports it only
// as text).
type readErr struct {
	r   io.Reader
	err error
}

func (e *readErr) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		e.err = err
	}
	return n, err
}

func writeBinary(w http.ResponseWriter, b []byte) {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", fmt.Sprint(len(b)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

func (s *Server) contentInfo(w http.ResponseWriter, r *http.Request, p principal) error {
	c, err := s.contentStore()
	if err != nil {
		return err
	}
	info, err := c.info()
	if err != nil {
		return err
	}
	reply(w, http.StatusOK, info)
	return nil
}

// contentUpload returns the server's content store and the request's body,
// bounded: the start of every upload handler.
func (s *Server) contentUpload(w http.ResponseWriter, r *http.Request) (*Content, []byte, error) {
	c, err := s.contentStore()
	if err != nil {
		return nil, nil, err
	}
	body, err := upload(w, r)
	return c, body, err
}

// contentMissing answers which of the posted digests (32 bytes each) the
// store lacks, in the same form.
func (s *Server) contentMissing(w http.ResponseWriter, r *http.Request, p principal) error {
	c, body, err := s.contentUpload(w, r)
	if err != nil {
		return err
	}
	out, err := transfer.Receiver{Store: c.store}.Missing(body)
	if err != nil {
		return err
	}
	writeBinary(w, out)
	return nil
}

// contentPieces stores one batch of pieces, each checked against its
// digest. It reads the batch as it arrives: when the uploader's link is cut
// in the middle, the whole pieces that came are kept, and the rerun of
// `berth release create` sends only the rest.
func (s *Server) contentPieces(w http.ResponseWriter, r *http.Request, p principal) error {
	c, err := s.contentStore()
	if err != nil {
		return err
	}
	if r.ContentLength > transfer.MaxBatch {
		return fmt.Errorf("request body over %d bytes; nothing of it was stored: %w", transfer.MaxBatch, errTooLarge)
	}
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(uploadDeadline))
	body := &readErr{r: http.MaxBytesReader(w, r.Body, transfer.MaxBatch)}
	resp, err := transfer.Receiver{Store: c.store}.PutBatchFrom(body)
	if mbe := (*http.MaxBytesError)(nil); errors.As(body.err, &mbe) {
		return fmt.Errorf("request body over %d bytes; %d pieces of it were stored: %w", mbe.Limit, resp.Stored, errTooLarge)
	}
	if err != nil {
		if resp.Stored > 0 {
			s.log.Info("a batch of pieces broke off; kept what arrived", "stored", resp.Stored, "error", err)
		}
		return err
	}
	reply(w, http.StatusOK, resp)
	return nil
}

// contentIndex stores a layer's index once all its pieces are here (409
// otherwise); ?base= names the layer a delta-encoded index is against.
func (s *Server) contentIndex(w http.ResponseWriter, r *http.Request, p principal) error {
	c, body, err := s.contentUpload(w, r)
	if err != nil {
		return err
	}
	diffID := r.PathValue("diffid")
	if err := (transfer.Receiver{Store: c.store}).PutIndex(diffID, body, r.URL.Query().Get("base")); err != nil {
		return err
	}
	reply(w, http.StatusOK, map[string]string{"layer": diffID})
	return nil
}

// contentImages registers images whose layers are all here: the end of an
// upload, where a device would load them into its engine. Nothing is
// registered unless every image can be.
func (s *Server) contentImages(w http.ResponseWriter, r *http.Request, p principal) error {
	c, err := s.contentStore()
	if err != nil {
		return err
	}
	start := s.now()
	body, err := upload(w, r)
	if err != nil {
		return err
	}
	imgs, err := parseImages(body)
	if err != nil {
		return err
	}
	for _, img := range imgs {
		if err := c.check(img); err != nil {
			return err
		}
	}
	resp := &localapi.LoadResponse{Images: []string{}}
	for _, img := range imgs {
		created, err := c.register(img)
		if err != nil {
			return err
		}
		if created {
			s.audit(r, p, "image.upload", "image/"+img.ID, map[string]any{"layers": len(img.DiffIDs), "os": img.OS, "arch": img.Arch})
		}
		resp.Images = append(resp.Images, img.ID)
	}
	resp.Seconds = s.now().Sub(start).Seconds()
	reply(w, http.StatusOK, resp)
	return nil
}

// checkImages refuses a release that pins an image this server does not
// hold whole, unless its content is external (devices get the images
// elsewhere). A release the fleet has already is not refused: creating it
// again changes nothing.
func (s *Server) checkImages(ctx context.Context, fleetID string, rel release.Release, where string) error {
	switch where {
	case serverapi.ContentServer:
	case serverapi.ContentExternal:
		return nil
	default:
		return fmt.Errorf("content %q: want \"external\", or nothing for images uploaded to this server: %w", where, release.ErrInvalid)
	}
	names := slices.Sorted(maps.Keys(rel.Spec.Services))
	for _, name := range names {
		id := rel.Spec.Services[name].ImageID
		if id == "" {
			continue
		}
		var img *imageEntry
		if s.content.c != nil {
			var err error
			if img, err = s.content.c.image(id); err != nil {
				return err
			}
		}
		if img != nil {
			continue
		}
		if _, err := s.st.Release(ctx, fleetID, rel.ID); err == nil {
			return nil
		}
		return fmt.Errorf("image %s of service %s has not been uploaded to this server; `berth release create` uploads it from the local engine (or create the release with \"content\": \"external\" if devices get their images another way); nothing was created: %w",
			release.ShortID(id), name, release.ErrConflict)
	}
	return nil
}

// parseImages reads the body of POST /v1/content/images (a
// localapi.LoadRequest) into the images it names. It is pure, for the
// fuzzer.
func parseImages(body []byte) ([]imagetar.Image, error) {
	var req localapi.LoadRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return nil, fmt.Errorf("request body: %v; nothing was registered: %w", err, release.ErrInvalid)
	}
	if dec.Decode(new(json.RawMessage)) != io.EOF {
		return nil, fmt.Errorf("request body: more after the JSON value; nothing was registered: %w", release.ErrInvalid)
	}
	if len(req.Images) == 0 {
		return nil, fmt.Errorf("no images: %w", release.ErrInvalid)
	}
	var imgs []imagetar.Image
	for _, li := range req.Images {
		img, err := imagetar.FromConfig(li.Config)
		if err != nil {
			return nil, err
		}
		imgs = append(imgs, img)
	}
	return imgs, nil
}
