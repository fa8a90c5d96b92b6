package server

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/berth-robotics/berth/internal/store"
)

// targetWatch is the part of store.Store the hub reads.
type targetWatch interface {
	LatestTargetVersion(ctx context.Context) (int64, error)
	TargetChanges(ctx context.Context, since int64, limit int) ([]store.TargetChange, error)
}

// changesPage is how many target changes the hub reads at once; more than
// that in one scan wakes every waiter instead (each then reads its own
// device's version). A fleet-wide release to 10,000 devices fits in one.
const changesPage = 20000

// hub wakes the long polls of devices whose target changed. It follows the
// store's target version: whenever it is kicked (a change on this replica,
// a NOTIFY from another) or the rescan interval passes, it reads the
// changes since the version it last saw and wakes the waiters of exactly
// those devices. Store transactions that change targets commit in version
// order, so reading "above the last version seen" misses none.
//
// A waiter subscribes before it reads its device's target version, so a
// change committed at any moment either shows in that read or wakes it.
// The read can be the one made before subscribing when nothing was
// handled in between (handled): a change committed after that read is
// then still to be handled, and wakes the waiter.
// A waiter woken for its own device's change is handed the version the hub
// read, and the hub's handled mark as of which it is the device's version
// (a wakeup), and need not read it again; woken with unknown (-1), it
// reads it.
//
// A release to a fleet wakes thousands of waiters at once, and the woken
// devices report their state soon after. Answering the long polls comes
// first: the hub counts the wake-ups not answered yet (woken), and
// requests that can wait (state reports, log batches) settle until that
// count is back to zero, for at most a few seconds (settle).
type hub struct {
	st  targetWatch
	log *slog.Logger

	kicks chan struct{} // capacity 1: "look now"

	mu      sync.Mutex
	seen    int64 // versions up to this one were handled; -1 before the first scan
	waiters map[string]map[chan wakeup]struct{}
	closed  chan struct{} // closed when run returns
	woken   int           // wake-ups signalled and not yet answered
	quiet   chan struct{} // closed while woken is 0
}

func newHub(st targetWatch, log *slog.Logger) *hub {
	quiet := make(chan struct{})
	close(quiet)
	return &hub{
		st:      st,
		log:     log,
		kicks:   make(chan struct{}, 1),
		seen:    -1,
		waiters: map[string]map[chan wakeup]struct{}{},
		closed:  make(chan struct{}),
		quiet:   quiet,
	}
}

// kick asks the hub to look for changes now. It never blocks.
func (h *hub) kick() {
	select {
	case h.kicks <- struct{}{}:
	default:
	}
}

// handled is the version up to which changes were handled (their waiters
// woken), -1 before the first scan. Changes commit in version order and
// are handled after they commit, so while handled stays the same, every
// change either committed before it was taken or will wake the waiters
// subscribed by then.
func (h *hub) handled() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.seen
}

// wakeup is what a waiter is handed: the device's target version (-1:
// unknown, read it), which is its version as of the hub's handled mark
// handled: every change up to that mark is in it.
type wakeup struct {
	version, handled int64
}

// waiter is one long poll waiting for its device's target to change.
type waiter struct {
	// C receives when the device's target may have changed. Call took
	// after each receive.
	C <-chan wakeup
	// Done is closed when the hub stops.
	Done <-chan struct{}
	// Handled is hub.handled at the moment of subscribing.
	Handled int64

	h      *hub
	ch     chan wakeup
	device string
	held   int // wake-ups taken from C and not answered yet
}

// subscribe registers a waiter for a device. Call close when done
// waiting, once the answer is written.
func (h *hub) subscribe(deviceID string) *waiter {
	w := &waiter{h: h, ch: make(chan wakeup, 1), device: deviceID, Done: h.closed}
	w.C = w.ch
	h.mu.Lock()
	w.Handled = h.seen
	ws := h.waiters[deviceID]
	if ws == nil {
		ws = map[chan wakeup]struct{}{}
		h.waiters[deviceID] = ws
	}
	ws[w.ch] = struct{}{}
	h.mu.Unlock()
	return w
}

// took says a wake-up was taken from C: it counts as under way until the
// waiter answers (close) or goes back to waiting (waiting).
func (w *waiter) took() { w.held++ }

// waiting says the wake-ups taken were handled without an answer (the
// version had not changed after all).
func (w *waiter) waiting() {
	if w.held == 0 {
		return
	}
	w.h.mu.Lock()
	w.h.answered(w.held)
	w.h.mu.Unlock()
	w.held = 0
}

// close unsubscribes: the wake-ups taken, and one signalled but never
// taken, are answered.
func (w *waiter) close() {
	h := w.h
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.waiters[w.device], w.ch)
	if len(h.waiters[w.device]) == 0 {
		delete(h.waiters, w.device)
	}
	select {
	case <-w.ch: // the hub no longer sends to it
		w.held++
	default:
	}
	h.answered(w.held)
	w.held = 0
}

// answered takes n wake-ups off the count under way; h.mu is held.
func (h *hub) answered(n int) {
	if n == 0 {
		return
	}
	h.woken -= n
	if h.woken == 0 {
		close(h.quiet)
	}
}

// settle waits until every wake-up signalled so far is answered, for at
// most limit: what can wait lets the long polls go first.
func (h *hub) settle(ctx context.Context, limit time.Duration) {
	h.mu.Lock()
	quiet := h.quiet
	h.mu.Unlock()
	select {
	case <-quiet:
		return
	default:
	}
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-quiet:
	case <-t.C:
	case <-ctx.Done():
	}
}

// run follows the target version until ctx ends, then closes the hub.
func (h *hub) run(ctx context.Context, rescan time.Duration) {
	defer close(h.closed)
	t := time.NewTicker(rescan)
	defer t.Stop()
	for {
		if err := h.scan(ctx); err != nil && ctx.Err() == nil {
			h.log.Warn("look for target changes", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-h.kicks:
		case <-t.C:
		}
	}
}

// scan wakes the waiters of devices whose target changed since the last scan.
func (h *hub) scan(ctx context.Context) error {
	latest, err := h.st.LatestTargetVersion(ctx)
	if err != nil {
		return err
	}
	h.mu.Lock()
	seen := h.seen
	h.mu.Unlock()
	if seen < 0 {
		// The first scan: whoever subscribed before it checks again.
		h.wakeAll(latest)
		return nil
	}
	if latest <= seen {
		return nil
	}
	cs, err := h.st.TargetChanges(ctx, seen, changesPage)
	if err != nil {
		return err
	}
	if len(cs) == changesPage {
		h.wakeAll(max(latest, cs[len(cs)-1].Version))
		return nil
	}
	h.wakeChanged(cs, latest)
	return nil
}

// wakeAll signals every waiter, the version unknown, and records that
// versions up to seen were handled.
func (h *hub) wakeAll(seen int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seen = max(h.seen, seen)
	for _, ws := range h.waiters {
		h.signal(ws, wakeup{version: -1, handled: h.seen})
	}
}

// wakeChanged signals the waiters of the devices changed, each with its
// new version, and records that versions up to seen were handled. The
// changes were read after seen: each device's version in them is its
// version as of the highest of seen and theirs (transactions that change
// targets commit in version order).
func (h *hub) wakeChanged(cs []store.TargetChange, seen int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	seen = max(h.seen, seen)
	for _, c := range cs {
		seen = max(seen, c.Version)
	}
	for _, c := range cs {
		h.signal(h.waiters[c.DeviceID], wakeup{version: c.Version, handled: seen})
	}
	h.seen = seen
}

// signal hands w to each waiter, merged with what it has not taken yet: the
// hub is the only sender, and holds h.mu. A waiter that had nothing
// waiting counts as woken until it answers.
func (h *hub) signal(ws map[chan wakeup]struct{}, w wakeup) {
	for ch := range ws {
		v := w
		select {
		case old := <-ch:
			if old.version < 0 || v.version < 0 {
				v.version = -1
			} else {
				v.version = max(v.version, old.version)
			}
			v.handled = max(v.handled, old.handled)
		default:
			if h.woken == 0 {
				h.quiet = make(chan struct{})
			}
			h.woken++
		}
		ch <- v
	}
}
