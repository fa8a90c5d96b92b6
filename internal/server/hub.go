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
// read, and need not read it again; woken with unknown (-1), it reads it.
type hub struct {
	st  targetWatch
	log *slog.Logger

	kicks chan struct{} // capacity 1: "look now"

	mu      sync.Mutex
	seen    int64 // versions up to this one were handled; -1 before the first scan
	waiters map[string]map[chan int64]struct{}
	closed  chan struct{} // closed when run returns
}

func newHub(st targetWatch, log *slog.Logger) *hub {
	return &hub{
		st:      st,
		log:     log,
		kicks:   make(chan struct{}, 1),
		seen:    -1,
		waiters: map[string]map[chan int64]struct{}{},
		closed:  make(chan struct{}),
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

// subscribe registers a waiter for a device. Its channel receives when the
// device's target may have changed: the device's new target version, or
// -1 when the hub does not know it; done is closed when the hub stops.
// Call cancel when done waiting. handled is hub.handled at the moment of
// subscribing.
func (h *hub) subscribe(deviceID string) (wake <-chan int64, done <-chan struct{}, handled int64, cancel func()) {
	ch := make(chan int64, 1)
	h.mu.Lock()
	handled = h.seen
	ws := h.waiters[deviceID]
	if ws == nil {
		ws = map[chan int64]struct{}{}
		h.waiters[deviceID] = ws
	}
	ws[ch] = struct{}{}
	h.mu.Unlock()
	return ch, h.closed, handled, func() {
		h.mu.Lock()
		delete(h.waiters[deviceID], ch)
		if len(h.waiters[deviceID]) == 0 {
			delete(h.waiters, deviceID)
		}
		h.mu.Unlock()
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
		signal(ws, -1)
	}
}

// wakeChanged signals the waiters of the devices changed, each with its
// new version, and records that versions up to seen were handled.
func (h *hub) wakeChanged(cs []store.TargetChange, seen int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range cs {
		seen = max(seen, c.Version)
		signal(h.waiters[c.DeviceID], c.Version)
	}
	h.seen = max(h.seen, seen)
}

// signal hands v to each waiter, replacing what it has not taken yet: the
// hub is the only sender, and holds h.mu.
func signal(ws map[chan int64]struct{}, v int64) {
	for ch := range ws {
		w := v
		select {
		case old := <-ch:
			if old < 0 || w < 0 {
				w = -1
			} else {
				w = max(w, old)
			}
		default:
		}
		ch <- w
	}
}
