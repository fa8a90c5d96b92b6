package content

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/berth-robotics/berth/internal/release"
)

// Store keeps pieces and layer indexes on disk under one directory:
//
//	pieces/<2 hex>/<64 hex>   a piece, zstd-compressed
//	layers/<64 hex>           a layer index (Encode), zstd-compressed
//	blobs/<64 hex>            a blob kept whole, as it came (a registry's
//	                          blobs that are neither layers nor pieces)
//
// Writes are crash-safe (temp file, fsync, rename); reads verify the digest,
// and a piece that fails is removed so that it is fetched again.
type Store struct {
	dir  string
	enc  *zstd.Encoder
	dec  *zstd.Decoder // indexes (bounded by what an index may be)
	pdec *zstd.Decoder // pieces: at most MaxPiece bytes
	mu   sync.Mutex    // guards enc (EncodeAll is safe, but kept simple for Close)
}

// MaxPiece bounds a piece: the largest is an image config (at most 16 MiB
// where configs are read: imagetar, the server's registry); Split cuts file
// content at maxChunk. A compressed piece that would expand beyond it is
// refused before it takes the memory (the bound was 2 GiB: a frame of a few
// KiB made the receiver allocate that much).
const MaxPiece = 16 << 20

// Open opens (creating if needed) a store in dir.
func Open(dir string) (*Store, error) {
	for _, d := range []string{"pieces", "layers", "blobs", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("content store: %w", err)
		}
	}
	// Old temporary files are what a crash left half written: drop them
	// (recent ones may be another process's batch under way).
	if ents, err := os.ReadDir(filepath.Join(dir, "tmp")); err == nil {
		for _, e := range ents {
			if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > time.Hour {
				os.Remove(filepath.Join(dir, "tmp", e.Name()))
			}
		}
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(2<<30))
	if err != nil {
		return nil, err
	}
	pdec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(MaxPiece))
	if err != nil {
		return nil, err
	}
	return &Store{dir: dir, enc: enc, dec: dec, pdec: pdec}, nil
}

// Close releases the codecs.
func (s *Store) Close() error {
	s.dec.Close()
	s.pdec.Close()
	return s.enc.Close()
}

func (s *Store) piecePath(d Digest) string {
	h := d.Hex()
	return filepath.Join(s.dir, "pieces", h[:2], h)
}

func (s *Store) layerPath(diffID Digest) string {
	return filepath.Join(s.dir, "layers", diffID.Hex())
}

// Has reports whether the store holds a piece.
func (s *Store) Has(d Digest) bool {
	_, err := os.Stat(s.piecePath(d))
	return err == nil
}

// Put stores a piece after checking that data is what d names.
func (s *Store) Put(d Digest, data []byte) error {
	if len(data) > MaxPiece {
		return fmt.Errorf("piece %s: %d bytes, more than a piece may be (%d): %w", d, len(data), MaxPiece, ErrCorrupt)
	}
	if Sum(data) != d {
		return fmt.Errorf("piece %s: %w", d, ErrCorrupt)
	}
	if s.Has(d) {
		return nil
	}
	return s.write(s.piecePath(d), s.enc.EncodeAll(data, nil))
}

// A Batch stores many pieces with one flush to disk instead of one each
// (36,000 fsyncs take the best part of a minute on an SD card or a cloud
// disk). Each piece goes to a temporary file; Commit flushes them all at once
// and only then moves them into place, so a piece in the store always has its
// bytes on disk. A crash before Commit leaves only temporary files, which a
// later Open removes.
type Batch struct {
	s        *Store
	tmp, dst []string
	seen     map[Digest]bool
}

// Batch starts a batch.
func (s *Store) Batch() *Batch { return &Batch{s: s, seen: map[Digest]bool{}} }

// Put adds a piece, checked against d.
func (b *Batch) Put(d Digest, data []byte) error {
	if len(data) > MaxPiece {
		return fmt.Errorf("piece %s: %d bytes, more than a piece may be (%d): %w", d, len(data), MaxPiece, ErrCorrupt)
	}
	if Sum(data) != d {
		return fmt.Errorf("piece %s: %w", d, ErrCorrupt)
	}
	if b.seen[d] || b.s.Has(d) {
		return nil
	}
	return b.add(d, b.s.enc.EncodeAll(data, nil))
}

// PutCompressed adds a piece that arrives zstd-compressed, checked against d.
func (b *Batch) PutCompressed(d Digest, z []byte) error {
	data, err := b.s.pdec.DecodeAll(z, nil)
	if err != nil {
		return fmt.Errorf("piece %s: bad compression: %v: %w", d, err, ErrCorrupt)
	}
	if Sum(data) != d {
		return fmt.Errorf("piece %s: %w", d, ErrCorrupt)
	}
	if b.seen[d] || b.s.Has(d) {
		return nil
	}
	return b.add(d, z)
}

func (b *Batch) add(d Digest, z []byte) error {
	f, err := os.CreateTemp(filepath.Join(b.s.dir, "tmp"), "batch-*")
	if err != nil {
		return err
	}
	b.tmp = append(b.tmp, f.Name())
	_, err = f.Write(z)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return noSpace(b.s.dir, err)
	}
	b.dst = append(b.dst, b.s.piecePath(d))
	b.seen[d] = true
	return nil
}

// Commit makes the batch's pieces durable and puts them in the store.
func (b *Batch) Commit() error {
	defer b.Abort()
	if len(b.dst) == 0 {
		return nil
	}
	if err := flush(b.s.dir, b.tmp); err != nil {
		return noSpace(b.s.dir, err)
	}
	for i, dst := range b.dst {
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return noSpace(b.s.dir, err)
		}
		if err := os.Rename(b.tmp[i], dst); err != nil {
			return noSpace(b.s.dir, err)
		}
	}
	b.tmp, b.dst = nil, nil
	return nil
}

// Abort drops what the batch has not committed.
func (b *Batch) Abort() {
	for _, t := range b.tmp {
		os.Remove(t)
	}
	b.tmp, b.dst = nil, nil
}

// PutCompressed stores a piece that arrives zstd-compressed, checking it.
func (s *Store) PutCompressed(d Digest, z []byte) error {
	data, err := s.pdec.DecodeAll(z, nil)
	if err != nil {
		return fmt.Errorf("piece %s: bad compression: %v: %w", d, err, ErrCorrupt)
	}
	if Sum(data) != d {
		return fmt.Errorf("piece %s: %w", d, ErrCorrupt)
	}
	if s.Has(d) {
		return nil
	}
	return s.write(s.piecePath(d), z)
}

// Get returns a piece's bytes, verified. A missing piece is release.ErrNotFound;
// a corrupt one is removed and reported as ErrCorrupt.
func (s *Store) Get(d Digest) ([]byte, error) {
	z, err := s.GetCompressed(d)
	if err != nil {
		return nil, err
	}
	data, err := s.pdec.DecodeAll(z, nil)
	if err != nil || Sum(data) != d {
		_ = os.Remove(s.piecePath(d))
		return nil, fmt.Errorf("piece %s is damaged on disk (removed; it will be fetched again): %w", d, ErrCorrupt)
	}
	return data, nil
}

// GetCompressed returns a piece as stored (zstd), unverified: the receiver
// verifies.
func (s *Store) GetCompressed(d Digest) ([]byte, error) {
	z, err := os.ReadFile(s.piecePath(d))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("piece %s: %w", d, release.ErrNotFound)
	}
	return z, err
}

func (s *Store) blobPath(d Digest) string { return filepath.Join(s.dir, "blobs", d.Hex()) }

// PutBlob keeps a blob whole, after checking that its bytes are what d
// names (durably: temp file, fsync, rename).
func (s *Store) PutBlob(d Digest, r io.Reader) error {
	f, err := os.CreateTemp(filepath.Join(s.dir, "tmp"), "blob-*")
	if err != nil {
		return noSpace(s.dir, err)
	}
	defer os.Remove(f.Name())
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(f, h), r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return noSpace(s.dir, err)
	}
	if !bytes.Equal(h.Sum(nil), d[:]) {
		return fmt.Errorf("blob %s: %w", d, ErrCorrupt)
	}
	return noSpace(s.dir, os.Rename(f.Name(), s.blobPath(d)))
}

// OpenBlob opens a blob kept whole; release.ErrNotFound if there is none.
// Its bytes were checked when it was kept.
func (s *Store) OpenBlob(d Digest) (io.ReadCloser, error) {
	f, err := os.Open(s.blobPath(d))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("blob %s: %w", d, release.ErrNotFound)
	}
	return f, err
}

// BlobSize is the size of a blob kept whole; release.ErrNotFound if there
// is none.
func (s *Store) BlobSize(d Digest) (int64, error) {
	fi, err := os.Stat(s.blobPath(d))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("blob %s: %w", d, release.ErrNotFound)
	}
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// PutIndex stores a layer index.
func (s *Store) PutIndex(ix *Index) error {
	return s.write(s.layerPath(ix.DiffID), s.enc.EncodeAll(ix.Encode(), nil))
}

// Index returns a stored layer index.
func (s *Store) Index(diffID Digest) (*Index, error) {
	z, err := os.ReadFile(s.layerPath(diffID))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("layer %s: %w", diffID, release.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	b, err := s.dec.DecodeAll(z, nil)
	if err != nil {
		return nil, fmt.Errorf("layer index %s: %v: %w", diffID, err, ErrCorrupt)
	}
	ix, err := DecodeIndex(b)
	if err != nil {
		return nil, err
	}
	if ix.DiffID != diffID {
		return nil, fmt.Errorf("layer index %s names layer %s: %w", diffID, ix.DiffID, ErrCorrupt)
	}
	return ix, nil
}

// Layers lists the diffIDs of the stored layer indexes.
func (s *Store) Layers() ([]Digest, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, "layers"))
	if err != nil {
		return nil, err
	}
	var out []Digest
	for _, e := range ents {
		if d, err := ParseDigest(e.Name()); err == nil {
			out = append(out, d)
		}
	}
	return out, nil
}

// Missing returns the layer's pieces the store lacks, without repeats.
func (s *Store) Missing(ix *Index) []Piece {
	seen := map[Digest]bool{}
	var out []Piece
	for _, p := range ix.Pieces() {
		if seen[p.Digest] {
			continue
		}
		seen[p.Digest] = true
		if !s.Has(p.Digest) {
			out = append(out, p)
		}
	}
	return out
}

// GCStats says what a collection removed and kept.
type GCStats struct {
	LayersRemoved, PiecesRemoved int
	BytesFreed, BytesKept        int64
}

// GCPolicy says what a collection keeps.
type GCPolicy struct {
	// Keep: layers whose indexes and pieces stay.
	Keep map[Digest]bool
	// Loaded: layers the engine holds. Their indexes and pieces, unless
	// kept, go whatever their age: no transfer is waiting to load them.
	Loaded map[Digest]bool
	// NotBefore: other indexes, and pieces no index uses, written after it
	// stay; they may belong to a transfer still under way.
	NotBefore time.Time
}

// GC removes the layer indexes the policy does not keep, and the pieces no
// kept index uses (see GCPolicy for what a transfer under way keeps).
func (s *Store) GC(p GCPolicy) (GCStats, error) {
	var st GCStats
	layers, err := s.Layers()
	if err != nil {
		return st, err
	}
	used := map[Digest]bool{}    // by a kept index
	dropped := map[Digest]bool{} // by a removed index
	for _, l := range layers {
		ix, err := s.Index(l)
		if err != nil {
			return st, fmt.Errorf("gc: %w (nothing removed)", err)
		}
		fresh := false
		if fi, err := os.Stat(s.layerPath(l)); err == nil && fi.ModTime().After(p.NotBefore) && !p.Loaded[l] {
			fresh = true // a transfer may be about to load it
		}
		if p.Keep[l] || fresh {
			for _, pc := range ix.Pieces() {
				used[pc.Digest] = true
			}
			continue
		}
		if err := os.Remove(s.layerPath(l)); err != nil {
			return st, err
		}
		st.LayersRemoved++
		for _, pc := range ix.Pieces() {
			dropped[pc.Digest] = true
		}
	}
	err = filepath.WalkDir(filepath.Join(s.dir, "pieces"), func(path string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		d, perr := ParseDigest(de.Name())
		info, ierr := de.Info()
		if perr != nil || ierr != nil {
			return nil
		}
		if used[d] || (!dropped[d] && info.ModTime().After(p.NotBefore)) {
			st.BytesKept += info.Size()
			return nil
		}
		if err := os.Remove(path); err != nil {
			return err
		}
		st.PiecesRemoved++
		st.BytesFreed += info.Size()
		return nil
	})
	return st, err
}

func (s *Store) write(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return noSpace(s.dir, err)
	}
	f, err := os.CreateTemp(filepath.Join(s.dir, "tmp"), "put-*")
	if err != nil {
		return noSpace(s.dir, err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return noSpace(s.dir, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return noSpace(s.dir, err)
	}
	if err := f.Close(); err != nil {
		return noSpace(s.dir, err)
	}
	return noSpace(s.dir, os.Rename(f.Name(), path))
}

// noSpace marks a write that failed for want of space (or of inodes, on a
// full disk) as release.ErrNoSpace, which the API answers as such instead of
// an internal error (it was HTTP 500 when a directory could not be created).
func noSpace(dir string, err error) error {
	if err != nil && (errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)) {
		return fmt.Errorf("content store %s: %v: %w", dir, err, release.ErrNoSpace)
	}
	return err
}

// commitEvery is how many bytes of pieces SplitInto writes between flushes:
// a sender may send only committed pieces (a receiver asks for them after
// a crash), so this is what it can lag behind the read.
const commitEvery = 8 << 20

// SplitInto reads a layer into the store: its pieces, flushed to disk every
// few MiB, then its index. Each time pieces are flushed, files (if not nil)
// gets the files whose pieces are now all in the store, in layer order, so
// that they can be sent on while the rest of the layer is read.
func (s *Store) SplitInto(r io.Reader, files func([]File) error) (*Index, error) {
	b := s.Batch()
	defer b.Abort()
	var done []File
	var size int64
	commit := func() error {
		if err := b.Commit(); err != nil {
			return err
		}
		b = s.Batch()
		size = 0
		if len(done) == 0 || files == nil {
			done = done[:0]
			return nil
		}
		out := done
		done = nil
		return files(out)
	}
	put := func(d Digest, data []byte) error {
		size += int64(len(data))
		return b.Put(d, data)
	}
	ix, err := SplitFiles(r, put, func(f File) error {
		done = append(done, f)
		if size >= commitEvery {
			return commit()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := commit(); err != nil {
		return nil, err
	}
	return ix, s.PutIndex(ix)
}
