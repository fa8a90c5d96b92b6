// Package server is berth's fleet server: the HTTP+JSON API under /v1 that
// operators, CI and devices talk to, over a store.Store (SQLite or
// PostgreSQL). It authenticates users' API tokens and devices' tokens, holds
// each to its role (admin > deployer > viewer; a device only to
// /v1/device/*, and there only to its own target and releases), records an
// audit entry for every change, and wakes devices long-polling their target
// within a second of a change — on this replica through an in-process hub,
// on others through PostgreSQL's LISTEN/NOTIFY.
//
// This is the one place where errors become HTTP statuses (writeError).
// Serve runs it as `berth server` does: the store, a bootstrap admin token,
// TLS, graceful shutdown. The wire types and a client are in serverapi.
package server

import (
	"context"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/store"
)

// Options steer a Server; the zero value is usable.
type Options struct {
	Logger *slog.Logger
	// Now is the clock for "online", token expiry and rate limits.
	Now func() time.Time
	// PollInterval is how often devices are expected to poll their target
	// (the long poll's wait); a device not seen for three of them is
	// offline. Default 30s.
	PollInterval time.Duration
	// StateInterval is the least time between two state reports of one
	// device; a report sooner is answered 429. Default 1s.
	StateInterval time.Duration
	// ListenDSN, on PostgreSQL, is the DSN on which Run LISTENs for target
	// changes made by other replicas. Empty: no LISTEN (SQLite: one process).
	ListenDSN string
	// Rescan is how often Run looks for target changes that no
	// notification announced (a LISTEN connection being re-established,
	// a change made by something else). Default 5s.
	Rescan time.Duration
	// Content is where uploaded images are kept (OpenContent). Nil: the
	// content endpoints answer 404 and releases can pin no image.
	Content *Content
	// MaxBlob bounds one blob pushed through /v2 as sent, MaxLayer a
	// pushed layer decompressed (a bomb stops there). Defaults 4 GiB and
	// 16 GiB.
	MaxBlob, MaxLayer int64
	// LogsKept is how many of each device's newest log lines are kept.
	// Default 10,000.
	LogsKept int
}

// Server serves the fleet API over a store.
type Server struct {
	st   store.Store
	log  *slog.Logger
	now  func() time.Time
	opts Options
	hub  *hub
	logs *logNotifier
	mux  *http.ServeMux

	content *contentState // uploaded images, and who may read them
	ui      uiState       // the dashboard's sessions and templates (ui.go)

	fleetNames sync.Map        // fleet ID → name (names never change)
	targets    renderedTargets // targets as sent, shared by devices alike
	devices    deviceTokens    // devices by token, as of the hub's mark (devicetokens.go)
	// What the targets of devices woken together are made of, read for
	// all of them at once (renderTarget).
	targetParts *groupCommit[store.Device, targetParts]

	// Devices' writes, grouped into one transaction when many come at once.
	touches     *groupCommit[string, error]
	stateWrites *groupCommit[store.StateReport, store.StateResult]
	// lastStates is each device's last state this replica stored, so that
	// a patch against it needs no read (the write checks the version).
	lastStates stateCache

	seen   throttle // devices' last_seen writes, at most one per PollInterval/3
	used   throttle // tokens' last_used writes, at most one a minute
	states throttle // state reports, at most one per StateInterval
}

// New returns a server over st. Call Run for the background work the long
// polls need, and serve Handler.
func New(st store.Store, opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = 30 * time.Second
	}
	if opts.StateInterval <= 0 {
		opts.StateInterval = time.Second
	}
	if opts.Rescan <= 0 {
		opts.Rescan = 5 * time.Second
	}
	if opts.MaxBlob <= 0 {
		opts.MaxBlob = defaultMaxBlob
	}
	if opts.LogsKept <= 0 {
		opts.LogsKept = defaultLogsKept
	}
	if opts.MaxLayer <= 0 {
		opts.MaxLayer = defaultMaxLayer
	}
	s := &Server{
		st:   st,
		log:  opts.Logger,
		now:  opts.Now,
		opts: opts,
		hub:  newHub(st, opts.Logger),
		logs: newLogNotifier(),
		mux:  http.NewServeMux(),

		content: newContentState(opts.Content),
	}
	s.touches = newGroupCommit(1000, func(ctx context.Context, ids []string) []error {
		err := st.TouchDevices(ctx, ids)
		return slices.Repeat([]error{err}, len(ids))
	})
	s.stateWrites = newGroupCommit(500, func(ctx context.Context, reports []store.StateReport) []store.StateResult {
		rs, err := st.SetDeviceStates(ctx, reports)
		if err != nil {
			return slices.Repeat([]store.StateResult{{Err: err}}, len(reports))
		}
		return rs
	})
	s.targetParts = newGroupCommit(1000, func(ctx context.Context, ds []store.Device) []targetParts {
		parts, err := st.TargetParts(ctx, ds)
		out := make([]targetParts, len(ds))
		for i, d := range ds {
			out[i] = targetParts{parts: parts[d.ID], err: err}
		}
		return out
	})
	s.routes()
	return s
}

// Run does the server's background work until ctx ends: it watches the
// store's target version and wakes the long polls whose device's target
// changed, and on PostgreSQL LISTENs for changes other replicas make; and
// it runs the rollout engine (rollout_engine.go). When it returns, every
// long poll under way has been answered (304) or soon is.
func (s *Server) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	if s.opts.ListenDSN != "" {
		wg.Go(func() { s.listen(ctx, s.opts.ListenDSN) })
	}
	wg.Go(func() { s.runRollouts(ctx) })
	wg.Go(func() {
		<-ctx.Done()
		s.logs.close()
	})
	s.hub.run(ctx, s.opts.Rescan)
	wg.Wait()
	return nil
}

// Handler is the API.
func (s *Server) Handler() http.Handler { return s.mux }

// The access an endpoint needs.
type access int

const (
	needNone     access = iota // no token (registration, health)
	needViewer                 // a user with at least this role
	needDeployer               //
	needAdmin                  //
	needDevice                 // a device's token
	// A device's token, on a request that can wait: it lets the long
	// polls of a wake-up under way be answered first (hub.settle).
	needDeviceLater
)

func (a access) String() string {
	switch a {
	case needViewer:
		return serverapi.RoleViewer
	case needDeployer:
		return serverapi.RoleDeployer
	case needAdmin:
		return serverapi.RoleAdmin
	case needDevice, needDeviceLater:
		return "device"
	}
	return "public"
}

// routes lists every endpoint with the access it needs; docs/api.md
// documents each. The auth matrix test walks this same list (Routes).
func (s *Server) routes() {
	for _, r := range s.table() {
		s.mux.Handle(r.Pattern, s.wrap(r.Pattern, r.need, r.h))
	}
	s.uiRoutes() // the dashboard, under /ui/ (ui.go)
	s.mux.HandleFunc("/", s.notFound)
}

// route is one endpoint.
type route struct {
	Pattern string
	need    access
	h       apiFunc
}

func (s *Server) table() []route {
	return slices.Concat([]route{
		{"GET /v1/health", needNone, s.health},
		{"POST /v1/register", needNone, s.register},

		{"GET /v1/whoami", needViewer, s.whoami},
		{"POST /v1/users", needAdmin, s.createUser},
		{"GET /v1/users", needAdmin, s.listUsers},
		{"GET /v1/users/{user}/tokens", needAdmin, s.listTokens},
		{"POST /v1/users/{user}/tokens", needAdmin, s.createToken},
		{"DELETE /v1/users/{user}/tokens/{token}", needAdmin, s.deleteToken},

		{"POST /v1/fleets", needAdmin, s.createFleet},
		{"GET /v1/fleets", needViewer, s.listFleets},
		{"GET /v1/fleets/{fleet}", needViewer, s.getFleet},
		{"POST /v1/fleets/{fleet}/provisioning-key", needAdmin, s.rotateKey},
		{"DELETE /v1/fleets/{fleet}/provisioning-key", needAdmin, s.revokeKey},
		{"GET /v1/fleets/{fleet}/keys", needViewer, s.listSigningKeys},
		{"POST /v1/fleets/{fleet}/keys", needAdmin, s.addSigningKey},
		{"DELETE /v1/fleets/{fleet}/keys/{key}", needAdmin, s.removeSigningKey},
		{"GET /v1/fleets/{fleet}/env", needDeployer, s.getEnv}, // values may be secrets
		{"PUT /v1/fleets/{fleet}/env", needDeployer, s.setEnv},
		{"GET /v1/fleets/{fleet}/env/{service}", needDeployer, s.getEnv}, // values may be secrets
		{"PUT /v1/fleets/{fleet}/env/{service}", needDeployer, s.setEnv},

		{"GET /v1/fleets/{fleet}/devices", needViewer, s.listDevices},
		{"GET /v1/devices/{device}", needViewer, s.getDevice},
		{"PATCH /v1/devices/{device}", needDeployer, s.updateDevice},
		{"DELETE /v1/devices/{device}", needAdmin, s.deleteDevice},
		{"GET /v1/devices/{device}/env", needDeployer, s.getEnv}, // values may be secrets
		{"PUT /v1/devices/{device}/env", needDeployer, s.setEnv},
		{"GET /v1/devices/{device}/env/{service}", needDeployer, s.getEnv}, // values may be secrets
		{"PUT /v1/devices/{device}/env/{service}", needDeployer, s.setEnv},
		{"POST /v1/devices/{device}/pin", needDeployer, s.pin},
		{"DELETE /v1/devices/{device}/pin/{app}", needDeployer, s.unpin},
		{"POST /v1/devices/{device}/apps/{app}/retry", needDeployer, s.retryApp},
		{"GET /v1/devices/{device}/logs", needViewer, s.deviceLogs},

		{"POST /v1/fleets/{fleet}/releases", needDeployer, s.createRelease},
		{"GET /v1/fleets/{fleet}/releases", needViewer, s.listReleases},
		{"GET /v1/fleets/{fleet}/releases/{release}", needViewer, s.getRelease},
		{"POST /v1/fleets/{fleet}/releases/{release}/assign", needDeployer, s.assignRelease},

		{"GET /v1/device/target", needDevice, s.target},
		{"PUT /v1/device/state", needDeviceLater, s.reportState},
		{"PATCH /v1/device/state", needDeviceLater, s.patchState},
		{"GET /v1/device/releases/{release}", needDevice, s.deviceRelease},
		{"POST /v1/device/logs", needDeviceLater, s.shipLogs},

		{"GET /v1/audit", needAdmin, s.listAudit},
	},
		s.contentRoutes(),
		s.rolloutRoutes(),
		s.registryRoutes(),
	)
}

// Route is an endpoint as tests see it: its pattern and the access it needs.
type Route struct {
	Pattern string // "METHOD /v1/path/{param}"
	Access  string // "public", "viewer", "deployer", "admin" or "device"
}

// Routes lists every endpoint, for tests that must cover them all.
func (s *Server) Routes() []Route {
	var rs []Route
	for _, r := range s.table() {
		rs = append(rs, Route{Pattern: r.Pattern, Access: r.need.String()})
	}
	return rs
}

func (s *Server) health(w http.ResponseWriter, r *http.Request, _ principal) error {
	reply(w, http.StatusOK, map[string]bool{"ok": true})
	return nil
}
