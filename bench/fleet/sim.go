package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
)

// app is the one app of the simulated fleet.
const app = "nav"

// newTransport is the one transport all simulated devices share: enough
// idle connections for every device's long poll and its reports, dialled
// from several loopback source addresses so that no pair of addresses
// runs out of ephemeral ports.
func newTransport(devices int) *http.Transport {
	var next atomic.Uint32
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+next.Add(1)%4))}
			d := net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second, LocalAddr: src}
			return d.DialContext(ctx, network, addr)
		},
		MaxIdleConns:        2*devices + 256,
		MaxIdleConnsPerHost: 2*devices + 256,
		IdleConnTimeout:     5 * time.Minute,
	}
	return tr
}

// recorder keeps durations of one kind of request.
type recorder struct {
	mu    sync.Mutex
	d     []time.Duration
	errs  int
	kinds map[string]int // errors by HTTP status, or "network"
}

func (r *recorder) add(d time.Duration) {
	r.mu.Lock()
	r.d = append(r.d, d)
	r.mu.Unlock()
}

func (r *recorder) fail(err error) {
	kind := "network"
	var ae *serverapi.Error
	if errors.As(err, &ae) {
		kind = strconv.Itoa(ae.Status)
	}
	r.mu.Lock()
	r.errs++
	if r.kinds == nil {
		r.kinds = map[string]int{}
	}
	r.kinds[kind]++
	r.mu.Unlock()
}

func (r *recorder) reset() {
	r.mu.Lock()
	r.d, r.errs, r.kinds = nil, 0, nil
	r.mu.Unlock()
}

// Lat summarizes a recorder.
type Lat struct {
	N      int            `json:"n"`
	Errors int            `json:"errors"`
	Kinds  map[string]int `json:"error_kinds,omitempty"` // by HTTP status, or "network"
	P50    float64        `json:"p50_ms"`
	P99    float64        `json:"p99_ms"`
	Max    float64        `json:"max_ms"`
}

func (r *recorder) lat() Lat {
	r.mu.Lock()
	d := append([]time.Duration(nil), r.d...)
	l := Lat{N: len(d), Errors: r.errs, Kinds: maps.Clone(r.kinds)}
	r.mu.Unlock()
	if len(d) == 0 {
		return l
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	q := func(p float64) float64 { return ms(d[min(len(d)-1, int(p*float64(len(d))))]) }
	l.P50, l.P99, l.Max = q(0.50), q(0.99), ms(d[len(d)-1])
	return l
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// wakeRound watches for every device's long poll to bring one release.
type wakeRound struct {
	release string
	t0      time.Time
	woke    recorder // from t0 to the device having the new target
	left    atomic.Int64
	done    chan struct{}
}

// fleetSim is the simulated devices and what they measured.
type fleetSim struct {
	o      options
	tr     *http.Transport
	url    string
	devs   []*device
	round  atomic.Pointer[wakeRound]
	active atomic.Bool // steady state: count requests

	reports recorder // periodic state reports
	applies recorder // reports of a newly taken release
	fetches recorder // full target GETs, sampled
	polls   atomic.Int64
	pollErr recorder     // failed long polls, by kind (durations unused)
	applied atomic.Int64 // devices that reported the wanted release
	want    atomic.Pointer[string]

	// Periodic reports in steady state, by how they went: whole or as a
	// merge patch, and the bytes of their bodies.
	sentWhole, sentPatched, sentBytes atomic.Int64
}

type device struct {
	f     *fleetSim
	name  string
	cl    *serverapi.Client
	rep   *serverapi.StateReporter // whole, then merge patches, as berthd
	apply chan string              // release IDs to take
	mu    sync.Mutex
	state release.CurrentState
}

// register registers n devices with the fleet's key, conc at a time.
func (f *fleetSim) register(ctx context.Context, key string, n, conc int) (Lat, time.Duration, error) {
	var rec recorder
	f.devs = make([]*device, n)
	reg, err := serverapi.New(f.url, serverapi.Options{Transport: f.tr})
	if err != nil {
		return Lat{}, 0, err
	}
	start := time.Now()
	var next atomic.Int64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				name := fmt.Sprintf("robot-%05d", i)
				t := time.Now()
				r, err := reg.Register(ctx, serverapi.RegisterRequest{ProvisioningKey: key, Name: name, Arch: "arm64", AgentVersion: "fleetbench"})
				if err != nil {
					rec.fail(err)
					err = fmt.Errorf("register %s: %w", name, err)
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				rec.add(time.Since(t))
				cl, err := serverapi.New(f.url, serverapi.Options{Token: r.Token, Transport: f.tr})
				if err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				f.devs[i] = &device{f: f, name: name, cl: cl, rep: &serverapi.StateReporter{Client: cl}, apply: make(chan string, 1),
					state: release.CurrentState{
						Agent: release.AgentInfo{Name: name, Version: "fleetbench", EngineVersion: "24.0.7", EngineAPI: "1.43"},
						Apps:  map[string]release.AppState{},
					}}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	if e := firstErr.Load(); e != nil {
		return rec.lat(), took, *e
	}
	return rec.lat(), took, ctx.Err()
}

// run runs every device until ctx ends; wait waits for them.
func (f *fleetSim) run(ctx context.Context) (wait func()) {
	var wg sync.WaitGroup
	for _, d := range f.devs {
		wg.Go(func() { d.poll(ctx) })
		wg.Go(func() { d.report(ctx) })
	}
	return wg.Wait
}

// poll long-polls the target as berthd does, and hands new releases to
// report.
func (d *device) poll(ctx context.Context) {
	f := d.f
	var known int64
	for ctx.Err() == nil {
		// ±10%: devices' polls drift apart as real ones do.
		wait := time.Duration(float64(f.o.wait) * (0.9 + 0.2*rand.Float64()))
		t, changed, err := d.cl.Target(ctx, known, wait)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			f.pollErr.fail(err)
			sleep(ctx, time.Second+rand.N(time.Second))
			continue
		}
		if f.active.Load() {
			f.polls.Add(1)
		}
		if !changed {
			continue
		}
		known = t.Version
		id := ""
		if rel := t.Apps[app]; rel != nil {
			id = rel.ID
		}
		if r := f.round.Load(); r != nil && id == r.release {
			r.woke.add(time.Since(r.t0))
			if r.left.Add(-1) == 0 {
				close(r.done)
			}
		}
		if id != "" {
			select {
			case <-d.apply: // a newer one replaces one not taken yet
			default:
			}
			d.apply <- id
		}
	}
}

// report sends the state every -report (±20%), and after taking a new
// release, with the release as running.
func (d *device) report(ctx context.Context) {
	f := d.f
	every := func() time.Duration { return time.Duration(float64(f.o.report) * (0.8 + 0.4*rand.Float64())) }
	timer := time.NewTimer(rand.N(f.o.report)) // first report somewhere in the first interval
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
			d.send(ctx, &f.reports, nil)
			timer.Reset(every())
		case id := <-d.apply:
			// berthd reports a second after a switch's first event (it
			// lets a burst of events settle: reportLoop); the pull and
			// the switch themselves take no time here.
			sleep(ctx, f.o.settle+rand.N(f.o.settleJitter+1))
			d.send(ctx, &f.applies, func(cs *release.CurrentState) {
				services := map[string]release.ServiceState{}
				for _, svc := range []string{"planner", "lidar"} {
					services[svc] = release.ServiceState{Container: fmt.Sprintf("%x", rand.Uint64()), State: "running",
						Health: "healthy", Release: id, Image: "registry.example/nav/" + svc + "@sha256:" + id[7:]}
				}
				cs.Apps[app] = release.AppState{Release: id, Version: id, Phase: release.PhaseIdle, FleetRelease: id,
					Services: services, Updated: time.Now().UTC()}
			})
			if w := f.want.Load(); w != nil && *w == id {
				f.applied.Add(1)
			}
			// The periodic reports keep their rhythm (a real agent's diffs
			// would go out sooner; the server's limit is 1 a second).
		}
	}
}

// send reports the state, changed by fn, retrying on 429 and 5xx.
func (d *device) send(ctx context.Context, rec *recorder, fn func(*release.CurrentState)) {
	d.mu.Lock()
	if fn != nil {
		fn(&d.state)
	}
	d.state.Reported = time.Now().UTC()
	cs := d.state
	d.mu.Unlock()
	for ctx.Err() == nil {
		t := time.Now()
		whole, patched, bytes := d.rep.Whole, d.rep.Patched, d.rep.Bytes
		_, err := d.rep.Report(ctx, cs)
		if err == nil {
			if fn != nil || d.f.active.Load() {
				rec.add(time.Since(t))
			}
			if fn == nil && d.f.active.Load() {
				d.f.sentWhole.Add(int64(d.rep.Whole - whole))
				d.f.sentPatched.Add(int64(d.rep.Patched - patched))
				d.f.sentBytes.Add(d.rep.Bytes - bytes)
			}
			return
		}
		if ctx.Err() != nil {
			return
		}
		rec.fail(err)
		var ae *serverapi.Error
		if errors.As(err, &ae) && ae.Status != http.StatusTooManyRequests && ae.Status < 500 {
			return
		}
		sleep(ctx, time.Second+rand.N(time.Second))
	}
}

// sampleFetches GETs whole targets of random devices, without an ETag,
// rate a second until ctx ends.
func (f *fleetSim) sampleFetches(ctx context.Context, rate int) {
	tick := time.NewTicker(time.Second / time.Duration(max(rate, 1)))
	defer tick.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		d := f.devs[rand.N(len(f.devs))]
		wg.Go(func() {
			t := time.Now()
			if _, _, err := d.cl.Target(ctx, 0, 0); err != nil {
				if ctx.Err() == nil {
					f.fetches.fail(err)
				}
				return
			}
			f.fetches.add(time.Since(t))
		})
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
