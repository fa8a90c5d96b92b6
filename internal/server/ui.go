package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/berth-robotics/berth/internal/release"
)

// The web dashboard, under /ui/: server-rendered pages (html/template, the
// templates, CSS and a small script embedded), live through server-sent
// events, usable without JavaScript.
//
// Login: a user's API token, posted on the login form, is checked exactly
// as the API's bearer auth checks it (authenticate); the server then keeps
// a session in memory — under the SHA-256 of a random session ID, with the
// user, the token and a CSRF token — and sets the ID in an HttpOnly,
// SameSite=Strict cookie (Secure over TLS). Every request re-reads the user
// (a changed role applies at once) and ends the session if its token was
// deleted or expired. Sessions live in the replica that made them: behind a
// load balancer without sticky sessions a user logs in again.
//
// Every POST carries the session's CSRF token in a form field and, when
// the browser sends them, Origin and Sec-Fetch-Site must say same-origin.
// Actions call the same handlers as the /v1 API (pause, resume, abort and
// start of rollouts), with the session's principal, so the roles, checks
// and audit entries are the API's own.

//go:embed ui
var uiFiles embed.FS

const (
	sessionCookie  = "berth_session"
	loginCookie    = "berth_login" // the login form's CSRF token (double submit)
	sessionTTL     = 12 * time.Hour
	maxSessions    = 10000
	uiLiveInterval = 2 * time.Second
)

// uiSession is one browser's login.
type uiSession struct {
	userID, tokenID string
	csrf            string
	expires         time.Time
}

// uiSessions are the sessions of this replica, by the SHA-256 of their ID.
type uiSessions struct {
	mu sync.Mutex
	m  map[string]uiSession
}

func sessionKey(id string) string {
	h := sha256.Sum256([]byte(id))
	return hex.EncodeToString(h[:])
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (ss *uiSessions) create(s uiSession, now time.Time) string {
	id := randomHex(32)
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.m == nil {
		ss.m = map[string]uiSession{}
	}
	if len(ss.m) >= maxSessions {
		for k, v := range ss.m {
			if now.After(v.expires) {
				delete(ss.m, k)
			}
		}
		if len(ss.m) >= maxSessions { // still full: the oldest half goes
			for k := range ss.m {
				delete(ss.m, k)
				if len(ss.m) < maxSessions/2 {
					break
				}
			}
		}
	}
	ss.m[sessionKey(id)] = s
	return id
}

func (ss *uiSessions) get(id string, now time.Time) (uiSession, bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s, ok := ss.m[sessionKey(id)]
	if ok && now.After(s.expires) {
		delete(ss.m, sessionKey(id))
		return uiSession{}, false
	}
	return s, ok
}

func (ss *uiSessions) drop(id string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.m, sessionKey(id))
}

// uiRequest is who asks, through which session, for a route that needs
// which role.
type uiRequest struct {
	p    principal
	csrf string
	sid  string
	need access
}

// stillAllowed reads the request's session and user again, for a stream
// that outlives its request's check: an error when the session ended or
// the user's role no longer reaches the route's; else the request as it
// stands now.
func (s *Server) stillAllowed(r *http.Request, u uiRequest) (uiRequest, error) {
	u2, err := s.uiSession(r)
	if err == nil {
		err = allowed(u2.p, u.need)
	}
	u2.need = u.need
	return u2, err
}

func (u uiRequest) canDeploy() bool { return allowed(u.p, needDeployer) == nil }
func (u uiRequest) isAdmin() bool   { return allowed(u.p, needAdmin) == nil }

// uiFunc handles one dashboard route.
type uiFunc func(w http.ResponseWriter, r *http.Request, u uiRequest) error

// uiRoute is one dashboard route: its pattern, the role it needs (needNone:
// no session), and its handler.
type uiRoute struct {
	Pattern string
	need    access
	h       uiFunc
}

func (s *Server) uiTable() []uiRoute {
	return []uiRoute{
		{"GET /ui/login", needNone, s.uiLoginPage},
		{"POST /ui/login", needNone, s.uiLogin},
		{"POST /ui/logout", needViewer, s.uiLogout},
		{"GET /ui/static/{file}", needNone, s.uiStatic},
		{"GET /ui/{$}", needViewer, s.uiOverview},
		{"GET /ui/devices/{device}", needViewer, s.uiDevice},
		{"GET /ui/devices/{device}/logs", needViewer, s.uiLogs},
		{"GET /ui/fleets/{fleet}/releases", needViewer, s.uiReleases},
		{"GET /ui/fleets/{fleet}/rollouts", needViewer, s.uiRollouts},
		{"POST /ui/fleets/{fleet}/rollouts", needDeployer, s.uiStartRollout},
		{"GET /ui/fleets/{fleet}/rollouts/{rollout}", needViewer, s.uiRollout},
		{"POST /ui/fleets/{fleet}/rollouts/{rollout}/{action}", needDeployer, s.uiRolloutAction},
		{"GET /ui/audit", needAdmin, s.uiAudit},
	}
}

// UIRoutes lists the dashboard's routes, for tests (docs/api.md documents
// each).
func (s *Server) UIRoutes() []Route {
	var rs []Route
	for _, r := range s.uiTable() {
		rs = append(rs, Route{Pattern: r.Pattern, Access: r.need.String()})
	}
	return rs
}

// uiRoutes mounts the dashboard, and sends browsers from / to it.
func (s *Server) uiRoutes() {
	s.ui.pages = mustParsePages()
	for _, r := range s.uiTable() {
		s.mux.Handle(r.Pattern, s.uiWrap(r.need, r.h))
	}
	s.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ui/", http.StatusSeeOther)
	})
	s.mux.HandleFunc("GET /ui", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ui/", http.StatusMovedPermanently)
	})
}

// uiState is the dashboard's part of a Server.
type uiState struct {
	sessions uiSessions
	pages    map[string]*template.Template
	sizes    uiSizes
}

// uiWrap finds the session, holds the request to the role and to CSRF
// protection, and renders errors as pages.
func (s *Server) uiWrap(need access, h uiFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w, status: http.StatusOK}
		hdr := w.Header()
		hdr.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		hdr.Set("X-Content-Type-Options", "nosniff")
		hdr.Set("Referrer-Policy", "same-origin")
		hdr.Set("X-Frame-Options", "DENY")
		var u uiRequest
		var err error
		if r.Method == http.MethodPost {
			err = sameOrigin(r)
		}
		if err == nil && need != needNone {
			u, err = s.uiSession(r)
			u.need = need
			if err == nil {
				err = allowed(u.p, need)
			}
			if err == nil && r.Method == http.MethodPost {
				err = checkCSRF(r, u.csrf)
			}
		}
		if err == nil {
			err = h(rec, r, u)
		}
		if err != nil {
			s.uiError(rec, r, u, err)
		}
		s.log.Log(r.Context(), levelOf(rec.status, r.Method), "request", "method", r.Method, "path", r.URL.Path, "route", "ui",
			"status", rec.status, "actor", u.p.actor(), "ms", time.Since(start).Milliseconds())
	})
}

func levelOf(status int, method string) slog.Level {
	if status < 400 && method == http.MethodGet {
		return slog.LevelDebug
	}
	return slog.LevelInfo
}

var errCSRF = errors.New("this form is stale or came from another site; reload the page and try again; nothing was changed")

// sameOrigin refuses a POST that a browser says came from elsewhere.
func sameOrigin(r *http.Request) error {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return fmt.Errorf("%w (Sec-Fetch-Site: %s): %w", errCSRF, site, release.ErrUnauthorized)
	}
	if o := r.Header.Get("Origin"); o != "" {
		ou, err := url.Parse(o)
		if err != nil || ou.Host != r.Host {
			return fmt.Errorf("%w (Origin %s): %w", errCSRF, o, release.ErrUnauthorized)
		}
	}
	return nil
}

// checkCSRF checks a form's csrf field against the session's token.
func checkCSRF(r *http.Request, want string) error {
	r.Body = http.MaxBytesReader(nil, r.Body, 64<<10)
	got := r.PostFormValue("csrf")
	if want == "" || subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
		return fmt.Errorf("%w: %w", errCSRF, release.ErrUnauthorized)
	}
	return nil
}

// uiSession finds the request's session and who it is for. The user is
// read again, and the token that opened the session must still be valid.
func (s *Server) uiSession(r *http.Request) (uiRequest, error) {
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" {
		return uiRequest{}, fmt.Errorf("log in first: %w", errUnauthenticated)
	}
	now := s.now()
	sess, ok := s.ui.sessions.get(c.Value, now)
	if !ok {
		return uiRequest{}, fmt.Errorf("the session ended; log in again: %w", errUnauthenticated)
	}
	ctx := r.Context()
	u, err := s.st.User(ctx, sess.userID)
	if errors.Is(err, release.ErrNotFound) {
		s.ui.sessions.drop(c.Value)
		return uiRequest{}, fmt.Errorf("the session's user is gone: %w", errUnauthenticated)
	}
	if err != nil {
		return uiRequest{}, err
	}
	ts, err := s.st.ListTokens(ctx, u.ID)
	if err != nil {
		return uiRequest{}, err
	}
	for _, t := range ts {
		if t.ID == sess.tokenID && !t.Expired(now) {
			return uiRequest{p: principal{user: &u, token: &t}, csrf: sess.csrf, sid: c.Value}, nil
		}
	}
	s.ui.sessions.drop(c.Value)
	return uiRequest{}, fmt.Errorf("the token this session was opened with was deleted or expired; log in again: %w", errUnauthenticated)
}

func (s *Server) uiLoginPage(w http.ResponseWriter, r *http.Request, _ uiRequest) error {
	csrf := randomHex(16)
	http.SetCookie(w, &http.Cookie{Name: loginCookie, Value: csrf, Path: "/ui/login", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil, MaxAge: 3600})
	return s.render(w, r, http.StatusOK, "login", uiPage{Title: "Log in", CSRF: csrf, Data: loginData{Next: safeNext(r.URL.Query().Get("next"))}})
}

type loginData struct {
	Next, Error string
}

// safeNext keeps a redirect after login on the dashboard.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/ui/") || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return "/ui/"
	}
	return next
}

func (s *Server) uiLogin(w http.ResponseWriter, r *http.Request, _ uiRequest) error {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	c, err := r.Cookie(loginCookie)
	if err != nil || c.Value == "" || subtle.ConstantTimeCompare([]byte(c.Value), []byte(r.PostFormValue("csrf"))) != 1 {
		return fmt.Errorf("%w: %w", errCSRF, release.ErrUnauthorized)
	}
	next := safeNext(r.PostFormValue("next"))
	// The token is checked exactly as the API checks a bearer token.
	r2 := r.Clone(r.Context())
	r2.Header = http.Header{"Authorization": {"Bearer " + strings.TrimSpace(r.PostFormValue("token"))}}
	p, err := s.authenticate(r2)
	if err == nil {
		err = allowed(p, needViewer)
	}
	if err != nil {
		if statusOf(err) >= 500 {
			return err
		}
		s.log.Info("dashboard login refused", "error", err)
		w.WriteHeader(http.StatusUnauthorized)
		csrf := randomHex(16)
		http.SetCookie(w, &http.Cookie{Name: loginCookie, Value: csrf, Path: "/ui/login", HttpOnly: true,
			SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil, MaxAge: 3600})
		return s.renderBody(w, "login", uiPage{Title: "Log in", CSRF: csrf, Data: loginData{Next: next,
			Error: "That token was not accepted: " + trimSentinels(err.Error()) + "."}})
	}
	id := s.ui.sessions.create(uiSession{userID: p.user.ID, tokenID: p.token.ID, csrf: randomHex(32), expires: s.now().Add(sessionTTL)}, s.now())
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: id, Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil, MaxAge: int(sessionTTL.Seconds())})
	http.SetCookie(w, &http.Cookie{Name: loginCookie, Path: "/ui/login", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	s.auditAs(r.Context(), p.actor(), "ui.login", "user/"+p.user.Name, map[string]any{"token": p.token.Prefix})
	http.Redirect(w, r, next, http.StatusSeeOther)
	return nil
}

func (s *Server) uiLogout(w http.ResponseWriter, r *http.Request, u uiRequest) error {
	s.ui.sessions.drop(u.sid)
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
	return nil
}

func (s *Server) uiStatic(w http.ResponseWriter, r *http.Request, _ uiRequest) error {
	name := r.PathValue("file")
	b, err := fs.ReadFile(uiFiles, "ui/static/"+name)
	if err != nil || strings.Contains(name, "/") {
		return fmt.Errorf("no such file: %w", release.ErrNotFound)
	}
	switch {
	case strings.HasSuffix(name, ".css"):
		w.Header().Set("Content-Type", "text/css; charset=utf-8")
	case strings.HasSuffix(name, ".js"):
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
	case strings.HasSuffix(name, ".svg"):
		w.Header().Set("Content-Type", "image/svg+xml")
	}
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, err = w.Write(b)
	return err
}

// uiError renders an error: a GET without a session goes to the login
// page; anything else gets a page saying what happened, with its status.
func (s *Server) uiError(w http.ResponseWriter, r *http.Request, u uiRequest, err error) {
	status := statusOf(err)
	if status == http.StatusUnauthorized && r.Method == http.MethodGet && !isStream(r) {
		http.Redirect(w, r, "/ui/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
		return
	}
	msg := trimSentinels(err.Error())
	if status >= 500 {
		if r.Context().Err() != nil {
			return
		}
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "error", err)
		msg = fmt.Sprintf("internal error at %s; nothing is known to have changed, the server's log has the details; try again", s.now().UTC().Format(time.RFC3339))
	}
	if status == http.StatusUnauthorized {
		msg = "Log in first."
	}
	if isStream(r) {
		http.Error(w, msg, status)
		return
	}
	pg := uiPage{Title: http.StatusText(status), Data: msg}
	if u.p.user != nil {
		pg = s.page(r, u, http.StatusText(status), msg)
	}
	w.WriteHeader(status)
	_ = s.renderBody(w, "error", pg)
}

func trimSentinels(msg string) string {
	for _, e := range []error{release.ErrInvalid, release.ErrNotFound, release.ErrConflict, release.ErrUnauthorized, errUnauthenticated, errTooMany} {
		msg = strings.TrimSuffix(msg, ": "+e.Error())
	}
	return msg
}

func isStream(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept"), "text/event-stream")
}

// callAPI runs a /v1 handler for the session's principal, with body as its
// JSON request and the path values given; what it answers is dropped (the
// dashboard shows the result by reading the store again), its error
// returned.
func (s *Server) callAPI(r *http.Request, u uiRequest, h apiFunc, body any, values map[string]string) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	r2 := r.Clone(context.WithoutCancel(r.Context()))
	r2.Body = io.NopCloser(bytes.NewReader(b))
	r2.ContentLength = int64(len(b))
	r2.Header = http.Header{"Content-Type": {"application/json"}}
	for k, v := range values {
		r2.SetPathValue(k, v)
	}
	return h(&discard{h: http.Header{}}, r2, u.p)
}

// discard is a ResponseWriter that keeps nothing.
type discard struct{ h http.Header }

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) Write(b []byte) (int, error) { return len(b), nil }
func (d *discard) WriteHeader(int)             {}
