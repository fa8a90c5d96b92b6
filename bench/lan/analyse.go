package main

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
)

type imageStat struct {
	Scenario string       `json:"scenario"`
	Tag      string       `json:"tag"`
	ID       string       `json:"id"`
	DiffIDs  []string     `json:"diff_ids"`
	Layers   []*layerStat `json:"layers"`
	TarBytes int64        `json:"tar_bytes"` // the uncompressed layers
	// Change is what really changed against the previous scenario's image.
	Change *change `json:"change"`
	// docker save of the image from the host engine, read as fast as it comes:
	// time to the first byte (the engine exports the image into a temporary
	// directory before it streams) and to the last.
	SaveFirstByteSeconds float64 `json:"save_first_byte_seconds"`
	SaveSeconds          float64 `json:"save_seconds"`
}

type layerStat struct {
	DiffID       string `json:"diff_id"`
	TarBytes     int64  `json:"tar_bytes"`
	Entries      int    `json:"entries"`
	Files        int    `json:"files"` // regular files with content
	ContentBytes int64  `json:"content_bytes"`
	HeaderBytes  int64  `json:"header_bytes"` // headers (PAX and GNU long-name records included), padding, end blocks
}

// change is the lower bound the targets refer to: the file contents the
// previous image lacks and the tar headers it lacks, each zstd-compressed
// (level "default", as berth's content store; contents file by file,
// headers as one stream).
type change struct {
	Against            string `json:"against"`
	NewFiles           int    `json:"new_files"`
	NewContentBytes    int64  `json:"new_content_bytes"`
	NewContentZstd     int64  `json:"new_content_zstd"`
	ChangedHeaders     int    `json:"changed_headers"`
	ChangedHeaderBytes int64  `json:"changed_header_bytes"`
	ChangedHeaderZstd  int64  `json:"changed_header_zstd"`
	Total              int64  `json:"zstd_total"` // NewContentZstd + ChangedHeaderZstd
}

type hashSet map[[32]byte]bool

// analyse reads every scenario image (docker save) and works out what
// changed against the one before.
func analyse(ctx context.Context, im *images) error {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return err
	}
	defer enc.Close()
	prevH, prevC := hashSet{}, hashSet{}
	for k, st := range im.stats {
		ch := &change{Against: "nothing"}
		if k > 0 {
			ch.Against = im.tags[k-1]
		}
		curH, curC := hashSet{}, hashSet{}
		var headers []byte
		seenNew := hashSet{}
		onHeader := func(rec []byte) {
			h := sha256.Sum256(rec)
			curH[h] = true
			if !prevH[h] && !seenNew[h] {
				seenNew[h] = true
				ch.ChangedHeaders++
				ch.ChangedHeaderBytes += int64(len(rec))
				headers = append(headers, rec...)
			}
		}
		onFile := func(data []byte) {
			h := sha256.Sum256(data)
			curC[h] = true
			if !prevC[h] && !seenNew[h] {
				seenNew[h] = true
				ch.NewFiles++
				ch.NewContentBytes += int64(len(data))
				ch.NewContentZstd += int64(len(enc.EncodeAll(data, nil)))
			}
		}
		layers, ttfb, total, err := scanImage(ctx, im.tags[k], onHeader, onFile)
		if err != nil {
			return fmt.Errorf("analyse %s: %w", im.tags[k], err)
		}
		st.Layers = layers
		st.SaveFirstByteSeconds, st.SaveSeconds = ttfb, total
		st.TarBytes = 0
		for i, l := range layers {
			st.TarBytes += l.TarBytes
			if i < len(st.DiffIDs) && l.DiffID != st.DiffIDs[i] {
				return fmt.Errorf("analyse %s: layer %d hashes to %s, the config says %s", im.tags[k], i+1, l.DiffID, st.DiffIDs[i])
			}
		}
		ch.ChangedHeaderZstd = int64(len(enc.EncodeAll(headers, nil)))
		ch.Total = ch.NewContentZstd + ch.ChangedHeaderZstd
		st.Change = ch
		logf("%s: docker save: first byte after %.1fs, all in %.1fs (while analysing)", im.tags[k], ttfb, total)
		logf("%s: %s in %d layers (%s); against %s: %d new files (%s, %s zstd), %d changed headers (%s, %s zstd)",
			im.tags[k], mb(st.TarBytes), len(layers), layerSizes(layers), ch.Against, ch.NewFiles, mb(ch.NewContentBytes), kb(ch.NewContentZstd),
			ch.ChangedHeaders, kb(ch.ChangedHeaderBytes), kb(ch.ChangedHeaderZstd))
		prevH, prevC = curH, curC
	}
	return nil
}

func layerSizes(ls []*layerStat) string {
	var s []string
	for _, l := range ls {
		s = append(s, mb(l.TarBytes))
	}
	return strings.Join(s, " + ")
}

// scanImage reads `docker save TAG` and scans its layers in manifest order.
func scanImage(ctx context.Context, tag string, onHeader, onFile func([]byte)) (layers []*layerStat, ttfb, total float64, err error) {
	cmd := command(ctx, nil, "docker", "save", tag)
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, 0, 0, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, 0, 0, err
	}
	out := bufio.NewReaderSize(pipe, 1<<20)
	if _, err := out.Peek(1); err == nil {
		ttfb = time.Since(t0).Seconds()
	}
	byPath := map[string]*layerStat{}
	var manifest []struct{ Layers []string }
	tr := tar.NewReader(out)
	var scanErr error
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			scanErr = err
			break
		}
		switch {
		case strings.HasSuffix(h.Name, "layer.tar"):
			ls, err := scanLayer(tr, onHeader, onFile)
			if err != nil {
				scanErr = fmt.Errorf("%s: %w", h.Name, err)
			}
			byPath[h.Name] = ls
		case h.Name == "manifest.json":
			if err := json.NewDecoder(tr).Decode(&manifest); err != nil {
				scanErr = err
			}
		}
		if scanErr != nil {
			break
		}
	}
	_, _ = io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		return nil, 0, 0, fmt.Errorf("docker save: %w: %s", err, stderr.String())
	}
	total = time.Since(t0).Seconds()
	if scanErr != nil {
		return nil, 0, 0, scanErr
	}
	if len(manifest) != 1 {
		return nil, 0, 0, errors.New("docker save: no manifest")
	}
	for _, p := range manifest[0].Layers {
		ls := byPath[p]
		if ls == nil {
			return nil, 0, 0, fmt.Errorf("docker save: layer %s missing", p)
		}
		layers = append(layers, ls)
	}
	return layers, ttfb, total, nil
}

type counter struct{ n int64 }

func (c *counter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// scanLayer walks a layer tar block by block: onHeader gets each entry's
// header record as it is on the wire (with its PAX or GNU long-name records),
// onFile each regular file's contents.
func scanLayer(r io.Reader, onHeader, onFile func([]byte)) (*layerStat, error) {
	h := sha256.New()
	var n counter
	br := bufio.NewReaderSize(io.TeeReader(r, io.MultiWriter(h, &n)), 1<<20)
	st := &layerStat{}
	block := make([]byte, 512)
	var pending []byte
	for {
		if _, err := io.ReadFull(br, block); err == io.EOF {
			break
		} else if err != nil {
			return nil, err
		}
		if allZero(block) { // end blocks and padding
			rest, err := io.Copy(io.Discard, br)
			if err != nil {
				return nil, err
			}
			st.HeaderBytes += 512 + rest
			break
		}
		size, err := tarNumber(block[124:136])
		if err != nil {
			return nil, err
		}
		padded := (size + 511) &^ 511
		switch block[156] {
		case 'x', 'g', 'L', 'K': // records that belong to the next header
			data := make([]byte, padded)
			if _, err := io.ReadFull(br, data); err != nil {
				return nil, err
			}
			pending = append(append(pending, block...), data...)
			continue
		}
		rec := append(append([]byte{}, pending...), block...)
		pending = nil
		st.Entries++
		st.HeaderBytes += int64(len(rec))
		onHeader(rec)
		if size == 0 {
			continue
		}
		data := make([]byte, padded)
		if _, err := io.ReadFull(br, data); err != nil {
			return nil, err
		}
		st.HeaderBytes += padded - size
		if t := block[156]; t == '0' || t == 0 || t == '7' {
			st.Files++
			st.ContentBytes += size
			onFile(data[:size])
		}
	}
	st.TarBytes = n.n
	st.DiffID = "sha256:" + hex.EncodeToString(h.Sum(nil))
	return st, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// tarNumber parses a tar numeric field: octal text, or base-256.
func tarNumber(f []byte) (int64, error) {
	if len(f) > 0 && f[0]&0x80 != 0 {
		var v int64
		for i, c := range f {
			if i == 0 {
				c &= 0x7f
			}
			v = v<<8 | int64(c)
		}
		return v, nil
	}
	s := strings.Trim(string(f), " \x00")
	var v int64
	for _, c := range s {
		if c < '0' || c > '7' {
			return 0, fmt.Errorf("bad tar number %q", f)
		}
		v = v*8 + int64(c-'0')
	}
	return v, nil
}

func mb(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }
func kb(n int64) string {
	if n >= 10e6 {
		return mb(n)
	}
	return fmt.Sprintf("%.1f KB", float64(n)/1e3)
}
