package serverapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/berth-robotics/berth/internal/localapi"
	"github.com/berth-robotics/berth/internal/transfer"
)

// The content exchange over HTTPS: uploads speak to the server as a laptop
// speaks to a robot's agent (transfer.Device), downloads are a device's
// transfer.Source. Bodies are binary (application/octet-stream) but for
// the content summary and the image registration, which are JSON.

// IndexBaseHeader names, in the answer of GET
// /v1/device/content/layers/{diffid}, the layer the index is a delta
// against; absent, the index is zstd-compressed alone.
const IndexBaseHeader = "Berth-Index-Base"

// Uploader is the server as a transfer.Sender's device: what it holds
// (GET /v1/content), which pieces it lacks, batches of pieces, layer
// indexes, and, last, the images registered once all their layers are
// there. It needs a deployer's token.
func (c *Client) Uploader() transfer.Device { return uploader{c} }

type uploader struct{ c *Client }

func (u uploader) ContentInfo(ctx context.Context) (*localapi.ContentInfo, error) {
	var info localapi.ContentInfo
	return &info, u.c.get(ctx, "/v1/content", &info)
}

func (u uploader) Missing(ctx context.Context, digests []byte) ([]byte, error) {
	b, _, err := u.c.binary(ctx, http.MethodPost, "/v1/content/missing", digests)
	return b, err
}

func (u uploader) PutPieces(ctx context.Context, frames []byte) (*localapi.PutPiecesResponse, error) {
	b, _, err := u.c.binary(ctx, http.MethodPost, "/v1/content/pieces", frames)
	if err != nil {
		return nil, err
	}
	var r localapi.PutPiecesResponse
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("POST /v1/content/pieces: bad answer: %w", err)
	}
	return &r, nil
}

func (u uploader) PutIndex(ctx context.Context, diffID string, body []byte, base string) error {
	path := "/v1/content/layers/" + esc(diffID)
	if base != "" {
		path += "?base=" + url.QueryEscape(base)
	}
	_, _, err := u.c.binary(ctx, http.MethodPut, path, body)
	return err
}

func (u uploader) Load(ctx context.Context, req localapi.LoadRequest) (*localapi.LoadResponse, error) {
	var r localapi.LoadResponse
	return &r, u.c.send(ctx, http.MethodPost, "/v1/content/images", req, &r)
}

// Source is the server as a device fetching its releases' images sees it
// (transfer.Puller's Source). It needs the device's token; the server
// answers only about images its target pins.
func (c *Client) Source() transfer.Source { return source{c} }

type source struct{ c *Client }

func (s source) Config(ctx context.Context, imageID string) ([]byte, error) {
	b, _, err := s.c.binary(ctx, http.MethodGet, "/v1/device/content/images/"+esc(imageID), nil)
	return b, err
}

func (s source) Index(ctx context.Context, diffID string, bases []string) ([]byte, string, error) {
	b, hdr, err := s.c.binary(ctx, http.MethodGet, "/v1/device/content/layers/"+esc(diffID)+baseQuery(bases), nil)
	if err != nil {
		return nil, "", err
	}
	return b, hdr.Get(IndexBaseHeader), nil
}

// Pieces returns the answer's body as it arrives, at most transfer.MaxBatch
// bytes, so that the puller keeps the whole pieces of a batch whose
// connection broke.
//
// A link that goes silent (out of a robot's Wi-Fi, no reset ever comes)
// would hold the read for as long as TCP takes to give up, minutes: once
// the answer has begun, a body that brings no byte for StallTimeout is
// abandoned, so that the agent tries again from what it kept.
func (s source) Pieces(ctx context.Context, layer string, digests []byte, bases []string) (io.ReadCloser, error) {
	path := "/v1/device/content/layers/" + esc(layer) + "/pieces"
	ctx, cancel := context.WithCancelCause(ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.c.base.String()+path+baseQuery(bases), bytes.NewReader(digests))
	if err != nil {
		cancel(nil)
		return nil, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Accept", "application/octet-stream, application/json")
	resp, err := s.c.roundTrip(req)
	if err != nil {
		cancel(nil)
		return nil, err
	}
	stalled := fmt.Errorf("no byte came for %s", StallTimeout)
	b := &bodyReader{rc: resp.Body, r: io.LimitReader(resp.Body, transfer.MaxBatch), what: "POST " + path, cancel: cancel}
	b.timer = time.AfterFunc(StallTimeout, func() { cancel(stalled) })
	b.cause = func() error { return context.Cause(ctx) }
	return b, nil
}

// StallTimeout is how long a device waits for the next byte of a batch of
// pieces before it gives the connection up.
const StallTimeout = 30 * time.Second

// bodyReader is an answer's body read as it arrives; its errors name the
// request (and a stall, when that ended it).
type bodyReader struct {
	rc     io.ReadCloser
	r      io.Reader
	what   string
	cause  func() error // why the request's context ended, if it did
	cancel context.CancelCauseFunc
	timer  *time.Timer
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if n > 0 {
		b.timer.Reset(StallTimeout)
	}
	if err != nil && err != io.EOF {
		if cause := b.cause(); cause != nil {
			err = fmt.Errorf("%w (%v)", err, cause)
		}
		err = fmt.Errorf("%s: %w", b.what, err)
	}
	return n, err
}

func (b *bodyReader) Close() error {
	b.timer.Stop()
	err := b.rc.Close()
	b.cancel(nil)
	return err
}

// baseQuery names delta bases as ?base=…&base=…, each by its 64 hex digits
// (the server reads them with or without "sha256:").
func baseQuery(bases []string) string {
	if len(bases) == 0 {
		return ""
	}
	var b strings.Builder
	for i, d := range bases {
		if i == 0 {
			b.WriteString("?base=")
		} else {
			b.WriteString("&base=")
		}
		b.WriteString(url.QueryEscape(strings.TrimPrefix(d, "sha256:")))
	}
	return b.String()
}

// binary sends a request with a binary body (none if nil) and returns the
// answer's body, at most transfer.MaxBatch, and header.
func (c *Client) binary(ctx context.Context, method, path string, body []byte) ([]byte, http.Header, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base.String()+path, rd)
	if err != nil {
		return nil, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	req.Header.Set("Accept", "application/octet-stream, application/json")
	resp, err := c.roundTrip(req)
	if err != nil {
		var h http.Header
		if resp != nil {
			h = resp.Header
		}
		return nil, h, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, transfer.MaxBatch+1))
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: %w", method, strings.SplitN(path, "?", 2)[0], err)
	}
	if len(b) > transfer.MaxBatch {
		return nil, nil, fmt.Errorf("%s %s: the answer is over %d MiB", method, strings.SplitN(path, "?", 2)[0], transfer.MaxBatch>>20)
	}
	return b, resp.Header, nil
}
