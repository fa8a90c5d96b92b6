package localapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/berth-robotics/berth/internal/release"
)

// Client talks to one agent.
type Client struct {
	http   *http.Client
	target string
	closer func() error
}

// WithCloser makes Close also call f (an SSH connection to drop, say).
func (c *Client) WithCloser(f func() error) *Client {
	c.closer = f
	return c
}

// Dialer opens a connection to the agent's socket (directly, or over SSH).
type Dialer func(ctx context.Context) (net.Conn, error)

// New returns a client that reaches the agent through dial; target names it in errors.
func New(target string, dial Dialer) *Client {
	tr := &http.Transport{
		DialContext:       func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
		DisableKeepAlives: false,
		MaxIdleConns:      2,
	}
	return &Client{http: &http.Client{Transport: tr}, target: target}
}

// Unix returns a client for an agent socket path.
func Unix(path string) *Client {
	return New("unix://"+path, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", path)
		if err != nil {
			return nil, fmt.Errorf("agent socket %s: %w (is berthd running? can you reach its socket: root or the berth group?)", path, err)
		}
		return c, nil
	})
}

// Close drops idle connections, and the transport under them.
func (c *Client) Close() {
	c.http.CloseIdleConnections()
	if c.closer != nil {
		_ = c.closer()
	}
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: bad response: %w", method, path, err)
	}
	return nil
}

func (c *Client) send(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://berthd"+path, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("agent %s: %w", c.target, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		var eb ErrorBody
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, &eb) != nil || eb.Error == "" {
			eb.Error = strings.TrimSpace(string(b))
		}
		return nil, fmt.Errorf("%s: %w", eb.Error, statusError(resp.StatusCode))
	}
	return resp, nil
}

// statusError maps an HTTP status back to a release sentinel.
func statusError(code int) error {
	switch code {
	case http.StatusNotFound:
		return release.ErrNotFound
	case http.StatusConflict:
		return release.ErrConflict
	case http.StatusBadRequest, http.StatusUnprocessableEntity:
		return release.ErrInvalid
	case http.StatusUnauthorized, http.StatusForbidden:
		return release.ErrUnauthorized
	case http.StatusInsufficientStorage:
		return release.ErrNoSpace
	case http.StatusLocked:
		return release.ErrLocked
	}
	return fmt.Errorf("agent answered HTTP %d", code)
}

// State returns the agent's current state.
func (c *Client) State(ctx context.Context) (*release.CurrentState, error) {
	var s release.CurrentState
	return &s, c.do(ctx, http.MethodGet, "/v1/state", nil, &s)
}

// Deploy starts a switch of app to a new release.
func (c *Client) Deploy(ctx context.Context, app string, req DeployRequest) (*OpResponse, error) {
	var r OpResponse
	return &r, c.do(ctx, http.MethodPost, "/v1/apps/"+url.PathEscape(app)+"/deploy", req, &r)
}

// Plan asks what a deploy of req would do, changing nothing.
func (c *Client) Plan(ctx context.Context, app string, req DeployRequest) (*PlanResponse, error) {
	var r PlanResponse
	return &r, c.do(ctx, http.MethodPost, "/v1/apps/"+url.PathEscape(app)+"/plan", req, &r)
}

// Rollback starts a switch of app back to a kept release.
func (c *Client) Rollback(ctx context.Context, app string, req RollbackRequest) (*OpResponse, error) {
	var r OpResponse
	return &r, c.do(ctx, http.MethodPost, "/v1/apps/"+url.PathEscape(app)+"/rollback", req, &r)
}

// Releases lists the releases kept for app, newest first.
func (c *Client) Releases(ctx context.Context, app string) ([]KeptRelease, error) {
	var r []KeptRelease
	return r, c.do(ctx, http.MethodGet, "/v1/apps/"+url.PathEscape(app)+"/releases", nil, &r)
}

// Lock takes app's update lock through the API for ttl.
func (c *Client) Lock(ctx context.Context, app string, req LockRequest) (*release.LockInfo, error) {
	var r release.LockInfo
	return &r, c.do(ctx, http.MethodPost, "/v1/apps/"+url.PathEscape(app)+"/lock", req, &r)
}

// Unlock drops app's API update lock.
func (c *Client) Unlock(ctx context.Context, app string) error {
	return c.do(ctx, http.MethodDelete, "/v1/apps/"+url.PathEscape(app)+"/lock", nil, nil)
}

// Remove removes app's containers and networks, and its volumes when volumes is set.
// by says who asks (user@host): on a fleet device the removal of an app of its
// fleet target stands in for the fleet release, like a LAN deploy.
func (c *Client) Remove(ctx context.Context, app string, volumes bool, by string) (*RemoveResponse, error) {
	var r RemoveResponse
	q := url.Values{"volumes": {strconv.FormatBool(volumes)}}
	if by != "" {
		q.Set("by", by)
	}
	return &r, c.do(ctx, http.MethodDelete, "/v1/apps/"+url.PathEscape(app)+"?"+q.Encode(), nil, &r)
}

// Logs copies app's container logs (one service, or all when service is "")
// to w, each line prefixed with its service.
func (c *Client) Logs(ctx context.Context, app, service string, follow bool, tail string, w io.Writer) error {
	q := url.Values{"service": {service}, "follow": {strconv.FormatBool(follow)}, "tail": {tail}}
	resp, err := c.send(ctx, http.MethodGet, "/v1/apps/"+url.PathEscape(app)+"/logs?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil && ctx.Err() == nil {
		return fmt.Errorf("logs: %w", err)
	}
	return nil
}

// Events calls fn for each event after seq (for one app if app is set); with
// follow it waits for new ones until fn returns false or ctx ends.
func (c *Client) Events(ctx context.Context, app string, since uint64, follow bool, fn func(Event) bool) error {
	q := url.Values{"since": {strconv.FormatUint(since, 10)}, "follow": {strconv.FormatBool(follow)}, "app": {app}}
	resp, err := c.send(ctx, http.MethodGet, "/v1/events?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue // keep-alive
		}
		var e Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return fmt.Errorf("events: bad line: %w", err)
		}
		if !fn(e) {
			return nil
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("events: %w", err)
	}
	return ctx.Err()
}

// ContentInfo asks what the device holds.
func (c *Client) ContentInfo(ctx context.Context) (*ContentInfo, error) {
	var r ContentInfo
	return &r, c.do(ctx, http.MethodGet, "/v1/content", nil, &r)
}

// Missing sends piece digests (32 bytes each, concatenated) and returns the
// ones the device lacks, in the same form.
func (c *Client) Missing(ctx context.Context, digests []byte) ([]byte, error) {
	return c.raw(ctx, http.MethodPost, "/v1/content/missing", digests)
}

// PutPieces sends one batch of pieces in the transfer's frame format.
func (c *Client) PutPieces(ctx context.Context, frames []byte) (*PutPiecesResponse, error) {
	b, err := c.raw(ctx, http.MethodPost, "/v1/content/pieces", frames)
	if err != nil {
		return nil, err
	}
	var r PutPiecesResponse
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("put pieces: bad response: %w", err)
	}
	return &r, nil
}

// PutIndex sends a layer's index: zstd-compressed, or, with base set, as a
// binary delta from the index of layer base, which the device holds.
func (c *Client) PutIndex(ctx context.Context, diffID string, body []byte, base string) error {
	path := "/v1/content/layers/" + url.PathEscape(diffID)
	if base != "" {
		path += "?base=" + url.QueryEscape(base)
	}
	_, err := c.raw(ctx, http.MethodPut, path, body)
	return err
}

// Load asks the device to load images from its content store.
func (c *Client) Load(ctx context.Context, req LoadRequest) (*LoadResponse, error) {
	var r LoadResponse
	return &r, c.do(ctx, http.MethodPost, "/v1/content/load", req, &r)
}

// LoadChain asks the device to load a layer stack ahead of its image (an
// agent older than this call answers 404).
func (c *Client) LoadChain(ctx context.Context, req LoadChainRequest) (*LoadResponse, error) {
	var r LoadResponse
	return &r, c.do(ctx, http.MethodPost, "/v1/content/chains", req, &r)
}

func (c *Client) raw(ctx context.Context, method, path string, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://berthd"+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("agent %s: %w", c.target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		var eb ErrorBody
		if json.Unmarshal(b, &eb) != nil || eb.Error == "" {
			eb.Error = strings.TrimSpace(string(b))
		}
		return nil, fmt.Errorf("%s: %w", eb.Error, statusError(resp.StatusCode))
	}
	return b, nil
}
