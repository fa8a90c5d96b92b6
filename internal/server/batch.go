package server

import (
	"context"
	"encoding/json"
	"sync"

	"github.com/berth-robotics/berth/internal/mergepatch"
)

// groupCommit writes what arrives together as one: while one batch is
// being written, the calls that arrive wait and then go together in the
// next, led by the first of them. One caller at a time is a plain call;
// under load one transaction (one commit, one fsync) carries many writes
// instead of each waiting its turn for the database's writer — with
// 10,000 devices the state reports and "seen" marks alone are hundreds of
// writes a second (BENCHMARKS.md, "Fleet server"). Reads that many make
// at once go the same way (what the targets of a fleet woken by a release
// are made of: renderTarget).
type groupCommit[T, R any] struct {
	// write stores a batch and returns one result per item, in order.
	write func(ctx context.Context, items []T) []R
	max   int // most items in one batch

	mu      sync.Mutex
	queue   []*groupCall[T, R]
	writing bool
}

type groupCall[T, R any] struct {
	item T
	res  R
	done chan struct{} // closed when res is set, or when this call leads
	lead bool
}

func newGroupCommit[T, R any](max int, write func(context.Context, []T) []R) *groupCommit[T, R] {
	return &groupCommit[T, R]{write: write, max: max}
}

// do writes item, with whatever else is waiting, and returns its result.
// The write goes on if ctx ends: others' items ride in the same batch.
func (g *groupCommit[T, R]) do(ctx context.Context, item T) R {
	c := &groupCall[T, R]{item: item, done: make(chan struct{})}
	g.mu.Lock()
	g.queue = append(g.queue, c)
	if g.writing {
		g.mu.Unlock()
		<-c.done
		if !c.lead {
			return c.res
		}
		g.mu.Lock()
	}
	g.writing = true
	n := min(len(g.queue), g.max)
	batch := g.queue[:n:n]
	g.queue = g.queue[n:]
	g.mu.Unlock()

	items := make([]T, len(batch))
	for i, b := range batch {
		items[i] = b.item
	}
	rs := g.write(context.WithoutCancel(ctx), items)
	for i, b := range batch {
		b.res = rs[i]
		if b != c {
			close(b.done)
		}
	}

	g.mu.Lock()
	if len(g.queue) > 0 {
		next := g.queue[0]
		next.lead = true
		close(next.done)
	} else {
		g.writing = false
	}
	g.mu.Unlock()
	return c.res
}

// stateCache keeps devices' last stored states, up to maxCachedStates of
// them (then one goes, whichever, for each new one).
type stateCache struct {
	mu sync.Mutex
	m  map[string]cachedState
}

type cachedState struct {
	version int64
	state   json.RawMessage
	doc     mergepatch.Doc // state decoded, or nil; one patch takes it
}

const maxCachedStates = 100_000

// take returns the device's state if the cache holds it at version v,
// and its decoded document if the cache has it, which is then the
// caller's alone (it changes it) and leaves the cache.
func (c *stateCache) take(device string, v int64) (json.RawMessage, mergepatch.Doc, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[device]
	if !ok || e.version != v {
		return nil, nil, false
	}
	doc := e.doc
	e.doc = nil
	c.m[device] = e
	return e.state, doc, true
}

func (c *stateCache) put(device string, v int64, state json.RawMessage, doc mergepatch.Doc) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]cachedState{}
	}
	if _, ok := c.m[device]; !ok && len(c.m) >= maxCachedStates {
		for k := range c.m {
			delete(c.m, k)
			break
		}
	}
	c.m[device] = cachedState{version: v, state: state, doc: doc}
}
