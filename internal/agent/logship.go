package agent

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/berth-robotics/berth/internal/localapi"
	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
)

// Log shipping, in fleet mode: a follower per container of the device's
// apps appends each line, with its engine timestamp, to the on-disk
// buffer; the shipper sends the buffer to the server in batches of at most
// serverapi.MaxLogBatch bytes, every logShipEvery or sooner when a batch is
// full, and keeps what the server did not take for the next try. Neither
// waits on the switch or the state reports, nor they on it.

const (
	logShipEvery   = 2 * time.Second
	logRescanEvery = 5 * time.Second
)

// logShipper is the part of serverapi.Client that shipping uses.
type logShipper interface {
	ShipLogs(ctx context.Context, b serverapi.LogBatch) error
}

// runLogs follows the containers' logs and ships them until ctx ends.
func (a *Agent) runLogs(ctx context.Context, cl logShipper) {
	buf, err := openLogBuffer(filepath.Join(a.cfg.StateDir, "logs"), logSegmentMax, logBufferMax)
	if err != nil {
		a.log.Error("fleet: container logs are not shipped", "error", err)
		return
	}
	var wg sync.WaitGroup
	wg.Go(func() { a.followLogs(ctx, buf) })
	wg.Go(func() { a.events.follow(ctx, 0, "", true, eventLines(ctx, buf)) })
	shipLogs(ctx, a.log.Warn, buf, cl, logShipEvery)
	wg.Wait()
	buf.save()
	buf.Close()
}

// eventLines puts the agent's own events — switches and their steps,
// rollbacks with their reasons, update locks, refused releases — into the
// log buffer as lines of stream "agent", so the server keeps them with the
// device's logs (its dashboard shows them as the device's recent events)
// and they wait on disk while the server is away, as log lines do.
func eventLines(ctx context.Context, buf *logBuffer) func(localapi.Event) bool {
	return func(e localapi.Event) bool {
		text := e.Message
		if e.Error != "" && !strings.Contains(text, e.Error) {
			if text != "" {
				text += ": "
			}
			text += e.Error
		}
		if text != "" { // else a keep-alive
			_ = buf.append(serverapi.LogLine{App: e.App, Stream: serverapi.LogStreamAgent, Time: e.Time.UTC(), Text: text})
		}
		return ctx.Err() == nil
	}
}

// shipLogs sends the buffer's lines until ctx ends, retrying with backoff.
func shipLogs(ctx context.Context, warn func(string, ...any), buf *logBuffer, cl logShipper, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	delay := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-buf.full:
		}
		if err := buf.save(); err != nil {
			warn("fleet: log buffer", "error", err)
		}
		for ctx.Err() == nil {
			lines, pos, err := buf.peek(serverapi.MaxLogBatch)
			if err != nil {
				warn("fleet: log buffer", "error", err)
				break
			}
			if len(lines) == 0 && pos.Dropped == 0 {
				delay = 0
				break
			}
			err = cl.ShipLogs(ctx, serverapi.LogBatch{Lines: lines, Dropped: pos.Dropped})
			if errors.Is(err, release.ErrInvalid) {
				// Refused for good: retrying would block every line after.
				warn("fleet: a batch of log lines refused by the server; skipped", "lines", len(lines), "error", err)
				err = nil
			}
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				delay = nextDelay(max(delay, every))
				warn("fleet: logs not shipped; kept on disk", "error", err, "retry_in", delay.Round(time.Second))
				if !pause(ctx, delay) {
					return
				}
				continue
			}
			delay = 0
			if err := buf.commit(pos); err != nil {
				warn("fleet: log buffer", "error", err)
				break
			}
		}
	}
}

// followLogs keeps a follower on every container of the device's apps.
func (a *Agent) followLogs(ctx context.Context, buf *logBuffer) {
	var wg sync.WaitGroup
	defer wg.Wait()
	var mu sync.Mutex
	following := map[string]bool{}
	for {
		st, err := a.State(ctx)
		if err == nil {
			present := map[string]bool{}
			for app, as := range st.Apps {
				for svc, ss := range as.Services {
					id := ss.Container
					if id == "" {
						continue
					}
					present[id] = true
					mu.Lock()
					started := following[id]
					following[id] = true
					mu.Unlock()
					if started {
						continue
					}
					wg.Go(func() {
						defer func() {
							mu.Lock()
							delete(following, id)
							mu.Unlock()
						}()
						since := buf.sinceOf(id)
						if !since.IsZero() {
							since = since.Add(time.Nanosecond)
						}
						w := &logLineWriter{buf: buf, line: serverapi.LogLine{App: app, Service: svc, Container: id}}
						out, errw := w.stream("stdout"), w.stream("stderr")
						if err := a.eng.FollowLogs(ctx, id, since, out, errw); err != nil && ctx.Err() == nil {
							a.log.Debug("fleet: follow logs", "app", app, "service", svc, "error", err)
						}
					})
				}
			}
			buf.forget(present)
		}
		if !pause(ctx, logRescanEvery) {
			return
		}
	}
}

// logLineWriter turns one container's timestamped log output into buffer
// lines.
type logLineWriter struct {
	buf  *logBuffer
	line serverapi.LogLine
}

func (w *logLineWriter) stream(name string) *streamWriter {
	return &streamWriter{w: w, name: name}
}

type streamWriter struct {
	w       *logLineWriter
	name    string
	pending []byte
}

func (s *streamWriter) Write(p []byte) (int, error) {
	s.pending = append(s.pending, p...)
	for {
		i := bytes.IndexByte(s.pending, '\n')
		if i < 0 {
			if len(s.pending) > serverapi.MaxLogLine+64 { // a line without end: cut it
				s.emit(s.pending)
				s.pending = s.pending[:0]
			}
			return len(p), nil
		}
		s.emit(s.pending[:i])
		s.pending = s.pending[i+1:]
	}
}

// emit appends a line "<RFC 3339 time> <text>".
func (s *streamWriter) emit(raw []byte) {
	l := s.w.line
	l.Stream = s.name
	ts, text, ok := bytes.Cut(raw, []byte(" "))
	t, err := time.Parse(time.RFC3339Nano, string(ts))
	if !ok || err != nil {
		t, text = time.Now(), raw
	}
	l.Time, l.Text = t.UTC(), string(bytes.TrimSuffix(text, []byte("\r")))
	_ = s.w.buf.append(l) // a full disk: the line is lost, as the engine's own would be
}
