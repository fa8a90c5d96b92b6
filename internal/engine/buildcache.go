package engine

import (
	"context"
	"fmt"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/filters"
)

// BuildCacheSince lists the IDs of the engine's BuildKit cache records
// made at or after since.
func (c *Client) BuildCacheSince(ctx context.Context, since time.Time) ([]string, error) {
	du, err := c.api.DiskUsage(ctx, types.DiskUsageOptions{Types: []types.DiskUsageObject{types.BuildCacheObject}})
	if err != nil {
		return nil, fmt.Errorf("build cache: %w", err)
	}
	var ids []string
	for _, r := range du.BuildCache {
		if r != nil && !r.CreatedAt.Before(since) {
			ids = append(ids, r.ID)
		}
	}
	return ids, nil
}

// PruneBuildCache removes the BuildKit cache records of these IDs that are
// not in use, children before their parents, and returns the bytes freed.
func (c *Client) PruneBuildCache(ctx context.Context, ids []string) (uint64, error) {
	var freed uint64
	left := ids
	for pass := 0; pass < 8 && len(left) > 0; pass++ {
		var again []string
		for _, id := range left {
			rep, err := c.api.BuildCachePrune(ctx, build.CachePruneOptions{All: true, Filters: filters.NewArgs(filters.Arg("id", id))})
			if err != nil {
				return freed, fmt.Errorf("prune build cache %s: %w", id, err)
			}
			if len(rep.CachesDeleted) == 0 {
				again = append(again, id) // a parent: its children go first
			}
			freed += rep.SpaceReclaimed
		}
		if len(again) == len(left) {
			break
		}
		left = again
	}
	return freed, nil
}

// History lists how each layer of the image was made (docker history
// --no-trunc's CREATED BY), newest first.
func (c *Client) History(ctx context.Context, ref string) ([]string, error) {
	items, err := c.api.ImageHistory(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("history of %s: %w", ref, err)
	}
	var out []string
	for _, h := range items {
		out = append(out, h.CreatedBy+" "+h.Comment)
	}
	return out, nil
}
