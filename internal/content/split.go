package content

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/crc64"
	"io"
	"sync/atomic"

	"github.com/vbatts/tar-split/tar/asm"
	"github.com/vbatts/tar-split/tar/storage"

	"github.com/berth-robotics/berth/internal/release"
)

// PutFunc receives each piece's bytes as a layer is split. The slice is only
// valid during the call.
type PutFunc func(d Digest, data []byte) error

// Split reads a layer tar and returns its index, calling put for each piece
// of file content. The diffID is the SHA-256 of the whole stream.
func Split(r io.Reader, put PutFunc) (*Index, error) {
	return SplitFiles(r, put, nil)
}

// File is one file of a layer with content, as it was split.
type File struct {
	Name   string
	Size   int64
	Pieces []Piece
}

// SplitFiles is Split that also hands each file with content to file, once
// put has had all its pieces: a sender can send a layer's first files while
// the rest is still being read.
func SplitFiles(r io.Reader, put PutFunc, file func(File) error) (*Index, error) {
	h := sha256.New()
	ix := &Index{}
	in := &countingReader{r: r}
	sp := &splitter{ix: ix, put: put, in: in, file: file}
	tee := io.TeeReader(in, h)
	out, err := asm.NewInputTarStream(tee, sp, sp)
	if err != nil {
		return nil, fmt.Errorf("split layer: %w", err)
	}
	// The stream returned passes the tar through; drain it (and any padding
	// after the end blocks, which tar-split records as a segment).
	if _, err := io.Copy(io.Discard, out); err != nil {
		if errors.Is(err, release.ErrInvalid) {
			return nil, fmt.Errorf("split layer: %w", err)
		}
		return nil, fmt.Errorf("split layer: not a valid tar: %v: %w", err, release.ErrInvalid)
	}
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return nil, fmt.Errorf("split layer: %w", err)
	}
	// Bytes tar-split read but did not record (after a truncated entry)
	// would make a layer that cannot be rebuilt: refuse it here, not on the
	// device after the transfer.
	if n := in.n.Load(); n != ix.Size {
		return nil, fmt.Errorf("split layer: %d of its %d bytes are not part of its tar stream: %w", n-ix.Size, n, release.ErrInvalid)
	}
	copy(ix.DiffID[:], h.Sum(nil))
	return ix, nil
}

// splitter is both tar-split's Packer (the skeleton) and FilePutter (the
// contents). tar-split calls Put for a file's content right before it adds
// that file's entry, so the pieces of the last Put belong to the next entry.
type splitter struct {
	ix      *Index
	put     PutFunc
	pending []Piece
	buf     []byte
	in      *countingReader
	files   int64 // content bytes of the files before this one
	file    func(File) error
}

// countingReader counts the bytes of the layer read so far.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (s *splitter) AddEntry(e storage.Entry) (int, error) {
	switch e.Type {
	case storage.SegmentType:
		if len(e.Payload) == 0 {
			return len(s.ix.Entries), nil
		}
		raw := append([]byte(nil), e.Payload...)
		s.ix.Entries = append(s.ix.Entries, Entry{Raw: raw})
		s.ix.Size += int64(len(raw))
	case storage.FileType:
		entry := Entry{Name: e.GetName(), Size: e.Size, CRC: append([]byte(nil), e.Payload...)}
		if e.Size > 0 {
			entry.Pieces, s.pending = s.pending, nil
			if s.file != nil {
				if err := s.file(File{Name: entry.Name, Size: entry.Size, Pieces: entry.Pieces}); err != nil {
					return 0, err
				}
			}
		}
		s.ix.Entries = append(s.ix.Entries, entry)
		s.ix.Size += e.Size
	}
	return len(s.ix.Entries) - 1, nil
}

func (s *splitter) Put(name string, r io.Reader) (int64, []byte, error) {
	crc := crc64.New(storage.CRCTable)
	var total int64
	var pieces []Piece
	emit := func(b []byte) error {
		d := Sum(b)
		pieces = append(pieces, Piece{Digest: d, Size: uint32(len(b))})
		return s.put(d, b)
	}
	// Read in windows of 2×maxChunk and cut content-defined chunks from the
	// front, so a file of any size streams through bounded memory.
	if cap(s.buf) < 2*maxChunk {
		s.buf = make([]byte, 0, 2*maxChunk)
	}
	buf := s.buf[:0]
	eof := false
	for {
		for !eof && len(buf) < cap(buf) {
			n, err := r.Read(buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+n]
			if err == io.EOF {
				eof = true
			} else if err != nil {
				return 0, nil, err
			}
			// File contents come out of the layer's bytes: more content
			// than bytes read is a sparse entry, whose holes the tar
			// reader expands (a few hundred bytes claiming a petabyte of
			// zeros). Docker never writes those; refuse them.
			if s.files+total+int64(len(buf)) > s.in.n.Load() {
				return 0, nil, fmt.Errorf("%s: its content is larger than the layer's bytes (a sparse file? berth does not carry sparse tar entries): %w", name, release.ErrInvalid)
			}
		}
		if len(buf) == 0 {
			break
		}
		if eof && total == 0 && len(buf) <= ChunkThreshold {
			crc.Write(buf)
			total += int64(len(buf))
			if err := emit(buf); err != nil {
				return 0, nil, err
			}
			break
		}
		n := cut(buf)
		if !eof && n == len(buf) && n < maxChunk {
			continue // need more bytes to find the cut
		}
		crc.Write(buf[:n])
		total += int64(n)
		if err := emit(buf[:n]); err != nil {
			return 0, nil, err
		}
		buf = buf[:copy(buf, buf[n:])]
	}
	s.pending = pieces
	s.files += total
	return total, crc.Sum(nil), nil
}

// GetFunc returns a piece's bytes.
type GetFunc func(d Digest) ([]byte, error)

// Rebuild writes the layer described by ix to w, byte for byte, and checks
// the result against the diffID.
func Rebuild(ix *Index, get GetFunc, w io.Writer) error {
	h := sha256.New()
	mw := io.MultiWriter(w, h)
	var n int64
	for i, e := range ix.Entries {
		if !e.IsFile() {
			if _, err := mw.Write(e.Raw); err != nil {
				return err
			}
			n += int64(len(e.Raw))
			continue
		}
		crc := crc64.New(storage.CRCTable)
		for _, p := range e.Pieces {
			b, err := get(p.Digest)
			if err != nil {
				return fmt.Errorf("rebuild layer %s: entry %d (%s): %w", ix.DiffID, i, e.Name, err)
			}
			if len(b) != int(p.Size) {
				return fmt.Errorf("rebuild layer %s: piece %s has %d bytes, want %d: %w", ix.DiffID, p.Digest, len(b), p.Size, ErrCorrupt)
			}
			crc.Write(b)
			if _, err := mw.Write(b); err != nil {
				return err
			}
			n += int64(len(b))
		}
		if e.Size > 0 && string(crc.Sum(nil)) != string(e.CRC) {
			return fmt.Errorf("rebuild layer %s: %s: content checksum mismatch: %w", ix.DiffID, e.Name, ErrCorrupt)
		}
	}
	var got Digest
	copy(got[:], h.Sum(nil))
	if got != ix.DiffID || n != ix.Size {
		return fmt.Errorf("rebuild layer: got %s (%d bytes), want %s (%d bytes): %w", got, n, ix.DiffID, ix.Size, ErrCorrupt)
	}
	return nil
}
