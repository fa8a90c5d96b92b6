package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/store"
)

// Devices ship their containers' logs in batches (POST /v1/device/logs);
// the server keeps the newest Options.LogsKept lines of each device and
// serves them to viewers, following new ones on request. Followers on this
// replica are woken by an in-process notifier: a follower on another
// replica sees a device's new lines within a keep-alive interval.

const (
	maxLogBody      = 4 << 20 // a batch of serverapi.MaxLogBatch bytes of text, escaped
	maxLogLines     = 10000   // lines in one batch
	defaultLogsKept = 10000
	logsPage        = 1000
	followKeepAlive = 15 * time.Second
)

// logNotifier wakes the followers of a device's logs when lines arrive.
type logNotifier struct {
	mu      sync.Mutex
	waiters map[string]chan struct{} // closed on news, then replaced
	closed  chan struct{}
	once    sync.Once
}

func newLogNotifier() *logNotifier {
	return &logNotifier{waiters: map[string]chan struct{}{}, closed: make(chan struct{})}
}

// wait returns a channel closed at the device's next lines.
func (n *logNotifier) wait(device string) <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, ok := n.waiters[device]
	if !ok {
		c = make(chan struct{})
		n.waiters[device] = c
	}
	return c
}

func (n *logNotifier) notify(device string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if c, ok := n.waiters[device]; ok {
		close(c)
		delete(n.waiters, device)
	}
}

// close ends every follow (the server is shutting down).
func (n *logNotifier) close() { n.once.Do(func() { close(n.closed) }) }

// shipLogs answers POST /v1/device/logs: a batch of the device's own lines.
func (s *Server) shipLogs(w http.ResponseWriter, r *http.Request, p principal) error {
	d := *p.device
	var b serverapi.LogBatch
	if err := decodeLimit(w, r, &b, false, maxLogBody); err != nil {
		return err
	}
	if len(b.Lines) > maxLogLines {
		return fmt.Errorf("%d lines in one batch; send at most %d: %w", len(b.Lines), maxLogLines, release.ErrInvalid)
	}
	now := s.now().UTC()
	lines := make([]store.LogLine, 0, len(b.Lines)+1)
	if b.Dropped > 0 {
		lines = append(lines, store.LogLine{Time: now, Stream: "berth",
			Text: fmt.Sprintf("berth: the device dropped %d log lines, its buffer full while the server was unreachable", b.Dropped)})
	}
	for i, l := range b.Lines {
		agent := l.Stream == serverapi.LogStreamAgent // the agent's own events: the app may be none
		if (!release.ValidName(l.App) && !(agent && l.App == "")) || (l.Service != "" && !release.ValidName(l.Service)) {
			return fmt.Errorf("line %d: app %q, service %q: use lower-case letters, digits, '-' and '_'; nothing was stored: %w", i, l.App, l.Service, release.ErrInvalid)
		}
		if l.Stream != "stdout" && l.Stream != "stderr" && !agent {
			return fmt.Errorf("line %d: stream %q: want stdout, stderr or %s; nothing was stored: %w", i, l.Stream, serverapi.LogStreamAgent, release.ErrInvalid)
		}
		if len(l.Container) > 128 {
			return fmt.Errorf("line %d: container ID over 128 bytes; nothing was stored: %w", i, release.ErrInvalid)
		}
		t := l.Time.UTC()
		if t.IsZero() {
			t = now
		}
		lines = append(lines, store.LogLine{App: l.App, Service: l.Service, Container: cleanText(l.Container), Time: t, Stream: l.Stream, Text: cleanText(l.Text)})
	}
	s.touch(r.Context(), d.ID)
	if len(lines) > 0 {
		if err := s.st.AppendLogs(r.Context(), d.ID, lines, s.opts.LogsKept); err != nil {
			return err
		}
		s.logs.notify(d.ID)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// cleanText makes a line storable: at most serverapi.MaxLogLine bytes of
// UTF-8 without NUL.
func cleanText(s string) string {
	if len(s) > serverapi.MaxLogLine {
		s = s[:serverapi.MaxLogLine]
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// deviceLogs answers GET /v1/devices/{device}/logs: the newest lines, as
// NDJSON, oldest first; with follow=true, then the new ones as they come
// until the client leaves (an empty line is a keep-alive).
func (s *Server) deviceLogs(w http.ResponseWriter, r *http.Request, p principal) error {
	ctx := r.Context()
	d, err := s.st.Device(ctx, r.PathValue("device"))
	if err != nil {
		return err
	}
	q := r.URL.Query()
	f := store.LogFilter{DeviceID: d.ID, App: q.Get("app"), Service: q.Get("service")}
	if v := q.Get("since"); v != "" {
		if f.Since, err = parseSince(v, s.now()); err != nil {
			return err
		}
	}
	if f.Limit, err = queryInt(r, "limit", 100, logsPage); err != nil {
		return err
	}
	if f.Limit == 0 {
		f.Limit = 100
	}
	follow := q.Get("follow") == "true"
	var wake <-chan struct{}
	if follow {
		wake = s.logs.wait(d.ID) // before the first read: nothing falls between
	}
	ls, err := s.st.Logs(ctx, f)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	write := func(ls []store.LogLine) bool {
		for _, l := range ls {
			if enc.Encode(logView(l)) != nil {
				return false
			}
			f.After = l.ID
		}
		return rc.Flush() == nil
	}
	if !write(ls) || !follow {
		return nil
	}
	if f.After == 0 {
		f.After = -1 // read on from the start
	}
	f.Since, f.Limit = time.Time{}, logsPage
	keepAlive := time.NewTicker(followKeepAlive)
	defer keepAlive.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.logs.closed:
			return nil
		case <-keepAlive.C:
			if _, err := w.Write([]byte("\n")); err != nil || rc.Flush() != nil {
				return nil
			}
		case <-wake:
		}
		wake = s.logs.wait(d.ID)
		for {
			ls, err := s.st.Logs(ctx, f)
			if err != nil {
				if ctx.Err() == nil {
					s.log.Warn("follow logs", "device", d.ID, "error", err)
				}
				return nil // the status is sent; the client sees the stream end
			}
			if !write(ls) {
				return nil
			}
			if len(ls) < f.Limit {
				break
			}
		}
	}
}

// parseSince reads ?since=: an RFC 3339 time or a duration back from now.
func parseSince(v string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("since=%q: want an RFC 3339 time or a duration like 10m: %w", v, release.ErrInvalid)
	}
	return now.Add(-d), nil
}

func logView(l store.LogLine) serverapi.LogLine {
	return serverapi.LogLine{ID: l.ID, App: l.App, Service: l.Service, Container: l.Container, Time: l.Time, Stream: l.Stream, Text: l.Text}
}
