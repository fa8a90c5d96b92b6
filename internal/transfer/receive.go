package transfer

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"

	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/delta"
	"github.com/berth-robotics/berth/internal/localapi"
	"github.com/berth-robotics/berth/internal/release"
)

// Receiver is the receiving end of the exchange, over a content store: what
// a device runs behind its local API, and what a fleet server runs for the
// uploads it takes. Everything it is given is untrusted: every piece is
// checked against its digest, every size bounded.
type Receiver struct {
	Store *content.Store
}

// Limits of what a receiver rebuilds.
const (
	maxDeltaFile = 256 << 20 // the old and new file a delta frame may name
	maxIndex     = 512 << 20 // a layer index rebuilt from a delta
)

// Missing answers which of the digests in q (concatenated, 32 bytes each)
// the store lacks, in the same form.
func (r Receiver) Missing(q []byte) ([]byte, error) {
	if len(q)%32 != 0 || len(q) > MaxBatch {
		return nil, fmt.Errorf("missing: want concatenated 32-byte digests: %w", release.ErrInvalid)
	}
	var out []byte
	for i := 0; i < len(q); i += 32 {
		var d content.Digest
		copy(d[:], q[i:i+32])
		if !r.Store.Has(d) {
			out = append(out, d[:]...)
		}
	}
	return out, nil
}

// PutBatch stores the pieces of one batch, durably before it answers (one
// flush for the batch). Pieces stored before a bad one stay stored; the
// error says so.
func (r Receiver) PutBatch(body []byte) (localapi.PutPiecesResponse, error) {
	return r.PutBatchFrom(bytes.NewReader(body))
}

// PutBatchFrom is PutBatch reading the batch as it arrives: when the stream
// breaks off (the link was cut), the whole frames that came before are
// stored, so the next run sends only the rest instead of the whole batch.
func (r Receiver) PutBatchFrom(body io.Reader) (localapi.PutPiecesResponse, error) {
	var resp localapi.PutPiecesResponse
	b := r.Store.Batch()
	bad := func(err error) error {
		return fmt.Errorf("%v; %d pieces of this batch were stored, the rest will be asked for again: %w", err, resp.Stored, release.ErrInvalid)
	}
	err := DecodeFramesFrom(body, func(f Frame) error {
		if f.Kind == KindDelta {
			n, err := r.putDelta(b, f)
			if err != nil {
				return bad(err)
			}
			resp.Stored += n
			resp.Bytes += int64(len(f.Data))
			return nil
		}
		put := b.PutCompressed
		if f.Kind == KindRaw {
			put = b.Put
		}
		if err := put(f.Digest, f.Data); err != nil {
			if errors.Is(err, content.ErrCorrupt) {
				return bad(err)
			}
			return err
		}
		resp.Stored++
		resp.Bytes += int64(len(f.Data))
		return nil
	})
	if cerr := b.Commit(); err == nil {
		err = cerr
	}
	return resp, err
}

// putDelta rebuilds a changed file from its old version (pieces the store
// holds) and a binary delta, and adds the new file's pieces to b.
func (r Receiver) putDelta(b *content.Batch, f Frame) (int, error) {
	var base []byte
	for _, p := range f.Base {
		data, err := r.Store.Get(p.Digest)
		if err != nil {
			return 0, fmt.Errorf("delta base: %w", err)
		}
		if base = append(base, data...); len(base) > maxDeltaFile {
			return 0, fmt.Errorf("delta base larger than %d MiB", maxDeltaFile>>20)
		}
	}
	var total int
	for _, p := range f.Targets {
		total += int(p.Size)
	}
	if total > maxDeltaFile {
		return 0, fmt.Errorf("delta target larger than %d MiB", maxDeltaFile>>20)
	}
	out, err := delta.Patch(base, f.Data, total)
	if err != nil {
		return 0, err
	}
	if len(out) != total {
		return 0, fmt.Errorf("delta produced %d bytes, the pieces add up to %d: %w", len(out), total, content.ErrCorrupt)
	}
	for _, p := range f.Targets {
		if err := b.Put(p.Digest, out[:p.Size]); err != nil {
			return 0, err
		}
		out = out[p.Size:]
	}
	return len(f.Targets), nil
}

// PutIndex stores the index of layer diffID once all its pieces are in the
// store (release.ErrConflict otherwise). body is the encoded index
// zstd-compressed, or, with base (a diffID whose index the store holds),
// EncodeIndexDelta's output against that index.
func (r Receiver) PutIndex(diffID string, body []byte, base string) error {
	ix, err := decodeIndex(r.Store, diffID, body, base)
	if err != nil {
		return err
	}
	if m := r.Store.Missing(ix); len(m) > 0 {
		return fmt.Errorf("layer %s: %d of its pieces have not arrived; send them first: %w", ix.DiffID, len(m), release.ErrConflict)
	}
	return r.Store.PutIndex(ix)
}

// decodeIndex decodes an index as encodeIndex made it, checking it names
// diffID.
func decodeIndex(store *content.Store, diffID string, body []byte, base string) (*content.Index, error) {
	want, err := content.ParseDigest(diffID)
	if err != nil {
		return nil, err
	}
	var raw []byte
	if base != "" {
		bd, err := content.ParseDigest(base)
		if err != nil {
			return nil, err
		}
		b, err := store.Index(bd)
		if err != nil {
			return nil, fmt.Errorf("index %s: its delta base: %w", want, err)
		}
		if raw, err = DecodeIndexDelta(b.Encode(), body, maxIndex); err != nil {
			return nil, fmt.Errorf("index %s: %w", want, err)
		}
	} else {
		dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxIndex))
		if err != nil {
			return nil, err
		}
		defer dec.Close()
		if raw, err = dec.DecodeAll(body, nil); err != nil {
			return nil, fmt.Errorf("index %s: %v: %w", want, err, release.ErrInvalid)
		}
	}
	ix, err := content.DecodeIndex(raw)
	if err != nil {
		return nil, err
	}
	if ix.DiffID != want {
		return nil, fmt.Errorf("index names layer %s, not %s: %w", ix.DiffID, want, release.ErrInvalid)
	}
	return ix, nil
}
