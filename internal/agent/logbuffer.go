package agent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/berth-robotics/berth/internal/serverapi"
)

// logBuffer keeps container log lines on disk, under <state-dir>/logs/,
// until the fleet server has them: segment files of JSON lines
// (NNNNNNNNNNNNNNNN.log, each up to segMax bytes), oldest first, and
// cursor.json, how far the server has them and how many lines were
// dropped since it last heard. The segments together stay under max
// bytes: past it the oldest segment goes, read or not, its unshipped lines
// counted as dropped. Lines are appended by the followers and read in
// order by the shipper; a restart goes on from the cursor (a new segment
// each start: a line cut short by a crash ends the old one).
type logBuffer struct {
	dir    string
	segMax int64
	max    int64

	mu    sync.Mutex
	segs  []logSegment // oldest first; the last is cur
	cur   *os.File
	read  logCursor
	since map[string]time.Time // per container, the newest line's time
	full  chan struct{}        // capacity 1: a batch is ready
}

type logSegment struct {
	n     int64
	size  int64
	lines int64
}

// logCursor is cursor.json.
type logCursor struct {
	Seg     int64                `json:"segment"`
	Off     int64                `json:"offset"`
	Dropped int64                `json:"dropped"`
	Since   map[string]time.Time `json:"since,omitempty"`
}

const (
	logSegmentMax = 1 << 20
	logBufferMax  = 16 << 20
)

func openLogBuffer(dir string, segMax, max int64) (*logBuffer, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("log buffer: %w", err)
	}
	b := &logBuffer{dir: dir, segMax: segMax, max: max, full: make(chan struct{}, 1)}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("log buffer: %w", err)
	}
	for _, e := range entries {
		num, ok := strings.CutSuffix(e.Name(), ".log")
		n, err := strconv.ParseInt(num, 10, 64)
		if !ok || err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("log buffer: %w", err)
		}
		b.segs = append(b.segs, logSegment{n: n, size: int64(len(data)), lines: int64(bytes.Count(data, []byte("\n")))})
	}
	sort.Slice(b.segs, func(i, j int) bool { return b.segs[i].n < b.segs[j].n })
	if err := readJSON(b.cursorPath(), &b.read); err != nil && !errors.Is(err, os.ErrNotExist) {
		b.read = logCursor{} // corrupt: read everything again
	}
	b.since = b.read.Since
	if b.since == nil {
		b.since = map[string]time.Time{}
	}
	if len(b.segs) > 0 && b.read.Seg < b.segs[0].n {
		b.read.Seg, b.read.Off = b.segs[0].n, 0
	}
	if err := b.rotate(); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *logBuffer) cursorPath() string { return filepath.Join(b.dir, "cursor.json") }

func (b *logBuffer) segPath(n int64) string {
	return filepath.Join(b.dir, fmt.Sprintf("%016d.log", n))
}

// rotate starts a new segment. Called with mu held (or before sharing).
func (b *logBuffer) rotate() error {
	if b.cur != nil {
		b.cur.Close()
	}
	n := int64(1)
	if len(b.segs) > 0 {
		n = b.segs[len(b.segs)-1].n + 1
	}
	f, err := os.OpenFile(b.segPath(n), os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("log buffer: %w", err)
	}
	b.cur = f
	b.segs = append(b.segs, logSegment{n: n})
	if len(b.segs) == 1 {
		b.read.Seg, b.read.Off = n, 0
	}
	return nil
}

// Close closes the segment being written.
func (b *logBuffer) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cur == nil {
		return nil
	}
	err := b.cur.Close()
	b.cur = nil
	return err
}

// append adds a line; past the bound, the oldest segment goes.
func (b *logBuffer) append(l serverapi.LogLine) error {
	if len(l.Text) > serverapi.MaxLogLine {
		l.Text = l.Text[:serverapi.MaxLogLine]
	}
	j, err := json.Marshal(l)
	if err != nil {
		return err
	}
	j = append(j, '\n')
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cur == nil {
		return fmt.Errorf("log buffer: closed")
	}
	last := &b.segs[len(b.segs)-1]
	if last.size > 0 && last.size+int64(len(j)) > b.segMax {
		if err := b.rotate(); err != nil {
			return err
		}
		last = &b.segs[len(b.segs)-1]
	}
	if _, err := b.cur.Write(j); err != nil {
		return fmt.Errorf("log buffer: %w", err)
	}
	last.size += int64(len(j))
	last.lines++
	if l.Time.After(b.since[l.Container]) {
		b.since[l.Container] = l.Time
	}
	b.trim()
	if b.unread() >= serverapi.MaxLogBatch {
		select {
		case b.full <- struct{}{}:
		default:
		}
	}
	return nil
}

// trim drops the oldest segments while the buffer is over its bound.
func (b *logBuffer) trim() {
	total := int64(0)
	for _, s := range b.segs {
		total += s.size
	}
	for total > b.max && len(b.segs) > 1 {
		s := b.segs[0]
		lost := s.lines
		if b.read.Seg == s.n {
			lost = s.lines - countLines(b.segPath(s.n), b.read.Off)
		} else if b.read.Seg > s.n {
			lost = 0 // shipped already
		}
		os.Remove(b.segPath(s.n))
		b.segs = b.segs[1:]
		total -= s.size
		b.read.Dropped += lost
		if b.read.Seg <= s.n {
			b.read.Seg, b.read.Off = b.segs[0].n, 0
		}
	}
}

// countLines counts the lines before off in a segment.
func countLines(path string, off int64) int64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	data, _ := io.ReadAll(io.LimitReader(f, off))
	return int64(bytes.Count(data, []byte("\n")))
}

// unread is how many bytes the server does not have yet. mu held.
func (b *logBuffer) unread() int64 {
	var n int64
	for _, s := range b.segs {
		switch {
		case s.n > b.read.Seg:
			n += s.size
		case s.n == b.read.Seg:
			n += s.size - b.read.Off
		}
	}
	return n
}

// peek returns the oldest unshipped lines, up to about max bytes of JSON,
// the cursor after them, and the lines dropped so far, for commit.
func (b *logBuffer) peek(max int) ([]serverapi.LogLine, logCursor, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	pos := b.read
	pos.Since = nil
	var lines []serverapi.LogLine
	size := 0
	for i := range b.segs {
		s := b.segs[i]
		if s.n < pos.Seg {
			continue
		}
		if s.n > pos.Seg {
			pos.Seg, pos.Off = s.n, 0
		}
		f, err := os.Open(b.segPath(s.n))
		if err != nil {
			return nil, pos, fmt.Errorf("log buffer: %w", err)
		}
		r := bufio.NewReader(io.NewSectionReader(f, pos.Off, s.size-pos.Off))
		for {
			raw, err := r.ReadBytes('\n')
			if err != nil {
				break // the end, or a line cut short by a crash: never completed
			}
			if size > 0 && size+len(raw) > max {
				f.Close()
				return lines, pos, nil
			}
			pos.Off += int64(len(raw))
			size += len(raw)
			var l serverapi.LogLine
			if json.Unmarshal(raw, &l) == nil {
				lines = append(lines, l)
			}
		}
		f.Close()
	}
	return lines, pos, nil
}

// commit records that the server has everything before pos, and the
// dropped count pos carried: shipped segments go.
func (b *logBuffer) commit(pos logCursor) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if pos.Seg < b.read.Seg || (pos.Seg == b.read.Seg && pos.Off < b.read.Off) {
		// Trimmed under us: what was shipped is gone anyway.
		b.read.Dropped = max(0, b.read.Dropped-pos.Dropped)
		return b.saveLocked()
	}
	b.read.Seg, b.read.Off = pos.Seg, pos.Off
	b.read.Dropped -= pos.Dropped
	for len(b.segs) > 1 && b.segs[0].n < b.read.Seg {
		os.Remove(b.segPath(b.segs[0].n))
		b.segs = b.segs[1:]
	}
	return b.saveLocked()
}

// save writes the cursor and the followers' positions.
func (b *logBuffer) save() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.saveLocked()
}

func (b *logBuffer) saveLocked() error {
	c := b.read
	c.Since = b.since
	if err := writeJSON(b.cursorPath(), c); err != nil {
		return fmt.Errorf("log buffer: %w", err)
	}
	return nil
}

// sinceOf is the time of the newest line buffered from a container.
func (b *logBuffer) sinceOf(container string) time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.since[container]
}

// forget drops the positions of containers no longer followed.
func (b *logBuffer) forget(keep map[string]bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for c := range b.since {
		if !keep[c] {
			delete(b.since, c)
		}
	}
}
