package server

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/store"
)

// fakeTargets is a store's target versions, for the hub alone.
type fakeTargets struct {
	latest  int64
	changes []store.TargetChange
}

func (f *fakeTargets) LatestTargetVersion(context.Context) (int64, error) { return f.latest, nil }

func (f *fakeTargets) TargetChanges(_ context.Context, since int64, limit int) ([]store.TargetChange, error) {
	var out []store.TargetChange
	for _, c := range f.changes {
		if c.Version > since && len(out) < limit {
			out = append(out, c)
		}
	}
	return out, nil
}

// TestHubHandsVersions: a waiter woken for its own device's change gets
// the version; for a change it cannot tell apart (the first scan), -1; two
// wake-ups not yet taken merge into the later, or into -1.
func TestHubHandsVersions(t *testing.T) {
	ctx := context.Background()
	st := &fakeTargets{latest: 5}
	h := newHub(st, slog.New(slog.DiscardHandler))
	wa := h.subscribe("a")
	defer wa.close()
	wb := h.subscribe("b")
	defer wb.close()
	a, b := wa.C, wb.C
	var last wakeup
	take := func(ch <-chan wakeup) (int64, bool) {
		select {
		case v := <-ch:
			last = v
			return v.version, true
		default:
			return 0, false
		}
	}

	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(h.scan(ctx)) // the first scan: everyone checks
	if v, ok := take(a); !ok || v != -1 {
		t.Errorf("first scan: a got %d, %v; want -1", v, ok)
	}
	take(b)

	st.latest, st.changes = 7, []store.TargetChange{{DeviceID: "a", Version: 6}, {DeviceID: "a", Version: 7}}
	must(h.scan(ctx))
	if v, ok := take(a); !ok || v != 7 || last.handled != 7 {
		t.Errorf("a's change: got %d (as of %d), %v; want 7 as of 7", v, last.handled, ok)
	}
	if v, ok := take(b); ok {
		t.Errorf("b woken by a's change (%d)", v)
	}

	// Not taken in between: the later version stays; an unknown one wins.
	st.latest, st.changes = 8, append(st.changes, store.TargetChange{DeviceID: "b", Version: 8})
	must(h.scan(ctx))
	st.latest, st.changes = 9, append(st.changes, store.TargetChange{DeviceID: "b", Version: 9})
	must(h.scan(ctx))
	if v, _ := take(b); v != 9 {
		t.Errorf("two changes of b not taken: got %d, want 9", v)
	}
	h.mu.Lock()
	h.signal(h.waiters["b"], wakeup{version: 10, handled: 10})
	h.mu.Unlock()
	h.wakeAll(10)
	if v, _ := take(b); v != -1 || last.handled != 10 {
		t.Errorf("a change and a wake-all not taken: got %d as of %d, want -1 as of 10", v, last.handled)
	}

	// A change committed between reading the latest version and the
	// changes: the mark handed, and the hub's, cover it.
	take(a) // the wake-all
	st.latest, st.changes = 11, append(st.changes, store.TargetChange{DeviceID: "a", Version: 12})
	must(h.scan(ctx))
	if v, _ := take(a); v != 12 || last.handled != 12 || h.handled() != 12 {
		t.Errorf("a change read past the latest version: got %d as of %d, hub at %d; want 12 as of 12, hub at 12", v, last.handled, h.handled())
	}
}

// TestHubSettles: requests that can wait wait while a wake-up is signalled
// and not answered; a waiter answers by closing, or by going back to
// waiting; a wake-up never taken is answered by the close; settle gives up
// after its limit.
func TestHubSettles(t *testing.T) {
	ctx := context.Background()
	st := &fakeTargets{latest: 1}
	h := newHub(st, slog.New(slog.DiscardHandler))
	if err := h.scan(ctx); err != nil {
		t.Fatal(err)
	}
	settled := func() bool {
		done := make(chan struct{})
		go func() { h.settle(ctx, time.Minute); close(done) }()
		select {
		case <-done:
			return true
		case <-time.After(50 * time.Millisecond):
			return false
		}
	}
	if !settled() {
		t.Fatal("nothing woken, yet settle waits")
	}
	a, b, c := h.subscribe("a"), h.subscribe("b"), h.subscribe("c")
	st.latest, st.changes = 4, []store.TargetChange{{DeviceID: "a", Version: 2}, {DeviceID: "b", Version: 3}, {DeviceID: "c", Version: 4}}
	if err := h.scan(ctx); err != nil {
		t.Fatal(err)
	}
	if settled() {
		t.Fatal("three waiters woken, none answered, yet settle returned")
	}
	<-a.C
	a.took()
	a.close() // answered
	<-b.C
	b.took()
	b.waiting() // not changed after all: back to waiting
	if settled() {
		t.Fatal("c is still to answer, yet settle returned")
	}
	c.close() // woken, never took it: gone all the same
	if !settled() {
		t.Fatalf("every wake-up answered, yet settle waits (woken %d)", h.woken)
	}
	b.close()
	if h.woken != 0 {
		t.Fatalf("woken = %d after every waiter closed", h.woken)
	}

	// One never answers: settle gives up after its limit.
	d := h.subscribe("d")
	defer d.close()
	h.wakeAll(4)
	start := time.Now()
	h.settle(ctx, 100*time.Millisecond)
	if took := time.Since(start); took < 100*time.Millisecond || took > 5*time.Second {
		t.Fatalf("settle with a wake-up never answered returned after %s; want its limit, 100ms", took)
	}
}
