package server

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/store"
)

// uiPage is what every page's template gets.
type uiPage struct {
	Title     string
	User      *store.User
	CSRF      string
	CanDeploy bool
	IsAdmin   bool
	Fleets    []store.Fleet
	Fleet     string // the fleet the page is about ("" for none)
	Nav       string // which tab is current
	Flash     string
	Data      any
}

// page fills in what every page of a logged-in user shows.
func (s *Server) page(r *http.Request, u uiRequest, title string, data any) uiPage {
	pg := uiPage{Title: title, User: u.p.user, CSRF: u.csrf, CanDeploy: u.canDeploy(), IsAdmin: u.isAdmin(), Data: data}
	// ?done= is what the redirect after an action names; only those words
	// are shown, so a link cannot put its own text on the page.
	if done := r.URL.Query().Get("done"); slices.Contains(flashes, done) {
		pg.Flash = done
	}
	pg.Fleets, _ = s.st.ListFleets(r.Context())
	if len(pg.Fleets) > 0 {
		pg.Fleet = pg.Fleets[0].Name // the nav's; pages about a fleet set theirs
	}
	return pg
}

// flashes are the words ?done= may name: what a rollout action did.
var flashes = []string{"started", "paused", "resumed", "aborted"}

var uiFuncs = template.FuncMap{
	"short": release.ShortID,
	"ago": func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		// No seconds: a live section is sent again whenever its text
		// changes, and "5s ago" would change it every round for nothing
		// (the exact time is the <time> element's datetime).
		d := time.Since(t)
		switch {
		case d < time.Minute:
			return "under a minute ago"
		case d < time.Hour:
			return fmt.Sprintf("%dm ago", int(d.Minutes()))
		case d < 48*time.Hour:
			return fmt.Sprintf("%dh ago", int(d.Hours()))
		}
		return t.UTC().Format("2006-01-02")
	},
	"when":  func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") },
	"iso":   func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"bytes": humanBytes,
	"pct": func(n, total int) int {
		if total == 0 {
			return 0
		}
		return n * 100 / total
	},
	"plus":       func(a, b int) int { return a + b },
	"minus":      func(a, b int) int { return a - b },
	"dur":        func(d release.Duration) string { return time.Duration(d).String() },
	"phaseClass": phaseClass,
	"healthClass": func(h string) string {
		switch h {
		case "healthy", "running":
			return "ok"
		case "unhealthy", "exited", "dead", "restarting":
			return "bad"
		case "starting", "created":
			return "busy"
		}
		return "muted"
	},
	"statusClass": func(st string) string {
		switch st {
		case "running", "healthy", "completed":
			return "ok"
		case "failed", "aborted", serverapi.StatusRefused, serverapi.StatusDegraded:
			return "bad"
		case "paused", "updating", "reverted", serverapi.StatusOverride:
			return "busy"
		}
		return "muted"
	},
	"json":    compactJSON,
	"details": detailsText,
	"object": func(o string) string { // release/sha256:… → release/1a2b3c4d5e6f
		kind, id, ok := strings.Cut(o, "/")
		if ok && strings.HasPrefix(id, "sha256:") {
			return kind + "/" + release.ShortID(id)
		}
		return o
	},
	"join": strings.Join,
	"path": url.PathEscape,
}

// detailsText is an audit entry's details as "key value, …", release and
// image IDs shortened, for people to read.
func detailsText(b json.RawMessage) string {
	var m map[string]any
	if json.Unmarshal(b, &m) != nil {
		return compactJSON(b)
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		v := m[k]
		str, ok := v.(string)
		if !ok {
			out, _ := json.Marshal(v)
			str = string(out)
		} else if strings.HasPrefix(str, "sha256:") {
			str = release.ShortID(str)
		}
		parts = append(parts, k+" "+str)
	}
	return strings.Join(parts, ", ")
}

// compactJSON is JSON on one line, for people to read.
func compactJSON(b json.RawMessage) string {
	var v any
	if json.Unmarshal(b, &v) != nil {
		return string(b)
	}
	out, _ := json.Marshal(v)
	return string(out)
}

func phaseClass(p release.Phase) string {
	switch p {
	case release.PhaseIdle:
		return "ok"
	case release.PhaseRolledBack, release.PhaseFailed:
		return "bad"
	case "":
		return "muted"
	}
	return "busy"
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

// mustParsePages parses each page with the layout.
func mustParsePages() map[string]*template.Template {
	base := template.Must(template.New("layout.html").Funcs(uiFuncs).ParseFS(uiFiles, "ui/layout.html"))
	pages := map[string]*template.Template{}
	names, err := fs.Glob(uiFiles, "ui/page_*.html")
	if err != nil {
		panic(err)
	}
	for _, n := range names {
		name := strings.TrimSuffix(strings.TrimPrefix(n, "ui/page_"), ".html")
		pages[name] = template.Must(template.Must(base.Clone()).ParseFS(uiFiles, n))
	}
	return pages
}

// render writes a whole page.
func (s *Server) render(w http.ResponseWriter, r *http.Request, status int, name string, pg uiPage) error {
	var buf bytes.Buffer
	if err := s.ui.pages[name].ExecuteTemplate(&buf, "layout.html", pg); err != nil {
		return fmt.Errorf("render %s: %w", name, err)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, err := w.Write(buf.Bytes())
	return err
}

// renderBody writes a page after its status.
func (s *Server) renderBody(w http.ResponseWriter, name string, pg uiPage) error {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	return s.ui.pages[name].ExecuteTemplate(w, "layout.html", pg)
}

// livePage serves a page whose "live" section follows the store: a plain
// GET renders the page; with Accept: text/event-stream (the page's script
// asks so) it sends the section again, as a "live" event, whenever what
// it shows changed, reading every uiLiveInterval — or, on a fleet so big
// that reading and rendering the section takes longer than a tenth of
// that, ten times as long as the last read took, so that an open page
// never costs the server more than a tenth of a core.
func (s *Server) livePage(w http.ResponseWriter, r *http.Request, u uiRequest, name, title string, build func(ctx context.Context) (any, error), fill func(*uiPage)) error {
	ctx := r.Context()
	start := time.Now()
	data, err := build(ctx)
	if err != nil {
		return err
	}
	pg := s.page(r, u, title, data)
	if fill != nil {
		fill(&pg)
	}
	if !isStream(r) {
		return s.render(w, r, http.StatusOK, name, pg)
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	var last [32]byte
	took := time.Since(start)
	keepAlive := time.Now()
	for {
		var buf bytes.Buffer
		if err := s.ui.pages[name].ExecuteTemplate(&buf, "live", pg); err != nil {
			s.log.Warn("dashboard: render live section", "page", name, "error", err)
			return nil
		}
		sum := sha256.Sum256(buf.Bytes())
		if sum != last {
			last = sum
			if writeEvent(w, "live", buf.String()) != nil || rc.Flush() != nil {
				return nil
			}
			keepAlive = time.Now()
		} else if time.Since(keepAlive) > 15*time.Second {
			if _, err := w.Write([]byte(": keep-alive\n\n")); err != nil || rc.Flush() != nil {
				return nil
			}
			keepAlive = time.Now()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.logs.closed: // the server is shutting down
			return nil
		case <-time.After(max(uiLiveInterval, 10*took)):
		}
		u, err = s.stillAllowed(r, u)
		if err != nil {
			return nil // logged out, the token is gone, or the role changed: no more news
		}
		pg.User, pg.CanDeploy, pg.IsAdmin = u.p.user, u.canDeploy(), u.isAdmin()
		t0 := time.Now()
		pg.Data, err = build(ctx)
		took = time.Since(t0)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("dashboard: live section", "page", name, "error", err)
			}
			return nil
		}
	}
}

// writeEvent writes one server-sent event. A stream's lines end at CR, LF
// or CRLF, so data is split at each of them: a CR inside what a device
// reported (a reason, a service's name) cannot start a field of its own.
func writeEvent(w http.ResponseWriter, event, data string) error {
	var b strings.Builder
	b.WriteString("event: " + event + "\n")
	data = strings.ReplaceAll(strings.ReplaceAll(data, "\r\n", "\n"), "\r", "\n")
	for line := range strings.SplitSeq(data, "\n") {
		b.WriteString("data: " + line + "\n")
	}
	b.WriteString("\n")
	_, err := w.Write([]byte(b.String()))
	return err
}

// ---- fleet overview

type overviewData struct {
	Fleet   string
	Tag     string
	Tags    []string
	Devices []serverapi.Device
	Counts  overviewCounts
	Apps    []store.AppRelease // the fleet's releases for new devices
	Total   int
	// Devices are one page of overviewMax: the Page-th (from 1) of Pages,
	// from the First-th device (from 1).
	Page, Pages, First, Last int
}

type overviewCounts struct {
	Online, Offline             int
	Healthy, Unhealthy, Updates int
	// States counts apps by where their devices stand with them
	// (serverapi.AppStatus.State).
	States map[string]int
}

const overviewMax = 500

func (s *Server) uiOverview(w http.ResponseWriter, r *http.Request, u uiRequest) error {
	ctx := r.Context()
	fs, err := s.st.ListFleets(ctx)
	if err != nil {
		return err
	}
	if len(fs) == 0 {
		return s.render(w, r, http.StatusOK, "overview", s.page(r, u, "Fleet", overviewData{}))
	}
	name := r.URL.Query().Get("fleet")
	if name == "" {
		name = fs[0].Name
	}
	f, err := s.findFleet(ctx, name)
	if err != nil {
		return err
	}
	tag := r.URL.Query().Get("tag")
	page := 1
	if v := r.URL.Query().Get("page"); v != "" {
		if page, err = strconv.Atoi(v); err != nil || page < 1 {
			return fmt.Errorf("page %q: want a number from 1: %w", v, release.ErrInvalid)
		}
	}
	build := func(ctx context.Context) (any, error) { return s.overview(ctx, f, tag, page) }
	return s.livePage(w, r, u, "overview", "Fleet "+f.Name, build, func(pg *uiPage) { pg.Fleet, pg.Nav = f.Name, "overview" })
}

// overview counts all of a fleet's devices (those tagged tag, if given)
// and lists the page-th overviewMax of them, by name.
func (s *Server) overview(ctx context.Context, f store.Fleet, tag string, page int) (overviewData, error) {
	d := overviewData{Fleet: f.Name, Tag: tag, Counts: overviewCounts{States: map[string]int{}}, Page: page}
	first := (page - 1) * overviewMax // the index of the first device listed
	tags := map[string]bool{}
	var all []serverapi.Device
	err := s.eachDevice(ctx, f.ID, "", func(dev store.Device) {
		for _, t := range dev.Tags {
			tags[t] = true
		}
		if tag != "" && !slices.Contains(dev.Tags, tag) {
			return
		}
		all = append(all, s.deviceView(dev, f.Name))
	})
	if err != nil {
		return d, err
	}
	// Judged as the API judges them: a device counts as healthy only if
	// it runs its target with every service up, not when it refused the
	// target or a LAN deploy stands in for it.
	if err := s.judgeAll(ctx, all); err != nil {
		return d, err
	}
	for _, v := range all {
		d.Total++
		if v.Online {
			d.Counts.Online++
		} else {
			d.Counts.Offline++
		}
		healthy, updating := v.Online && len(v.Status) > 0, false
		for _, st := range v.Status {
			d.Counts.States[st.State]++
			healthy = healthy && st.Healthy()
			updating = updating || st.State == serverapi.StatusUpdating
		}
		switch {
		case healthy:
			d.Counts.Healthy++
		case updating:
			d.Counts.Updates++
		case v.Online && len(v.Status) > 0:
			d.Counts.Unhealthy++
		}
		if i := d.Total - 1; i >= first && i < first+overviewMax {
			d.Devices = append(d.Devices, v)
		}
	}
	d.Pages = max(1, (d.Total+overviewMax-1)/overviewMax)
	d.First, d.Last = first+1, first+len(d.Devices)
	d.Tags = slices.Sorted(maps.Keys(tags))
	d.Apps, err = s.st.FleetReleases(ctx, f.ID)
	return d, err
}

// ---- one device

type deviceData struct {
	Device serverapi.Device
	Apps   []deviceApp
	Env    []envVar
	Events []deviceEvent
	Logs   []store.LogLine
	LastID int64
}

type deviceApp struct {
	Name     string
	State    release.AppState
	Status   serverapi.AppStatus
	Target   *serverapi.TargetApp
	Version  string // of the target release
	Services []namedService
}

type namedService struct {
	Name string
	release.ServiceState
}

type envVar struct {
	Name, Layer, Service string
}

type deviceEvent struct {
	Time       time.Time
	Kind, Text string
	Class      string
}

func (s *Server) uiDevice(w http.ResponseWriter, r *http.Request, u uiRequest) error {
	ctx := r.Context()
	dev, err := s.st.Device(ctx, r.PathValue("device"))
	if err != nil {
		return err
	}
	f, err := s.st.Fleet(ctx, dev.FleetID)
	if err != nil {
		return err
	}
	build := func(ctx context.Context) (any, error) { return s.deviceData(ctx, dev.ID) }
	return s.livePage(w, r, u, "device", "Device "+dev.Name, build, func(pg *uiPage) { pg.Fleet, pg.Nav = f.Name, "overview" })
}

func (s *Server) deviceData(ctx context.Context, id string) (deviceData, error) {
	dev, err := s.st.Device(ctx, id)
	if err != nil {
		return deviceData{}, err
	}
	v, err := s.fullDeviceView(ctx, dev)
	if err != nil {
		return deviceData{}, err
	}
	d := deviceData{Device: v}
	for _, name := range slices.Sorted(maps.Keys(mergeKeys(v.Apps, v.Target))) {
		a := deviceApp{Name: name, State: v.Apps[name], Status: v.Status[name]}
		if t, ok := v.Target[name]; ok {
			a.Target = &t
			if rel, err := s.st.Release(ctx, dev.FleetID, t.Release); err == nil {
				a.Version = rel.Version
			}
		}
		for _, sn := range slices.Sorted(maps.Keys(a.State.Services)) {
			a.Services = append(a.Services, namedService{sn, a.State.Services[sn]})
		}
		d.Apps = append(d.Apps, a)
		if e := appEvent(name, a.State); e.Text != "" {
			d.Events = append(d.Events, e)
		}
	}
	layers, err := s.st.EnvLayers(ctx, dev.FleetID, dev.ID)
	if err != nil {
		return d, err
	}
	for _, l := range layers {
		layer := "fleet"
		if l.DeviceID != "" {
			layer = "device"
		}
		for _, k := range slices.Sorted(maps.Keys(l.Vars)) {
			d.Env = append(d.Env, envVar{Name: k, Layer: layer, Service: l.Service})
		}
	}
	// The agent's own events (stream "agent": switches, rollbacks with
	// their reasons, update locks) and the server's notes on its logs
	// (stream "berth") are events too, however busy its containers' logs.
	for _, stream := range []string{serverapi.LogStreamAgent, "berth"} {
		ls, err := s.st.Logs(ctx, store.LogFilter{DeviceID: dev.ID, Stream: stream, Limit: 20})
		if err != nil {
			return d, err
		}
		for _, l := range ls {
			text, kind := l.Text, "server"
			if stream == serverapi.LogStreamAgent {
				kind = "agent"
				if l.App != "" {
					text = l.App + ": " + text
				}
			}
			d.Events = append(d.Events, deviceEvent{Time: l.Time, Kind: kind, Text: text, Class: "muted"})
		}
	}
	notes, err := s.st.Logs(ctx, store.LogFilter{DeviceID: dev.ID, Limit: 200})
	if err != nil {
		return d, err
	}
	// What was done to it (pins, settings), and what rollouts did with it.
	es, err := s.st.ListAudit(ctx, store.AuditFilter{Object: "device/" + dev.ID, Limit: 20})
	if err != nil {
		return d, err
	}
	for _, e := range es {
		text := e.Actor
		if len(e.Details) > 0 {
			text += ": " + detailsText(e.Details)
		}
		d.Events = append(d.Events, deviceEvent{Time: e.Time, Kind: e.Action, Text: text, Class: "muted"})
	}
	ros, err := s.st.ListRollouts(ctx, dev.FleetID)
	if err != nil {
		return d, err
	}
	for i, ro := range ros {
		if i == 5 {
			break
		}
		rds, err := s.st.RolloutDevices(ctx, ro.ID)
		if err != nil {
			return d, err
		}
		for _, rd := range rds {
			if rd.DeviceID != dev.ID || rd.Status == store.RolloutDevicePending {
				continue
			}
			text := fmt.Sprintf("rollout %s of %s: %s", ro.ID, ro.App, rd.Status)
			if rd.Detail != "" {
				text += ": " + rd.Detail
			}
			class := map[string]string{serverapi.RolloutDeviceFailed: "bad", serverapi.RolloutDeviceHealthy: "ok"}[rd.Status]
			d.Events = append(d.Events, deviceEvent{Time: rd.Updated, Kind: "rollout", Text: text, Class: cmp.Or(class, "busy")})
		}
	}
	slices.SortStableFunc(d.Events, func(a, b deviceEvent) int { return b.Time.Compare(a.Time) })
	if len(d.Events) > 20 {
		d.Events = d.Events[:20]
	}
	d.Logs = notes
	if len(notes) > 0 {
		d.LastID = notes[len(notes)-1].ID
	}
	return d, nil
}

func mergeKeys(a map[string]release.AppState, b map[string]serverapi.TargetApp) map[string]bool {
	m := map[string]bool{}
	for k := range a {
		m[k] = true
	}
	for k := range b {
		m[k] = true
	}
	return m
}

// appEvent says what an app's state tells beyond its phase: a rollback and
// its reason, a local override, a held lock.
func appEvent(app string, a release.AppState) deviceEvent {
	e := deviceEvent{Time: a.Updated, Class: phaseClass(a.Phase)}
	switch {
	case a.Phase == release.PhaseRolledBack || a.FleetFailed != "":
		e.Kind, e.Class = "rollback", "bad"
		e.Text = fmt.Sprintf("%s: release %s was rolled back", app, release.ShortID(cmp.Or(a.FleetFailed, a.Target)))
		if a.Error != "" {
			e.Text = app + ": " + a.Error
		}
	case a.Error != "":
		e.Kind, e.Text = "error", app+": "+a.Error
	case a.Phase == release.PhaseWaitingLock && a.Lock != nil:
		e.Kind, e.Text = "lock", fmt.Sprintf("%s: waiting for the update lock held by %s", app, a.Lock.Holder)
	case a.Override != nil:
		e.Kind, e.Text, e.Time, e.Class = "override", fmt.Sprintf("%s: local override deployed by %s", app, a.Override.By), a.Override.Since, "busy"
	case !a.Phase.AtRest():
		e.Kind, e.Text = "switch", fmt.Sprintf("%s: %s %s", app, a.Phase, release.ShortID(a.Target))
	}
	return e
}

// uiLogs serves a device's logs: as a page of the newest lines, or, to the
// page's script (Accept: text/event-stream), new lines as "log" events as
// they arrive, after the ID in ?after=.
func (s *Server) uiLogs(w http.ResponseWriter, r *http.Request, u uiRequest) error {
	ctx := r.Context()
	dev, err := s.st.Device(ctx, r.PathValue("device"))
	if err != nil {
		return err
	}
	if !isStream(r) {
		ls, err := s.st.Logs(ctx, store.LogFilter{DeviceID: dev.ID, Limit: logsPage})
		if err != nil {
			return err
		}
		f, err := s.st.Fleet(ctx, dev.FleetID)
		if err != nil {
			return err
		}
		pg := s.page(r, u, "Logs of "+dev.Name, logsData{Device: dev, Logs: ls})
		pg.Fleet, pg.Nav = f.Name, "overview"
		return s.render(w, r, http.StatusOK, "logs", pg)
	}
	after, _ := strconv.ParseInt(r.URL.Query().Get("after"), 10, 64)
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		after, _ = strconv.ParseInt(v, 10, 64)
	}
	if after <= 0 {
		after = -1
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if rc.Flush() != nil {
		return nil
	}
	keepAlive := time.NewTicker(followKeepAlive)
	defer keepAlive.Stop()
	f := store.LogFilter{DeviceID: dev.ID, After: after, Limit: logsPage}
	for {
		wake := s.logs.wait(dev.ID)
		for {
			ls, err := s.st.Logs(ctx, f)
			if err != nil {
				return nil
			}
			for _, l := range ls {
				b, _ := json.Marshal(logView(l))
				if _, err := fmt.Fprintf(w, "event: log\nid: %d\ndata: %s\n\n", l.ID, b); err != nil {
					return nil
				}
				f.After = l.ID
			}
			if rc.Flush() != nil {
				return nil
			}
			if len(ls) < f.Limit {
				break
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.logs.closed:
			return nil
		case <-keepAlive.C:
			if _, err := w.Write([]byte(": keep-alive\n\n")); err != nil || rc.Flush() != nil {
				return nil
			}
		case <-wake:
		case <-time.After(uiLiveInterval): // lines stored by another replica
		}
		if _, err := s.stillAllowed(r, u); err != nil {
			return nil // logged out, the token is gone, or the role changed
		}
	}
}

type logsData struct {
	Device store.Device
	Logs   []store.LogLine
}

// ---- releases

type releasesData struct {
	Fleet    string
	Releases []releaseRow
	Active   map[string]string // app → active rollout ID
}

type releaseRow struct {
	serverapi.Release
	Services []releaseService
	Running  int // devices that report it running
	Devices  []string
	Size     uint64 // the images' layers, uncompressed; 0: unknown
	// Need is what a device running From (the app's release before) must
	// fetch for it, when known.
	Need      uint64
	NeedKnown bool
	From      string
}

func (r releaseRow) imageIDs() []string {
	var ids []string
	for _, s := range r.Services {
		if s.ImageID != "" {
			ids = append(ids, s.ImageID)
		}
	}
	return ids
}

type releaseService struct {
	Name, Image, ImageID string
	Size                 uint64
}

func (s *Server) uiReleases(w http.ResponseWriter, r *http.Request, u uiRequest) error {
	ctx := r.Context()
	f, err := s.findFleet(ctx, r.PathValue("fleet"))
	if err != nil {
		return err
	}
	build := func(ctx context.Context) (any, error) { return s.releasesData(ctx, f) }
	return s.livePage(w, r, u, "releases", "Releases of "+f.Name, build, func(pg *uiPage) { pg.Fleet, pg.Nav = f.Name, "releases" })
}

func (s *Server) releasesData(ctx context.Context, f store.Fleet) (releasesData, error) {
	d := releasesData{Fleet: f.Name, Active: map[string]string{}}
	rs, err := s.st.ListReleases(ctx, store.ReleaseFilter{FleetID: f.ID, Limit: 50})
	if err != nil {
		return d, err
	}
	running := map[string][]string{}
	err = s.eachDevice(ctx, f.ID, "", func(dev store.Device) {
		v := s.deviceView(dev, f.Name)
		for _, a := range v.Apps {
			if a.FleetRelease != "" {
				running[a.FleetRelease] = append(running[a.FleetRelease], v.Name)
			}
		}
	})
	if err != nil {
		return d, err
	}
	for _, rel := range rs {
		v, err := releaseView(rel, true)
		if err != nil {
			return d, err
		}
		row := releaseRow{Release: v, Running: len(running[rel.ID]), Devices: running[rel.ID]}
		if len(row.Devices) > 10 {
			row.Devices = row.Devices[:10]
		}
		for _, name := range slices.Sorted(maps.Keys(v.Spec.Services)) {
			svc := v.Spec.Services[name]
			rs := releaseService{Name: name, Image: svc.Image, ImageID: svc.ImageID}
			rs.Size = s.imageSize(svc.ImageID)
			row.Size += rs.Size
			row.Services = append(row.Services, rs)
		}
		d.Releases = append(d.Releases, row)
	}
	// What a device on the app's release before each one fetches for it.
	for i := range d.Releases {
		row := &d.Releases[i]
		for _, prev := range d.Releases[i+1:] {
			if prev.App != row.App {
				continue
			}
			row.From = prev.Version
			row.Need, row.NeedKnown = s.needBytes(prev.ID, row.ID, prev.imageIDs(), row.imageIDs())
			break
		}
	}
	ros, err := s.st.ListRollouts(ctx, f.ID)
	if err != nil {
		return d, err
	}
	for _, ro := range ros {
		if ro.Status == store.RolloutRunning || ro.Status == store.RolloutPaused {
			d.Active[ro.App] = ro.ID
		}
	}
	return d, nil
}

// ---- rollouts

type rolloutsData struct {
	Fleet    string
	Rollouts []serverapi.Rollout
}

func (s *Server) uiRollouts(w http.ResponseWriter, r *http.Request, u uiRequest) error {
	ctx := r.Context()
	f, err := s.findFleet(ctx, r.PathValue("fleet"))
	if err != nil {
		return err
	}
	build := func(ctx context.Context) (any, error) {
		d := rolloutsData{Fleet: f.Name}
		ros, err := s.st.ListRollouts(ctx, f.ID)
		if err != nil {
			return d, err
		}
		for i, ro := range ros {
			if i == 50 {
				break
			}
			v, err := s.rolloutView(ctx, f, ro, false)
			if err != nil {
				return d, err
			}
			d.Rollouts = append(d.Rollouts, v)
		}
		return d, nil
	}
	return s.livePage(w, r, u, "rollouts", "Rollouts of "+f.Name, build, func(pg *uiPage) { pg.Fleet, pg.Nav = f.Name, "rollouts" })
}

func (s *Server) uiRollout(w http.ResponseWriter, r *http.Request, u uiRequest) error {
	ctx := r.Context()
	f, err := s.findFleet(ctx, r.PathValue("fleet"))
	if err != nil {
		return err
	}
	ro, err := s.findRollout(ctx, f, r.PathValue("rollout"))
	if err != nil {
		return err
	}
	build := func(ctx context.Context) (any, error) {
		ro, err := s.st.Rollout(ctx, ro.ID)
		if err != nil {
			return nil, err
		}
		return s.rolloutView(ctx, f, ro, true)
	}
	return s.livePage(w, r, u, "rollout", "Rollout "+ro.ID, build, func(pg *uiPage) { pg.Fleet, pg.Nav = f.Name, "rollouts" })
}

// uiStartRollout starts a rollout from the releases page's form, through
// the API's own handler.
func (s *Server) uiStartRollout(w http.ResponseWriter, r *http.Request, u uiRequest) error {
	req := serverapi.StartRolloutRequest{Release: r.PostFormValue("release"), Canary: strings.TrimSpace(r.PostFormValue("canary")),
		Tag: strings.TrimSpace(r.PostFormValue("tag"))}
	var err error
	if v := strings.TrimSpace(r.PostFormValue("batch")); v != "" {
		if req.Batch, err = strconv.Atoi(v); err != nil {
			return fmt.Errorf("batch %q: want a number of devices: %w", v, release.ErrInvalid)
		}
	}
	if v := strings.TrimSpace(r.PostFormValue("max_failures")); v != "" {
		if req.MaxFailures, err = strconv.Atoi(v); err != nil {
			return fmt.Errorf("max failures %q: want a number: %w", v, release.ErrInvalid)
		}
	}
	if v := strings.TrimSpace(r.PostFormValue("stage_timeout")); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("stage timeout %q: want a duration like 10m: %w", v, release.ErrInvalid)
		}
		req.StageTimeout = release.Duration(d)
	}
	if v := strings.TrimSpace(r.PostFormValue("devices")); v != "" {
		req.Devices = strings.FieldsFunc(v, func(c rune) bool { return c == ',' || c == ' ' })
	}
	fleet := r.PathValue("fleet")
	if err := s.callAPI(r, u, s.startRollout, req, map[string]string{"fleet": fleet}); err != nil {
		return err
	}
	// The new rollout is the fleet's newest.
	f, err := s.findFleet(r.Context(), fleet)
	if err != nil {
		return err
	}
	ros, err := s.st.ListRollouts(r.Context(), f.ID)
	if err != nil || len(ros) == 0 {
		return errors.Join(err, errors.New("the rollout started but is not listed"))
	}
	http.Redirect(w, r, "/ui/fleets/"+url.PathEscape(f.Name)+"/rollouts/"+url.PathEscape(ros[0].ID)+"?done=started", http.StatusSeeOther)
	return nil
}

// uiRolloutAction pauses, resumes or aborts a rollout through the API's
// own handlers.
func (s *Server) uiRolloutAction(w http.ResponseWriter, r *http.Request, u uiRequest) error {
	var h apiFunc
	action := r.PathValue("action")
	switch action {
	case "pause":
		h = s.pauseRollout
	case "resume":
		h = s.resumeRollout
	case "abort":
		h = s.abortRollout
	default:
		return fmt.Errorf("no action %q: pause, resume or abort: %w", action, release.ErrNotFound)
	}
	reason := strings.TrimSpace(r.PostFormValue("reason"))
	body := serverapi.RolloutActionRequest{Reason: reason}
	values := map[string]string{"fleet": r.PathValue("fleet"), "rollout": r.PathValue("rollout")}
	if err := s.callAPI(r, u, h, body, values); err != nil {
		return err
	}
	done := map[string]string{"pause": "paused", "resume": "resumed", "abort": "aborted"}[action]
	http.Redirect(w, r, "/ui/fleets/"+url.PathEscape(values["fleet"])+"/rollouts/"+url.PathEscape(values["rollout"])+"?done="+done, http.StatusSeeOther)
	return nil
}

// ---- audit

type auditData struct {
	Entries []store.AuditEntry
	Action  string
	Actor   string
	Next    int64
}

func (s *Server) uiAudit(w http.ResponseWriter, r *http.Request, u uiRequest) error {
	q := r.URL.Query()
	f := store.AuditFilter{Action: q.Get("action"), Actor: q.Get("actor"), Limit: 100}
	if v := q.Get("before"); v != "" {
		f.Before, _ = strconv.ParseInt(v, 10, 64)
	}
	build := func(ctx context.Context) (any, error) {
		es, err := s.st.ListAudit(ctx, f)
		d := auditData{Entries: es, Action: f.Action, Actor: f.Actor}
		if len(es) == f.Limit {
			d.Next = es[len(es)-1].ID
		}
		return d, err
	}
	if f.Before != 0 {
		// An older page does not change: no live updates.
		d, err := build(r.Context())
		if err != nil {
			return err
		}
		pg := s.page(r, u, "Audit log", d)
		pg.Nav = "audit"
		return s.render(w, r, http.StatusOK, "audit", pg)
	}
	return s.livePage(w, r, u, "audit", "Audit log", build, func(pg *uiPage) { pg.Nav = "audit" })
}
