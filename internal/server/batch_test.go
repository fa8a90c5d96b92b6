package server

import (
	"context"
	"sync"
	"testing"
	"time"
)

func TestGroupCommit(t *testing.T) {
	var mu sync.Mutex
	var sizes []int
	g := newGroupCommit(8, func(_ context.Context, items []int) []int {
		mu.Lock()
		sizes = append(sizes, len(items))
		mu.Unlock()
		time.Sleep(5 * time.Millisecond) // a commit
		rs := make([]int, len(items))
		for i, v := range items {
			rs[i] = v * 2
		}
		return rs
	})
	// Alone: a plain call.
	if got := g.do(t.Context(), 21); got != 42 {
		t.Fatalf("alone: got %d, want 42", got)
	}
	const n = 100
	var wg sync.WaitGroup
	got := make([]int, n)
	for i := range n {
		wg.Go(func() { got[i] = g.do(t.Context(), i) })
	}
	wg.Wait()
	for i, v := range got {
		if v != 2*i {
			t.Errorf("call %d got %d, want %d (another's result?)", i, v, 2*i)
		}
	}
	total, grouped := 0, false
	for _, s := range sizes[1:] {
		total += s
		if s > 8 {
			t.Errorf("a batch of %d items, above the limit of 8", s)
		}
		grouped = grouped || s > 1
	}
	if total != n {
		t.Errorf("%d items written for %d calls", total, n)
	}
	if !grouped {
		t.Errorf("100 concurrent calls were never grouped: batches %v", sizes)
	}
	if g.writing || len(g.queue) != 0 {
		t.Errorf("after all calls returned: writing %v, %d queued", g.writing, len(g.queue))
	}
}
