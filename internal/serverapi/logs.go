package serverapi

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Limits of log shipping: the agent sends batches of at most MaxLogBatch
// bytes of text; the server cuts a line's text at MaxLogLine bytes.
const (
	MaxLogBatch = 256 << 10
	MaxLogLine  = 16 << 10
)

// LogLine is one line of a container's log on a device, or one of the
// agent's own events (stream LogStreamAgent: switches, rollbacks and their
// reasons, update locks, refused releases; App is the app's, or empty for
// the device's). ID is the server's, in the order lines were stored (0 in
// a batch a device sends).
type LogLine struct {
	ID        int64     `json:"id,omitempty"`
	App       string    `json:"app"`
	Service   string    `json:"service"`
	Container string    `json:"container"`
	Time      time.Time `json:"time"`
	Stream    string    `json:"stream"` // stdout, stderr, agent (LogStreamAgent); berth for the server's notes
	Text      string    `json:"text"`
}

// LogStreamAgent is the stream of the agent's own events in a device's log.
const LogStreamAgent = "agent"

// LogBatch is the body of POST /v1/device/logs: lines oldest first, and how
// many lines the device dropped, its buffer full, since the last batch.
type LogBatch struct {
	Lines   []LogLine `json:"lines"`
	Dropped int64     `json:"dropped,omitempty"`
}

// LogQuery selects a device's log lines (GET /v1/devices/{device}/logs).
type LogQuery struct {
	App, Service string
	Since        time.Time
	Limit        int
	Follow       bool
}

// ShipLogs sends a batch of the device's log lines.
func (c *Client) ShipLogs(ctx context.Context, b LogBatch) error {
	return c.send(ctx, http.MethodPost, "/v1/device/logs", b, nil)
}

// DeviceLogs calls fn with a device's log lines, oldest first; with
// q.Follow it goes on with new lines until ctx ends or fn returns an error.
func (c *Client) DeviceLogs(ctx context.Context, device string, q LogQuery, fn func(LogLine) error) error {
	v := url.Values{}
	if q.App != "" {
		v.Set("app", q.App)
	}
	if q.Service != "" {
		v.Set("service", q.Service)
	}
	if !q.Since.IsZero() {
		v.Set("since", q.Since.UTC().Format(time.RFC3339Nano))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	if q.Follow {
		v.Set("follow", "true")
	}
	path := "/v1/devices/" + esc(device) + "/logs?" + v.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base.String()+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/x-ndjson")
	resp, err := c.roundTrip(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if len(sc.Bytes()) == 0 {
			continue // a keep-alive
		}
		var l LogLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return fmt.Errorf("GET %s: bad line: %w", path, err)
		}
		if err := fn(l); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return nil
}
