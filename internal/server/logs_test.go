package server_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/berth-robotics/berth/internal/serverapi"
)

func logLine(app, svc, text string) serverapi.LogLine {
	return serverapi.LogLine{App: app, Service: svc, Container: "c-" + svc, Time: time.Now().UTC(), Stream: "stdout", Text: text}
}

func readLogs(t *testing.T, cl *serverapi.Client, device string, q serverapi.LogQuery) []string {
	t.Helper()
	var out []string
	err := cl.DeviceLogs(ctx, device, q, func(l serverapi.LogLine) error {
		out = append(out, l.Text)
		return nil
	})
	if err != nil {
		t.Fatalf("logs of %s: %v", device, err)
	}
	return out
}

func TestDeviceLogs(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		e := newEnv(t, b, envOptions{logsKept: 5})
		f := e.fleet("lab")
		d1, cl1, tok1 := e.device(f.ProvisioningKey, "robot-1")
		d2, cl2, tok2 := e.device(f.ProvisioningKey, "robot-2")
		viewer := e.client(e.user("vera", "viewer"))

		if err := cl1.ShipLogs(ctx, serverapi.LogBatch{Lines: []serverapi.LogLine{logLine("app", "web", "one"), logLine("app", "db", "two")}}); err != nil {
			t.Fatal(err)
		}
		if err := cl2.ShipLogs(ctx, serverapi.LogBatch{Lines: []serverapi.LogLine{logLine("app", "web", "robot-2's")}, Dropped: 3}); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"one", "two"}, readLogs(t, viewer, d1.ID, serverapi.LogQuery{})); diff != "" {
			t.Errorf("robot-1 (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]string{"one"}, readLogs(t, viewer, d1.ID, serverapi.LogQuery{Service: "web"})); diff != "" {
			t.Errorf("robot-1 web (-want +got):\n%s", diff)
		}
		got := readLogs(t, viewer, d2.ID, serverapi.LogQuery{})
		if len(got) != 2 || !strings.Contains(got[0], "dropped 3 log lines") || got[1] != "robot-2's" {
			t.Errorf("robot-2: %q", got)
		}

		// Auth: a device reads no logs, not even its own; a user posts none.
		for _, tok := range []string{tok1, tok2} {
			if code, _, body := e.do("GET", "/v1/devices/"+d1.ID+"/logs", tok, nil); code != http.StatusForbidden {
				t.Errorf("a device reading robot-1's logs: %d %s", code, body)
			}
		}
		if code, _, body := e.do("POST", "/v1/device/logs", e.adminToken, strings.NewReader(`{"lines":[]}`)); code != http.StatusForbidden {
			t.Errorf("a user posting logs: %d %s", code, body)
		}
		if code, _, _ := e.do("GET", "/v1/devices/"+d1.ID+"/logs", "", nil); code != http.StatusUnauthorized {
			t.Errorf("no token: %d", code)
		}
		if code, _, _ := e.do("GET", "/v1/devices/nope/logs", e.adminToken, nil); code != http.StatusNotFound {
			t.Errorf("unknown device: %d", code)
		}

		// Bad batches store nothing.
		for name, body := range map[string]string{
			"stream":    `{"lines":[{"app":"app","service":"web","stream":"stdin","text":"x"}]}`,
			"app":       `{"lines":[{"app":"App!","service":"web","stream":"stdout","text":"x"}]}`,
			"no app":    `{"lines":[{"app":"","service":"web","stream":"stdout","text":"x"}]}`,
			"forged":    `{"lines":[{"app":"app","stream":"berth","text":"berth: the server says"}]}`,
			"malformed": `{"lines":[`,
		} {
			if code, _, _ := e.do("POST", "/v1/device/logs", tok1, strings.NewReader(body)); code != http.StatusBadRequest {
				t.Errorf("%s: %d, want 400", name, code)
			}
		}
		big := `{"lines":[{"app":"app","service":"web","stream":"stdout","text":"` + strings.Repeat("x", 5<<20) + `"}]}`
		if code, _, _ := e.do("POST", "/v1/device/logs", tok1, strings.NewReader(big)); code != http.StatusRequestEntityTooLarge {
			t.Errorf("a 5 MiB body: %d, want 413", code)
		}
		if n := len(readLogs(t, viewer, d1.ID, serverapi.LogQuery{})); n != 2 {
			t.Errorf("%d lines after refused batches, want 2", n)
		}

		// The agent's own events: stream "agent", with or without an app.
		events := []serverapi.LogLine{
			{App: "app", Stream: serverapi.LogStreamAgent, Time: time.Now().UTC(), Text: "switch failed; rolling back to 1234: unhealthy"},
			{Stream: serverapi.LogStreamAgent, Time: time.Now().UTC(), Text: "loaded 1 images"},
		}
		if err := cl1.ShipLogs(ctx, serverapi.LogBatch{Lines: events}); err != nil {
			t.Fatal(err)
		}
		if got := readLogs(t, viewer, d1.ID, serverapi.LogQuery{}); len(got) != 4 || got[2] != events[0].Text || got[3] != events[1].Text {
			t.Errorf("after the agent's events: %q", got)
		}

		// A long line is cut; only the newest 5 lines are kept.
		long := logLine("app", "web", strings.Repeat("y", 20<<10))
		var lines []serverapi.LogLine
		for i := range 4 {
			lines = append(lines, logLine("app", "web", fmt.Sprint(i)))
		}
		if err := cl1.ShipLogs(ctx, serverapi.LogBatch{Lines: append([]serverapi.LogLine{long}, lines...)}); err != nil {
			t.Fatal(err)
		}
		got = readLogs(t, viewer, d1.ID, serverapi.LogQuery{})
		if len(got) != 5 || len(got[0]) != serverapi.MaxLogLine || got[4] != "3" {
			t.Errorf("after trimming: %d lines, first %d bytes, last %q", len(got), len(got[0]), got[len(got)-1])
		}
		if got := readLogs(t, viewer, d1.ID, serverapi.LogQuery{Limit: 2}); !cmp.Equal(got, []string{"2", "3"}) {
			t.Errorf("limit 2: %q", got)
		}

		// Follow: a new line arrives within a second of being shipped.
		fctx, cancel := context.WithCancel(ctx)
		defer cancel()
		seen := make(chan string, 10)
		done := make(chan error, 1)
		go func() {
			done <- viewer.DeviceLogs(fctx, d1.ID, serverapi.LogQuery{Follow: true, Limit: 1}, func(l serverapi.LogLine) error {
				seen <- l.Text
				return nil
			})
		}()
		if got := <-seen; got != "3" {
			t.Errorf("first followed line %q, want 3", got)
		}
		if err := cl1.ShipLogs(ctx, serverapi.LogBatch{Lines: []serverapi.LogLine{logLine("app", "web", "fresh")}}); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-seen:
			if got != "fresh" {
				t.Errorf("followed %q, want fresh", got)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("a shipped line did not reach the follower within 2s")
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("follow ended: %v", err)
		}
	})
}
