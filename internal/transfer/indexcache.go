package transfer

import (
	"container/list"
	"sync"

	"github.com/berth-robotics/berth/internal/content"
)

// IndexCache keeps the most recently used decoded layer indexes, for a
// Server answering many devices: each question names its layer and up to
// maxBases layers the device holds, and reading an index from the store
// means a file read, a zstd decode and a parse. Indexes are named by their
// layer's digest and never change, so a cached one is never stale; callers
// only read them. Safe for concurrent use.
type IndexCache struct {
	max int

	mu    sync.Mutex
	order *list.List // of *content.Index, most recent first
	byID  map[content.Digest]*list.Element
}

// NewIndexCache keeps up to max indexes.
func NewIndexCache(max int) *IndexCache {
	return &IndexCache{max: max, order: list.New(), byID: map[content.Digest]*list.Element{}}
}

// get returns layer d's index from the cache, or from st (then keeps it).
func (c *IndexCache) get(st *content.Store, d content.Digest) (*content.Index, error) {
	if c == nil {
		return st.Index(d)
	}
	c.mu.Lock()
	if e, ok := c.byID[d]; ok {
		c.order.MoveToFront(e)
		c.mu.Unlock()
		return e.Value.(*content.Index), nil
	}
	c.mu.Unlock()
	ix, err := st.Index(d)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.byID[d]; !ok {
		c.byID[d] = c.order.PushFront(ix)
		for c.order.Len() > c.max {
			old := c.order.Remove(c.order.Back()).(*content.Index)
			delete(c.byID, old.DiffID)
		}
	}
	return ix, nil
}
