package serverapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/berth-robotics/berth/internal/mergepatch"
	"github.com/berth-robotics/berth/internal/release"
)

// Client talks to one fleet server as one user or device.
type Client struct {
	base  *url.URL
	token string
	http  *http.Client
}

// Options configure a Client.
type Options struct {
	// Token is sent as "Authorization: Bearer <token>": a user's API token
	// or a device's token. Empty for registration only.
	Token string
	// Fingerprint, if set, pins the server's TLS certificate by the SHA-256
	// of its DER bytes (as `berth server --tls-self-signed` prints it)
	// instead of checking it against the system's CAs.
	Fingerprint string
	// Transport, if set, carries the requests (tests).
	Transport http.RoundTripper
}

// New returns a client for the server at base (https://host:port, or
// http:// on loopback).
func New(base string, opts Options) (*Client, error) {
	u, err := url.Parse(strings.TrimSuffix(base, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("server %q: want https://host[:port] (or http:// on loopback): %w", base, release.ErrInvalid)
	}
	rt := opts.Transport
	if rt == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 4
		if opts.Fingerprint != "" {
			want, err := ParseFingerprint(opts.Fingerprint)
			if err != nil {
				return nil, err
			}
			tr.TLSClientConfig = pinned(want)
		}
		rt = tr
	}
	return &Client{base: u, token: opts.Token, http: &http.Client{Transport: rt}}, nil
}

// Server is the server's base URL.
func (c *Client) Server() string { return c.base.String() }

// Close drops idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// Fingerprint is the SHA-256 fingerprint of a DER certificate, as
// "sha256:" and lower-case hex.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// ParseFingerprint reads a certificate fingerprint: 64 hex digits, in
// either case, with or without colons between bytes and a "sha256:" prefix.
func ParseFingerprint(s string) (string, error) {
	h := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(strings.TrimPrefix(s, "sha256:"), "SHA256:"), ":", ""))
	if b, err := hex.DecodeString(h); err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("TLS fingerprint %q: want the certificate's SHA-256, 64 hex digits: %w", s, release.ErrInvalid)
	}
	return "sha256:" + h, nil
}

// pinned accepts exactly the certificate whose fingerprint is want, in
// place of a CA's word: a self-signed server certificate pinned at setup.
func pinned(want string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced by VerifyConnection below
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the server sent no certificate")
			}
			if got := Fingerprint(cs.PeerCertificates[0].Raw); got != want {
				return fmt.Errorf("the server's certificate has fingerprint %s, not the pinned %s: refusing to talk to it (a different server, or its certificate was replaced)", got, want)
			}
			return nil
		},
	}
}

// Error is an error answer from the server. It unwraps to the release
// sentinel matching its status (ErrNotFound for 404, …).
type Error struct {
	Status  int
	Message string
	// RetryAfter is what a 429 answer asked to wait.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("server answered HTTP %d", e.Status)
	}
	return e.Message
}

// Unwrap maps the status back to a release sentinel.
func (e *Error) Unwrap() error {
	switch e.Status {
	case http.StatusNotFound:
		return release.ErrNotFound
	case http.StatusConflict:
		return release.ErrConflict
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		return release.ErrInvalid
	case http.StatusUnauthorized, http.StatusForbidden:
		return release.ErrUnauthorized
	case http.StatusInsufficientStorage:
		return release.ErrNoSpace
	case http.StatusLocked:
		return release.ErrLocked
	}
	return nil
}

// do sends a request with a JSON body (in, unless nil) and decodes a JSON
// answer into out (unless nil). It returns the response's header.
func (c *Client) do(ctx context.Context, method, path string, hdr http.Header, in, out any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base.String()+path, body)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if in != nil && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.roundTrip(req)
	if err != nil {
		return resp, err
	}
	defer resp.Body.Close()
	if out == nil || resp.StatusCode == http.StatusNotModified || resp.StatusCode == http.StatusNoContent {
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp, nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return resp, fmt.Errorf("%s %s: bad answer: %w", method, path, err)
	}
	return resp, nil
}

// roundTrip sends req with the client's token. A failure to reach the
// server names it; an answer of 400 or more comes back as an *Error (with
// the response, its body consumed and closed).
func (c *Client) roundTrip(req *http.Request) (*http.Response, error) {
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("server %s: %w", c.base.Host, err)
	}
	if resp.StatusCode < 400 {
		return resp, nil
	}
	defer resp.Body.Close()
	e := &Error{Status: resp.StatusCode}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var eb ErrorBody
	if json.Unmarshal(b, &eb) == nil && eb.Error != "" {
		e.Message = eb.Error
	} else {
		e.Message = strings.TrimSpace(string(b))
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
		e.RetryAfter = time.Duration(s) * time.Second
	}
	return resp, e
}

func (c *Client) get(ctx context.Context, path string, out any) error {
	_, err := c.do(ctx, http.MethodGet, path, nil, nil, out)
	return err
}

func (c *Client) send(ctx context.Context, method, path string, in, out any) error {
	_, err := c.do(ctx, method, path, nil, in, out)
	return err
}

// esc escapes one path segment.
func esc(s string) string { return url.PathEscape(s) }

// Whoami says whose token the client holds.
func (c *Client) Whoami(ctx context.Context) (*Whoami, error) {
	var w Whoami
	return &w, c.get(ctx, "/v1/whoami", &w)
}

// CreateUser adds a user.
func (c *Client) CreateUser(ctx context.Context, name, role string) (*User, error) {
	var u User
	return &u, c.send(ctx, http.MethodPost, "/v1/users", CreateUserRequest{Name: name, Role: role}, &u)
}

// Users lists the users.
func (c *Client) Users(ctx context.Context) ([]User, error) {
	var us []User
	return us, c.get(ctx, "/v1/users", &us)
}

// CreateToken creates an API token for a user (ID or name).
func (c *Client) CreateToken(ctx context.Context, user string, req CreateTokenRequest) (*NewToken, error) {
	var t NewToken
	return &t, c.send(ctx, http.MethodPost, "/v1/users/"+esc(user)+"/tokens", req, &t)
}

// Tokens lists a user's tokens.
func (c *Client) Tokens(ctx context.Context, user string) ([]Token, error) {
	var ts []Token
	return ts, c.get(ctx, "/v1/users/"+esc(user)+"/tokens", &ts)
}

// DeleteToken deletes one of a user's tokens.
func (c *Client) DeleteToken(ctx context.Context, user, tokenID string) error {
	return c.send(ctx, http.MethodDelete, "/v1/users/"+esc(user)+"/tokens/"+esc(tokenID), nil, nil)
}

// CreateFleet creates a fleet and returns it with its provisioning key.
func (c *Client) CreateFleet(ctx context.Context, name string) (*FleetKey, error) {
	var f FleetKey
	return &f, c.send(ctx, http.MethodPost, "/v1/fleets", CreateFleetRequest{Name: name}, &f)
}

// Fleets lists the fleets.
func (c *Client) Fleets(ctx context.Context) ([]Fleet, error) {
	var fs []Fleet
	return fs, c.get(ctx, "/v1/fleets", &fs)
}

// Fleet returns a fleet (name or ID).
func (c *Client) Fleet(ctx context.Context, fleet string) (*Fleet, error) {
	var f Fleet
	return &f, c.get(ctx, "/v1/fleets/"+esc(fleet), &f)
}

// RotateProvisioningKey gives a fleet a new provisioning key; the old one
// stops working.
func (c *Client) RotateProvisioningKey(ctx context.Context, fleet string) (*FleetKey, error) {
	var f FleetKey
	return &f, c.send(ctx, http.MethodPost, "/v1/fleets/"+esc(fleet)+"/provisioning-key", nil, &f)
}

// RevokeProvisioningKey leaves a fleet without a provisioning key.
func (c *Client) RevokeProvisioningKey(ctx context.Context, fleet string) (*Fleet, error) {
	var f Fleet
	return &f, c.send(ctx, http.MethodDelete, "/v1/fleets/"+esc(fleet)+"/provisioning-key", nil, &f)
}

// Register registers a device with a fleet's provisioning key; the client
// needs no token for it.
func (c *Client) Register(ctx context.Context, req RegisterRequest) (*Registration, error) {
	var r Registration
	return &r, c.send(ctx, http.MethodPost, "/v1/register", req, &r)
}

// DeviceQuery selects a fleet's devices.
type DeviceQuery struct {
	Tag   string
	Name  string // only the device of this name
	After string // names after this one (the last of the previous page)
	Limit int
}

// DevicesPage returns one page of a fleet's devices, by name.
func (c *Client) DevicesPage(ctx context.Context, fleet string, q DeviceQuery) ([]Device, error) {
	v := url.Values{}
	for k, s := range map[string]string{"tag": q.Tag, "name": q.Name, "after": q.After} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	path := "/v1/fleets/" + esc(fleet) + "/devices"
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	var ds []Device
	return ds, c.get(ctx, path, &ds)
}

// Devices returns all of a fleet's devices (with tag, if set), by name,
// fetching page after page.
func (c *Client) Devices(ctx context.Context, fleet, tag string) ([]Device, error) {
	const page = 500
	all := []Device{}
	q := DeviceQuery{Tag: tag, Limit: page}
	for {
		ds, err := c.DevicesPage(ctx, fleet, q)
		if err != nil {
			return nil, err
		}
		all = append(all, ds...)
		if len(ds) < page {
			return all, nil
		}
		q.After = ds[len(ds)-1].Name
	}
}

// Device returns a device by ID.
func (c *Client) Device(ctx context.Context, id string) (*Device, error) {
	var d Device
	return &d, c.get(ctx, "/v1/devices/"+esc(id), &d)
}

// UpdateDevice changes a device's name, tags or notes.
func (c *Client) UpdateDevice(ctx context.Context, id string, req UpdateDeviceRequest) (*Device, error) {
	var d Device
	return &d, c.send(ctx, http.MethodPatch, "/v1/devices/"+esc(id), req, &d)
}

// DeleteDevice removes a device; its token stops working.
func (c *Client) DeleteDevice(ctx context.Context, id string) error {
	return c.send(ctx, http.MethodDelete, "/v1/devices/"+esc(id), nil, nil)
}

// EnvScope names an environment layer: a fleet's (Device ""), or a
// device's; for every service (Service "") or one.
type EnvScope struct {
	Fleet   string
	Device  string
	Service string
}

func (s EnvScope) path() string {
	p := "/v1/fleets/" + esc(s.Fleet) + "/env"
	if s.Device != "" {
		p = "/v1/devices/" + esc(s.Device) + "/env"
	}
	if s.Service != "" {
		p += "/" + esc(s.Service)
	}
	return p
}

// Env returns one environment layer (empty Vars if it is not set).
func (c *Client) Env(ctx context.Context, s EnvScope) (*EnvLayer, error) {
	var l EnvLayer
	return &l, c.get(ctx, s.path(), &l)
}

// SetEnv replaces one environment layer; no vars delete it.
func (c *Client) SetEnv(ctx context.Context, s EnvScope, vars map[string]string) (*EnvLayer, error) {
	var l EnvLayer
	return &l, c.send(ctx, http.MethodPut, s.path(), SetEnvRequest{Vars: vars}, &l)
}

// Pin keeps a device on a release of its app.
func (c *Client) Pin(ctx context.Context, device string, req PinRequest) (*Device, error) {
	var d Device
	return &d, c.send(ctx, http.MethodPost, "/v1/devices/"+esc(device)+"/pin", req, &d)
}

// Unpin lets assignments move a device's app again.
func (c *Client) Unpin(ctx context.Context, device, app string) (*Device, error) {
	var d Device
	return &d, c.send(ctx, http.MethodDelete, "/v1/devices/"+esc(device)+"/pin/"+esc(app), nil, &d)
}

// RetryApp assigns a device's app again to the release it has: a LAN
// override there ends, a release that failed or was refused is tried again.
func (c *Client) RetryApp(ctx context.Context, device, app string) (*Device, error) {
	var d Device
	return &d, c.send(ctx, http.MethodPost, "/v1/devices/"+esc(device)+"/apps/"+esc(app)+"/retry", nil, &d)
}

// CreateRelease stores a release in a fleet. created is false when the
// fleet had it already (the same app, version and spec): then nothing changed.
func (c *Client) CreateRelease(ctx context.Context, fleet string, req CreateReleaseRequest) (r *Release, created bool, err error) {
	r = &Release{}
	resp, err := c.do(ctx, http.MethodPost, "/v1/fleets/"+esc(fleet)+"/releases", nil, req, r)
	if err != nil {
		return nil, false, err
	}
	return r, resp.StatusCode == http.StatusCreated, nil
}

// Releases lists a fleet's releases (of app, if set), newest first.
func (c *Client) Releases(ctx context.Context, fleet, app string, limit int) ([]Release, error) {
	v := url.Values{}
	if app != "" {
		v.Set("app", app)
	}
	if limit > 0 {
		v.Set("limit", strconv.Itoa(limit))
	}
	path := "/v1/fleets/" + esc(fleet) + "/releases"
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	var rs []Release
	return rs, c.get(ctx, path, &rs)
}

// Release returns one of a fleet's releases, with its spec.
func (c *Client) Release(ctx context.Context, fleet, id string) (*Release, error) {
	var r Release
	return &r, c.get(ctx, "/v1/fleets/"+esc(fleet)+"/releases/"+esc(id), &r)
}

// Assign moves devices of a fleet to a release.
func (c *Client) Assign(ctx context.Context, fleet, id string, req AssignRequest) (*Assignment, error) {
	var a Assignment
	return &a, c.send(ctx, http.MethodPost, "/v1/fleets/"+esc(fleet)+"/releases/"+esc(id)+"/assign", req, &a)
}

// Audit lists audit entries, newest first.
func (c *Client) Audit(ctx context.Context, q AuditQuery) ([]AuditEntry, error) {
	v := url.Values{}
	for k, s := range map[string]string{"actor": q.Actor, "action": q.Action, "object": q.Object} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if !q.Since.IsZero() {
		v.Set("since", q.Since.Format(time.RFC3339Nano))
	}
	if !q.Until.IsZero() {
		v.Set("until", q.Until.Format(time.RFC3339Nano))
	}
	if q.Before > 0 {
		v.Set("before", strconv.FormatInt(q.Before, 10))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	var es []AuditEntry
	return es, c.get(ctx, "/v1/audit?"+v.Encode(), &es)
}

// Target asks for the device's target. With known > 0 (the Version of the
// target the device has) the server answers only once the target differs,
// or after wait (at most MaxWait): then changed is false and t nil.
func (c *Client) Target(ctx context.Context, known int64, wait time.Duration) (t *Target, changed bool, err error) {
	path := "/v1/device/target"
	if wait > 0 {
		path += "?wait=" + wait.String()
	}
	hdr := http.Header{}
	if known > 0 {
		hdr.Set("If-None-Match", strconv.Quote(strconv.FormatInt(known, 10)))
	}
	t = &Target{}
	resp, err := c.do(ctx, http.MethodGet, path, hdr, nil, t)
	if err != nil {
		return nil, false, err
	}
	if resp.StatusCode == http.StatusNotModified {
		return nil, false, nil
	}
	return t, true, nil
}

// ReportState sends the device's current state.
func (c *Client) ReportState(ctx context.Context, st release.CurrentState) (*StateReport, error) {
	var r StateReport
	return &r, c.send(ctx, http.MethodPut, "/v1/device/state", st, &r)
}

// PatchState sends what changed in the device's state since the report
// the server answered with state version base, as a JSON merge patch.
// A 409 means the server's state is no longer at base: send it whole.
func (c *Client) PatchState(ctx context.Context, base int64, patch json.RawMessage) (*StateReport, error) {
	var r StateReport
	hdr := http.Header{
		"If-Match":     {strconv.Quote(strconv.FormatInt(base, 10))},
		"Content-Type": {"application/merge-patch+json"},
	}
	_, err := c.do(ctx, http.MethodPatch, "/v1/device/state", hdr, patch, &r)
	return &r, err
}

// StateReporter sends a device's state reports: the first whole, then
// each as a merge patch against the last one the server acknowledged
// whenever the patch is smaller, and whole again when the server no
// longer holds that one (409) or takes no patches. Not safe for
// concurrent use.
type StateReporter struct {
	Client *Client

	sent    []byte         // the last report the server acknowledged, as sent
	sentDoc mergepatch.Doc // decoded, to diff the next one against
	version int64          // and its state version

	// Whole and Patched count the reports sent each way; Bytes is what
	// their bodies weighed.
	Whole, Patched int
	Bytes          int64
}

// Report sends st.
func (r *StateReporter) Report(ctx context.Context, st release.CurrentState) (*StateReport, error) {
	body, err := json.Marshal(st)
	if err != nil {
		return nil, err
	}
	doc, err := mergepatch.Decode(body)
	if err != nil {
		return nil, err
	}
	if r.sent != nil {
		patch, err := mergepatch.DiffDocs(r.sentDoc, doc)
		if err == nil && len(patch) < len(body) {
			res, err := r.Client.PatchState(ctx, r.version, patch)
			var ae *Error
			switch {
			case err == nil:
				r.Patched++
				r.Bytes += int64(len(patch))
				r.sent, r.sentDoc, r.version = body, doc, res.StateVersion
				return res, nil
			case errors.As(err, &ae) && (ae.Status == http.StatusConflict || ae.Status == http.StatusMethodNotAllowed || ae.Status == http.StatusNotFound):
				// The server's state moved on, or it takes no patches:
				// whole, below.
			default:
				return nil, err
			}
		}
	}
	res := new(StateReport)
	if err := r.Client.send(ctx, http.MethodPut, "/v1/device/state", json.RawMessage(body), res); err != nil {
		return nil, err
	}
	r.Whole++
	r.Bytes += int64(len(body))
	r.sent, r.sentDoc, r.version = body, doc, res.StateVersion
	return res, nil
}

// DeviceRelease returns one of the releases in the device's own target.
func (c *Client) DeviceRelease(ctx context.Context, id string) (*Release, error) {
	var r Release
	return &r, c.get(ctx, "/v1/device/releases/"+esc(id), &r)
}

// AddSigningKey registers a public key (ed25519:<base64>) that signs a
// fleet's releases; from then on the fleet refuses unsigned releases.
func (c *Client) AddSigningKey(ctx context.Context, fleet, publicKey string) (*SigningKey, error) {
	var k SigningKey
	return &k, c.send(ctx, http.MethodPost, "/v1/fleets/"+esc(fleet)+"/keys", AddSigningKeyRequest{PublicKey: publicKey}, &k)
}

// SigningKeys lists a fleet's release signing keys.
func (c *Client) SigningKeys(ctx context.Context, fleet string) ([]SigningKey, error) {
	var ks []SigningKey
	return ks, c.send(ctx, http.MethodGet, "/v1/fleets/"+esc(fleet)+"/keys", nil, &ks)
}

// RemoveSigningKey removes a fleet's signing key, by ID or public key.
func (c *Client) RemoveSigningKey(ctx context.Context, fleet, key string) error {
	return c.send(ctx, http.MethodDelete, "/v1/fleets/"+esc(fleet)+"/keys/"+esc(key), nil, nil)
}
