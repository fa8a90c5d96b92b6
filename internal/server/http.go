package server

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/berth-robotics/berth/internal/registry"
	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/store"
)

// maxJSON bounds every JSON request body.
const maxJSON = 1 << 20

// Errors of this package's own, beside release's sentinels. Each becomes
// its status in writeError.
var (
	errUnauthenticated = errors.New("unauthenticated")        // 401: no, unknown or expired token
	errTooLarge        = errors.New("request body too large") // 413
	errTooMany         = errors.New("too many requests")      // 429
)

// principal is who is asking: a user with a token, or a device.
type principal struct {
	user   *store.User
	token  *store.Token
	device *store.Device
	// handled is the hub's mark (hub.handled) as of which the device's
	// target version is its version (taken before the device was read, or
	// kept with it in s.devices): a long poll that subscribes while the
	// mark is unchanged may trust that version (see target).
	handled int64
	// deviceKey is the hash of a device's token, which s.devices keeps it by.
	deviceKey [sha256.Size]byte
	// kept: the device is as s.devices kept it, not read for this
	// request; its target version may lag a change the hub has not handled
	// yet (deviceNow).
	kept bool
}

// deviceNow is the requesting device with its target version as stored
// now, for what must not lag a change (what content it may read).
func (s *Server) deviceNow(ctx context.Context, p principal) (store.Device, error) {
	d := *p.device
	if !p.kept {
		return d, nil
	}
	v, err := s.st.TargetVersion(ctx, d.ID)
	d.TargetVersion = v
	return d, err
}

// actor names the principal in the audit log and the request log.
func (p principal) actor() string {
	switch {
	case p.user != nil:
		return "user:" + p.user.Name
	case p.device != nil:
		return "device:" + p.device.ID
	}
	return "anonymous"
}

// settleLimit is the longest a request that can wait (needDeviceLater)
// waits for the long polls of a wake-up under way to be answered.
const settleLimit = 5 * time.Second

// apiFunc handles one endpoint; it writes a success itself and returns
// errors for wrap to write.
type apiFunc func(w http.ResponseWriter, r *http.Request, p principal) error

// wrap authenticates the request, holds it to the access its endpoint
// needs, runs h, writes its error if any, and logs the request.
func (s *Server) wrap(pattern string, need access, h apiFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w, status: http.StatusOK}
		var p principal
		var err error
		if need == needDeviceLater {
			s.hub.settle(r.Context(), settleLimit)
		}
		if need != needNone {
			if p, err = s.authenticate(r); err == nil {
				err = allowed(p, need)
			}
		}
		if err == nil {
			err = h(rec, r, p)
		}
		if err != nil {
			s.writeError(rec, r, err)
		}
		level := slog.LevelInfo
		if rec.status < 400 && (need >= needDevice || r.Method == http.MethodGet) {
			// Devices poll and report all the time; reads are many.
			level = slog.LevelDebug
		}
		s.log.Log(r.Context(), level, "request", "method", r.Method, "path", r.URL.Path, "route", pattern,
			"status", rec.status, "actor", p.actor(), "ms", time.Since(start).Milliseconds())
	})
}

// recorder remembers the status written.
type recorder struct {
	http.ResponseWriter
	status int
}

func (r *recorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// authenticate finds who sent the request from its bearer token. Device
// tokens start "bd_"; anything else is looked up as a user's API token.
func (s *Server) authenticate(r *http.Request) (principal, error) {
	h := r.Header.Get("Authorization")
	if _, pass, ok := r.BasicAuth(); ok && strings.HasPrefix(r.URL.Path, "/v2/") {
		// `docker login -u NAME -p TOKEN` for the registry: the token
		// says who; the name is not checked.
		h = "Bearer " + pass
	}
	if h == "" {
		return principal{}, fmt.Errorf("no token: send the header \"Authorization: Bearer <token>\": %w", errUnauthenticated)
	}
	scheme, secret, _ := strings.Cut(h, " ")
	secret = strings.TrimSpace(secret)
	if !strings.EqualFold(scheme, "Bearer") || secret == "" || len(secret) > 256 {
		return principal{}, fmt.Errorf("the Authorization header is not \"Bearer <token>\": %w", errUnauthenticated)
	}
	ctx := r.Context()
	if strings.HasPrefix(secret, "bd_") {
		key := tokenKey(secret)
		handled := s.hub.handled()
		if d, ok := s.devices.get(key, handled); ok {
			return principal{device: &d, handled: handled, deviceKey: key, kept: true}, nil
		}
		d, err := s.st.DeviceByToken(ctx, secret)
		if errors.Is(err, release.ErrNotFound) {
			return principal{}, fmt.Errorf("unknown device token (was the device deleted?): %w", errUnauthenticated)
		}
		if err != nil {
			return principal{}, err
		}
		s.devices.put(key, d, handled)
		return principal{device: &d, handled: handled, deviceKey: key}, nil
	}
	t, err := s.st.TokenBySecret(ctx, secret)
	if errors.Is(err, release.ErrNotFound) {
		return principal{}, fmt.Errorf("unknown token (deleted, or mistyped): %w", errUnauthenticated)
	}
	if err != nil {
		return principal{}, err
	}
	now := s.now()
	if t.Expired(now) {
		return principal{}, fmt.Errorf("the token %s… expired at %s; ask an admin for a new one: %w", t.Prefix, t.Expires.Format(time.RFC3339), errUnauthenticated)
	}
	u, err := s.st.User(ctx, t.UserID)
	if errors.Is(err, release.ErrNotFound) {
		return principal{}, fmt.Errorf("the token's user is gone: %w", errUnauthenticated)
	}
	if err != nil {
		return principal{}, err
	}
	if s.used.allow(t.ID, now, time.Minute) {
		if err := s.st.TouchToken(context.WithoutCancel(ctx), t.ID); err != nil {
			s.log.Warn("record token use", "token", t.Prefix, "error", err)
		}
	}
	return principal{user: &u, token: &t}, nil
}

var roleRank = map[store.Role]access{
	store.RoleViewer:   needViewer,
	store.RoleDeployer: needDeployer,
	store.RoleAdmin:    needAdmin,
}

// allowed holds p to what an endpoint needs.
func allowed(p principal, need access) error {
	if need >= needDevice {
		if p.device == nil {
			return fmt.Errorf("only devices use /v1/device/*; this is a user's token: %w", release.ErrUnauthorized)
		}
		return nil
	}
	if p.user == nil {
		return fmt.Errorf("a device token may use only /v1/device/*: %w", release.ErrUnauthorized)
	}
	if roleRank[p.user.Role] < need {
		return fmt.Errorf("this needs the %s role; %s is %s: %w", need, p.user.Name, p.user.Role, release.ErrUnauthorized)
	}
	return nil
}

// notFound answers requests no route matches: 405 if the path exists
// with other methods, else 404.
func (s *Server) notFound(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		if m == r.Method {
			continue
		}
		r2 := r.Clone(r.Context())
		r2.Method = m
		if _, pattern := s.mux.Handler(r2); pattern != "/" && pattern != "" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeJSON(w, http.StatusMethodNotAllowed, serverapi.ErrorBody{Error: fmt.Sprintf("%s %s: method not allowed; use %s", r.Method, r.URL.Path, strings.Join(allow, ", "))})
		return
	}
	writeJSON(w, http.StatusNotFound, serverapi.ErrorBody{Error: fmt.Sprintf("no such endpoint: %s %s (see docs/api.md)", r.Method, r.URL.Path)})
}

// statusOf maps an error to its HTTP status: release's sentinels and this
// package's own.
func statusOf(err error) int {
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe), errors.Is(err, errTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, errUnauthenticated):
		return http.StatusUnauthorized
	case errors.Is(err, release.ErrUnauthorized):
		return http.StatusForbidden
	case errors.Is(err, errTooMany):
		return http.StatusTooManyRequests
	case errors.Is(err, registry.ErrRange):
		return http.StatusRequestedRangeNotSatisfiable
	case errors.Is(err, registry.ErrUnsupported):
		return http.StatusMethodNotAllowed
	case errors.Is(err, registry.ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, release.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, release.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, release.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, release.ErrNoSpace):
		return http.StatusInsufficientStorage
	case errors.Is(err, release.ErrLocked):
		return http.StatusLocked
	}
	return http.StatusInternalServerError
}

// writeError is the one place errors become HTTP answers. A 5xx says
// nothing of its cause to the client; the log has it.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status := statusOf(err)
	msg := err.Error()
	if status >= 500 {
		if r.Context().Err() != nil {
			return // the client left; no one to answer
		}
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "error", err)
		msg = fmt.Sprintf("internal error at %s; nothing is known to have changed, the server's log has the details; try again", s.now().UTC().Format(time.RFC3339))
	}
	// The sentinels' own words at the end say nothing the status does not.
	for _, e := range []error{release.ErrInvalid, release.ErrNotFound, release.ErrConflict, release.ErrUnauthorized, errUnauthenticated, errTooMany} {
		msg = strings.TrimSuffix(msg, ": "+e.Error())
	}
	if strings.HasPrefix(r.URL.Path, "/v2/") {
		registry.WriteError(w, status, err, msg)
		return
	}
	switch status {
	case http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", `Bearer realm="berth"`)
	case http.StatusTooManyRequests:
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, status, serverapi.ErrorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// reply writes a success.
func reply(w http.ResponseWriter, status int, v any) { writeJSON(w, status, v) }

// decode reads a JSON request body of at most maxJSON bytes into v: one
// value, nothing after it. Strict refuses fields v does not have (typos in
// operators' requests); devices' bodies are read leniently, so that a newer
// agent can send more than this server knows.
func decode(w http.ResponseWriter, r *http.Request, v any, strict bool) error {
	return decodeLimit(w, r, v, strict, maxJSON)
}

// decodeLimit is decode with another bound than maxJSON.
func decodeLimit(w http.ResponseWriter, r *http.Request, v any, strict bool, limit int64) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	if strict {
		dec.DisallowUnknownFields()
	}
	err := dec.Decode(v)
	if err == nil {
		if dec.Decode(new(json.RawMessage)) != io.EOF {
			err = errors.New("more after the JSON value")
		}
	}
	var mbe *http.MaxBytesError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &mbe):
		return fmt.Errorf("request body over %d bytes; nothing was changed: %w", mbe.Limit, errTooLarge)
	case errors.Is(err, io.EOF):
		return fmt.Errorf("request body: empty, want JSON; nothing was changed: %w", release.ErrInvalid)
	}
	return fmt.Errorf("request body: %v; nothing was changed: %w", err, release.ErrInvalid)
}

// throttle lets a thing happen at most once per interval per key, in this
// process (each replica keeps its own).
type throttle struct {
	mu   sync.Mutex
	last map[string]time.Time
}

// allow reports whether key may go now, and if so records it.
func (t *throttle) allow(key string, now time.Time, every time.Duration) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.last == nil {
		t.last = map[string]time.Time{}
	}
	if last, ok := t.last[key]; ok && now.Sub(last) < every && !now.Before(last) {
		return false
	}
	if len(t.last) >= 1<<16 {
		// Forget what no longer limits anything, lest the map grow forever.
		for k, v := range t.last {
			if now.Sub(v) >= every {
				delete(t.last, k)
			}
		}
	}
	t.last[key] = now
	return true
}

// queryInt reads an integer query parameter in [0, max]; absent is def.
func queryInt(r *http.Request, name string, def, max int) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > max {
		return 0, fmt.Errorf("query parameter %s=%q: want a whole number from 0 to %d: %w", name, v, max, release.ErrInvalid)
	}
	return n, nil
}
