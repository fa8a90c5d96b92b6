package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-robotics/berth/internal/localapi"
	"github.com/berth-robotics/berth/internal/release"
)

// maxBody bounds request bodies on the local API.
const maxBody = 16 << 20

// Run recovers what a previous run left half done, then serves the local API
// on the unix socket until ctx ends. Operations under way when ctx ends stop
// where they are; their journal lets the next Run finish or undo them.
func (a *Agent) Run(ctx context.Context) error {
	a.ctx = ctx
	if err := os.MkdirAll(a.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	// One agent per state directory: a second one must not replay the
	// journal of a switch the first is running.
	lock, err := os.OpenFile(filepath.Join(a.cfg.StateDir, "berthd.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fmt.Errorf("another berthd uses %s (%v); stop it first, or give this one its own --state-dir: %w", a.cfg.StateDir, err, release.ErrConflict)
	}
	if err := a.Recover(ctx); err != nil {
		a.log.Error("recovery left work undone; the affected apps are reported as failed", "error", err)
	}
	ln, err := listenUnix(a.cfg.Socket)
	if err != nil {
		return err
	}
	if a.cfg.Fleet != nil {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.runFleet(ctx)
		}()
	}
	srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	a.log.Info("berthd serving", "socket", a.cfg.Socket, "name", a.cfg.Name, "state_dir", a.cfg.StateDir)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", a.cfg.Socket, err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	a.wg.Wait()
	return a.content.Close()
}

// listenUnix listens on path, readable and writable only by root and the
// berth group (if it exists).
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("socket dir: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("another berthd already serves %s; stop it or pick another --socket: %w", path, release.ErrConflict)
	}
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, err
	}
	if g, err := user.LookupGroup("berth"); err == nil {
		if gid, err := strconv.Atoi(g.Gid); err == nil {
			_ = os.Chown(path, os.Getuid(), gid)
		}
	}
	return ln, nil
}

// Handler is the local API.
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/state", func(w http.ResponseWriter, r *http.Request) {
		st, err := a.State(r.Context())
		reply(w, st, err)
	})
	mux.HandleFunc("POST /v1/apps/{app}/deploy", func(w http.ResponseWriter, r *http.Request) {
		var req localapi.DeployRequest
		if !decode(w, r, &req) {
			return
		}
		resp, err := a.Deploy(r.Context(), r.PathValue("app"), req)
		replyStatus(w, http.StatusAccepted, resp, err)
	})
	mux.HandleFunc("POST /v1/apps/{app}/plan", func(w http.ResponseWriter, r *http.Request) {
		var req localapi.DeployRequest
		if !decode(w, r, &req) {
			return
		}
		resp, err := a.Plan(r.Context(), r.PathValue("app"), req)
		reply(w, resp, err)
	})
	mux.HandleFunc("POST /v1/apps/{app}/rollback", func(w http.ResponseWriter, r *http.Request) {
		var req localapi.RollbackRequest
		if !decode(w, r, &req) {
			return
		}
		resp, err := a.Rollback(r.Context(), r.PathValue("app"), req)
		replyStatus(w, http.StatusAccepted, resp, err)
	})
	mux.HandleFunc("GET /v1/apps/{app}/releases", func(w http.ResponseWriter, r *http.Request) {
		rs, err := a.Releases(r.PathValue("app"))
		reply(w, rs, err)
	})
	mux.HandleFunc("POST /v1/apps/{app}/lock", func(w http.ResponseWriter, r *http.Request) {
		var req localapi.LockRequest
		if !decode(w, r, &req) {
			return
		}
		l, err := a.Lock(r.PathValue("app"), req)
		reply(w, l, err)
	})
	mux.HandleFunc("DELETE /v1/apps/{app}/lock", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]bool{"unlocked": true}, a.Unlock(r.PathValue("app")))
	})
	mux.HandleFunc("DELETE /v1/apps/{app}", func(w http.ResponseWriter, r *http.Request) {
		resp, err := a.Remove(r.Context(), r.PathValue("app"), r.URL.Query().Get("volumes") == "true", r.URL.Query().Get("by"))
		reply(w, resp, err)
	})
	mux.HandleFunc("GET /v1/apps/{app}/logs", a.serveLogs)
	mux.HandleFunc("GET /v1/events", a.serveEvents)
	mux.HandleFunc("GET /v1/content", a.serveContentInfo)
	mux.HandleFunc("POST /v1/content/missing", a.serveMissing)
	mux.HandleFunc("POST /v1/content/pieces", a.servePieces)
	mux.HandleFunc("PUT /v1/content/layers/{diffid}", a.serveIndex)
	mux.HandleFunc("POST /v1/content/load", a.serveLoad)
	mux.HandleFunc("POST /v1/content/chains", a.serveLoadChain)
	return validApp(mux)
}

// validApp refuses any /v1/apps/{app}/… request whose app is not a valid
// name before a handler sees it: app names become directory names.
func validApp(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rest, ok := strings.CutPrefix(r.URL.Path, "/v1/apps/"); ok {
			app, _, _ := strings.Cut(rest, "/")
			if !release.ValidName(app) {
				writeError(w, fmt.Errorf("app name %q: use lower-case letters, digits, '-' and '_': %w", app, release.ErrInvalid))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, fmt.Errorf("request body: %v: %w", err, release.ErrInvalid))
		return false
	}
	return true
}

func reply(w http.ResponseWriter, v any, err error) { replyStatus(w, http.StatusOK, v, err) }

func replyStatus(w http.ResponseWriter, status int, v any, err error) {
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeError is the one place agent errors become HTTP statuses.
func writeError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, release.ErrInvalid):
		status = http.StatusBadRequest
	case errors.Is(err, release.ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, release.ErrConflict):
		status = http.StatusConflict
	case errors.Is(err, release.ErrUnauthorized):
		status = http.StatusForbidden
	case errors.Is(err, release.ErrNoSpace):
		status = http.StatusInsufficientStorage
	case errors.Is(err, release.ErrLocked):
		status = http.StatusLocked
	}
	// Strip the sentinel's own words from the end: the client adds them back.
	msg := err.Error()
	for _, s := range []error{release.ErrInvalid, release.ErrNotFound, release.ErrConflict, release.ErrUnauthorized, release.ErrNoSpace, release.ErrLocked} {
		msg = strings.TrimSuffix(msg, ": "+s.Error())
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(localapi.ErrorBody{Error: msg})
}

func (a *Agent) serveEvents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	since, _ := strconv.ParseUint(q.Get("since"), 10, 64)
	follow := q.Get("follow") == "true"
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	a.events.follow(r.Context(), since, q.Get("app"), follow, func(e localapi.Event) bool {
		if e.Seq == 0 { // keep-alive
			_, err := w.Write([]byte("\n"))
			if fl != nil {
				fl.Flush()
			}
			return err == nil
		}
		if err := enc.Encode(e); err != nil {
			return false
		}
		if fl != nil {
			fl.Flush()
		}
		return true
	})
}

// serveLogs streams an app's container logs, each line prefixed with its service.
func (a *Agent) serveLogs(w http.ResponseWriter, r *http.Request) {
	app := r.PathValue("app")
	q := r.URL.Query()
	service, follow, tail := q.Get("service"), q.Get("follow") == "true", q.Get("tail")
	cs, err := a.eng.Containers(r.Context(), app)
	if err != nil {
		writeError(w, err)
		return
	}
	st, err := a.State(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	var ids, names []string
	for svc, s := range st.Apps[app].Services {
		if service == "" || svc == service {
			ids, names = append(ids, s.Container), append(names, svc)
		}
	}
	if len(ids) == 0 {
		what := "app " + app
		if service != "" {
			what = "service " + service + " of app " + app
		}
		writeError(w, fmt.Errorf("%s has no containers on this device (%d containers in the app): %w", what, len(cs), release.ErrNotFound))
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	var mu sync.Mutex
	var wg sync.WaitGroup
	width := 0
	for _, n := range names {
		width = max(width, len(n))
	}
	for i := range ids {
		pw := &prefixWriter{prefix: fmt.Sprintf("%-*s | ", width, names[i]), mu: &mu, w: w, flush: fl}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.eng.Logs(r.Context(), ids[i], follow, tail, pw, pw); err != nil {
				a.log.Warn("logs", "app", app, "error", err)
			}
			pw.Close()
		}()
	}
	wg.Wait()
}

// prefixWriter writes whole lines, each with a prefix, to a shared writer.
type prefixWriter struct {
	prefix string
	mu     *sync.Mutex
	w      io.Writer
	flush  http.Flusher
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			break
		}
		if err := p.line(p.buf[:i+1]); err != nil {
			return 0, err
		}
		p.buf = p.buf[i+1:]
	}
	return len(b), nil
}

func (p *prefixWriter) line(l []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := io.WriteString(p.w, p.prefix+string(l)); err != nil {
		return err
	}
	if p.flush != nil {
		p.flush.Flush()
	}
	return nil
}

// Close writes a last partial line.
func (p *prefixWriter) Close() {
	if len(p.buf) > 0 {
		_ = p.line(append(p.buf, '\n'))
		p.buf = nil
	}
}

// DialStdio joins stdin and stdout to the agent socket: the SSH transport
// runs `berthd dial-stdio` on the device and speaks the local API through it.
func DialStdio(ctx context.Context, socket string, stdin io.Reader, stdout io.Writer) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return fmt.Errorf("agent socket %s: %w (is berthd running here?)", socket, err)
	}
	uc := conn.(*net.UnixConn)
	stdinErr, done := make(chan error, 1), make(chan error, 1)
	go func() {
		_, err := io.Copy(uc, stdin)
		_ = uc.CloseWrite()
		stdinErr <- err
	}()
	go func() {
		_, err := io.Copy(stdout, uc)
		done <- err
	}()
	// The agent closing its side ends the session (a restarted berthd must
	// not leave the client hanging); stdin reaching EOF only half-closes.
	select {
	case err = <-done:
	case err = <-stdinErr:
		if err == nil {
			select {
			case err = <-done:
			case <-ctx.Done():
				err = ctx.Err()
			}
		}
	case <-ctx.Done():
		err = ctx.Err()
	}
	uc.Close()
	return err
}
