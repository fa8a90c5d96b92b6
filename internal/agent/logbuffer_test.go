package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/localapi"
	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
)

// fakeShipper is a server that can be unreachable.
type fakeShipper struct {
	mu      sync.Mutex
	offline bool
	lines   []string
	dropped int64
	tries   int
}

func (f *fakeShipper) ShipLogs(ctx context.Context, b serverapi.LogBatch) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tries++
	if f.offline {
		return errors.New("connection refused")
	}
	for _, l := range b.Lines {
		f.lines = append(f.lines, l.Text)
	}
	f.dropped += b.Dropped
	return nil
}

func (f *fakeShipper) got() ([]string, int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.lines...), f.dropped
}

func bufLine(i int) serverapi.LogLine {
	return serverapi.LogLine{App: "app", Service: "web", Container: "c1", Stream: "stdout",
		Time: time.Date(2026, 11, 30, 12, 0, 0, i, time.UTC), Text: fmt.Sprintf("%04d %s", i, "some text of a line")}
}

func dirSize(t *testing.T, dir string) int64 {
	t.Helper()
	ms, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	var n int64
	for _, m := range ms {
		fi, err := os.Stat(m)
		if err != nil {
			t.Fatal(err)
		}
		n += fi.Size()
	}
	return n
}

// TestLogBufferOffline: the server unreachable, the buffer stays under its
// bound by dropping its oldest lines and counting them; once the server
// answers, the lines kept arrive in order, with the count, and survive a
// restart of the agent before that.
func TestLogBufferOffline(t *testing.T) {
	dir := t.TempDir()
	const segMax, max = 1 << 10, 4 << 10
	buf, err := openLogBuffer(dir, segMax, max)
	if err != nil {
		t.Fatal(err)
	}
	srv := &fakeShipper{offline: true}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		shipLogs(ctx, func(string, ...any) {}, buf, srv, 5*time.Millisecond)
	}()
	const n = 500
	for i := range n {
		if err := buf.append(bufLine(i)); err != nil {
			t.Fatal(err)
		}
		if size := dirSize(t, dir); size > max {
			t.Fatalf("after line %d the buffer holds %d bytes, over %d", i, size, max)
		}
	}
	time.Sleep(50 * time.Millisecond)
	if lines, _ := srv.got(); len(lines) != 0 {
		t.Fatalf("shipped %d lines while offline", len(lines))
	}
	cancel()
	<-done
	if err := buf.save(); err != nil {
		t.Fatal(err)
	}
	buf.Close()
	if got := buf.sinceOf("c1"); !got.Equal(bufLine(n - 1).Time) {
		t.Errorf("since %v, want the newest line's time", got)
	}

	// A restart: the buffer reopens where it was; the server is back.
	buf, err = openLogBuffer(dir, segMax, max)
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Close()
	if got := buf.sinceOf("c1"); !got.Equal(bufLine(n - 1).Time) {
		t.Errorf("since after a restart %v, want the newest line's time", got)
	}
	srv.mu.Lock()
	srv.offline = false
	srv.mu.Unlock()
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	done = make(chan struct{})
	go func() {
		defer close(done)
		shipLogs(ctx, func(string, ...any) {}, buf, srv, 5*time.Millisecond)
	}()
	deadline := time.Now().Add(5 * time.Second)
	var lines []string
	var dropped int64
	for time.Now().Before(deadline) {
		if lines, dropped = srv.got(); len(lines) > 0 && lines[len(lines)-1][:4] == fmt.Sprintf("%04d", n-1) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if len(lines) == 0 || len(lines) >= n {
		t.Fatalf("shipped %d lines of %d, want the newest that fit", len(lines), n)
	}
	first, _ := strconv.Atoi(lines[0][:4])
	for i, l := range lines {
		if want := fmt.Sprintf("%04d", first+i); l[:4] != want {
			t.Fatalf("line %d is %q, want %s…: out of order or missing", i, l, want)
		}
	}
	if first+len(lines) != n {
		t.Errorf("the newest line shipped is %d, want %d", first+len(lines)-1, n-1)
	}
	if dropped != int64(first) {
		t.Errorf("dropped %d, want %d (the lines before the first kept)", dropped, first)
	}
	cancel()
	<-done

	// Shipped segments are gone; a third start ships nothing again.
	buf.Close()
	buf, err = openLogBuffer(dir, segMax, max)
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Close()
	again, pos, err := buf.peek(serverapi.MaxLogBatch)
	if err != nil || len(again) != 0 || pos.Dropped != 0 {
		t.Errorf("after shipping, peek: %d lines, %d dropped, %v", len(again), pos.Dropped, err)
	}
}

func TestStreamWriter(t *testing.T) {
	buf, err := openLogBuffer(t.TempDir(), 1<<20, 1<<22)
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Close()
	w := &logLineWriter{buf: buf, line: serverapi.LogLine{App: "app", Service: "web", Container: "c1"}}
	s := w.stream("stderr")
	fmt.Fprint(s, "2026-11-30T12:00:00.000000001Z hello\n2026-11-30T12:00:00.000000002Z wor")
	fmt.Fprint(s, "ld\r\n")
	lines, _, err := buf.peek(1 << 20)
	if err != nil || len(lines) != 2 {
		t.Fatalf("%d lines, %v", len(lines), err)
	}
	if lines[1].Text != "world" || lines[1].Stream != "stderr" || lines[1].Time.Nanosecond() != 2 || lines[0].Text != "hello" {
		t.Errorf("lines: %+v", lines)
	}
}

// TestEventLines: the agent's events go into the log buffer as lines of
// stream "agent" with their app and time, a failure's reason with them;
// keep-alives do not.
func TestEventLines(t *testing.T) {
	buf, err := openLogBuffer(t.TempDir(), 1<<20, 1<<22)
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Close()
	events := newEventLog()
	events.add(localapi.Event{App: "app", Release: "sha256:1", Phase: release.PhaseRollingBack, Message: "switch failed; rolling back to 1234", Error: "service web: healthcheck reports unhealthy"})
	events.add(localapi.Event{App: "app", Message: "update lock taken by arm until 2026-12-01T04:00:00Z"})
	events.add(localapi.Event{}) // a keep-alive
	events.add(localapi.Event{Message: "loaded 1 images (2 layers, 3 MiB) in 0.4s"})
	ctx := context.Background()
	events.follow(ctx, 0, "", false, eventLines(ctx, buf))
	lines, _, err := buf.peek(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"app: switch failed; rolling back to 1234: service web: healthcheck reports unhealthy",
		"app: update lock taken by arm until 2026-12-01T04:00:00Z",
		": loaded 1 images (2 layers, 3 MiB) in 0.4s",
	}
	var got []string
	for _, l := range lines {
		if l.Stream != serverapi.LogStreamAgent || l.Time.IsZero() {
			t.Errorf("line %+v: want stream agent and a time", l)
		}
		got = append(got, l.App+": "+l.Text)
	}
	if !slices.Equal(got, want) {
		t.Errorf("event lines:\n%q\nwant\n%q", got, want)
	}
}
