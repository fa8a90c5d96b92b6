package server

import (
	"context"
	"log/slog"
	"testing"

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
	a, _, _, cancelA := h.subscribe("a")
	defer cancelA()
	b, _, _, cancelB := h.subscribe("b")
	defer cancelB()
	take := func(ch <-chan int64) (int64, bool) {
		select {
		case v := <-ch:
			return v, true
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
	if v, ok := take(a); !ok || v != 7 {
		t.Errorf("a's change: got %d, %v; want 7", v, ok)
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
	signal(h.waiters["b"], 10)
	h.wakeAll(10)
	if v, _ := take(b); v != -1 {
		t.Errorf("a change and a wake-all not taken: got %d, want -1", v)
	}
}
