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
// that in one scan wakes every waiter instead (each checks its own device).
const changesPage = 1000

// hub wakes the long polls of devices whose target changed. It follows the
// store's target version: whenever it is kicked (a change on this replica,
// a NOTIFY from another) or the rescan interval passes, it reads the
// changes since the version it last saw and wakes the waiters of exactly
// those devices. Store transactions that change targets commit in version
// order, so reading "above the last version seen" misses none.
//
// A waiter subscribes before it reads its device's target version, so a
// change committed at any moment either shows in that read or wakes it.
type hub struct {
	st  targetWatch
	log *slog.Logger

	kicks chan struct{} // capacity 1: "look now"

	mu      sync.Mutex
	seen    int64 // versions up to this one were handled; -1 before the first scan
	waiters map[string]map[chan struct{}]struct{}
	closed  chan struct{} // closed when run returns
}

func newHub(st targetWatch, log *slog.Logger) *hub {
	return &hub{
		st:      st,
		log:     log,
		kicks:   make(chan struct{}, 1),
		seen:    -1,
		waiters: map[string]map[chan struct{}]struct{}{},
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

// subscribe registers a waiter for a device. Its channel receives when the
// device's target may have changed; done is closed when the hub stops.
// Call cancel when done waiting.
func (h *hub) subscribe(deviceID string) (wake <-chan struct{}, done <-chan struct{}, cancel func()) {
	ch := make(chan struct{}, 1)
	h.mu.Lock()
	ws := h.waiters[deviceID]
	if ws == nil {
		ws = map[chan struct{}]struct{}{}
		h.waiters[deviceID] = ws
	}
	ws[ch] = struct{}{}
	h.mu.Unlock()
	return ch, h.closed, func() {
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
		h.wake(nil, latest)
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
		h.wake(nil, max(latest, cs[len(cs)-1].Version))
		return nil
	}
	ids := make([]string, len(cs))
	for i, c := range cs {
		ids[i] = c.DeviceID
		latest = max(latest, c.Version)
	}
	h.wake(ids, latest)
	return nil
}

// wake signals the waiters of the devices given (nil: of every device) and
// records that versions up to seen were handled.
func (h *hub) wake(devices []string, seen int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seen = max(h.seen, seen)
	signal := func(ws map[chan struct{}]struct{}) {
		for ch := range ws {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
	if devices == nil {
		for _, ws := range h.waiters {
			signal(ws)
		}
		return
	}
	for _, id := range devices {
		signal(h.waiters[id])
	}
}
