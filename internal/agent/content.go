package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/engine"
	"github.com/berth-robotics/berth/internal/imagetar"
	"github.com/berth-robotics/berth/internal/localapi"
	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/transfer"
)

// maxBatch bounds one upload of pieces or an index.
const maxBatch = transfer.MaxBatch

// ContentInfo says what the device holds, for a sender to plan a transfer.
func (a *Agent) ContentInfo(ctx context.Context) (*localapi.ContentInfo, error) {
	info := &localapi.ContentInfo{OS: "linux", Arch: runtime.GOARCH, StateFree: reportedFree(a.cfg.StateDir), MinFree: a.cfg.MinFreeMB << 20, Layers: []string{}, Chains: []string{}, Images: []string{}}
	if ei, err := a.eng.Info(ctx); err == nil {
		info.Arch = ei.Arch
		info.EngineFree = reportedFree(ei.RootDir)
	}
	layers, err := a.content.Layers()
	if err != nil {
		return nil, err
	}
	for _, l := range layers {
		info.Layers = append(info.Layers, l.String())
	}
	h, err := a.eng.Holdings(ctx)
	if err != nil {
		return nil, err
	}
	for c := range h.Chains {
		info.Chains = append(info.Chains, c)
	}
	sort.Strings(info.Chains)
	info.Images = h.Images
	return info, nil
}

func (a *Agent) serveContentInfo(w http.ResponseWriter, r *http.Request) {
	info, err := a.ContentInfo(r.Context())
	reply(w, info, err)
}

// serveMissing answers which of the posted digests the store lacks.
func (a *Agent) serveMissing(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBatch))
	if err != nil {
		writeError(w, fmt.Errorf("missing: %v: %w", err, release.ErrInvalid))
		return
	}
	out, err := transfer.Receiver{Store: a.content}.Missing(body)
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(out)
}

// servePieces stores one batch; every piece is checked against its digest.
// It reads the batch as it arrives: when the link is cut in the middle, the
// whole pieces that came are kept, and a rerun sends only the rest.
func (a *Agent) servePieces(w http.ResponseWriter, r *http.Request) {
	resp, err := transfer.Receiver{Store: a.content}.PutBatchFrom(http.MaxBytesReader(w, r.Body, maxBatch))
	if resp.Stored > 0 && err != nil {
		a.log.Info("a batch of pieces broke off; kept what arrived", "stored", resp.Stored, "error", err)
	}
	reply(w, resp, err)
}

// serveIndex stores a layer index once all its pieces are here
// (transfer.Receiver.PutIndex; ?base=<diffID> names a delta's base).
func (a *Agent) serveIndex(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBatch))
	if err != nil {
		writeError(w, fmt.Errorf("index: %v: %w", err, release.ErrInvalid))
		return
	}
	diffID := r.PathValue("diffid")
	err = transfer.Receiver{Store: a.content}.PutIndex(diffID, body, r.URL.Query().Get("base"))
	reply(w, map[string]string{"layer": diffID}, err)
}

// Load rebuilds the layers the engine lacks from the content store and loads
// the images, checking the engine ends up with exactly these image IDs.
// Images LoadChain made to hold layers of these are removed after.
func (a *Agent) Load(ctx context.Context, req localapi.LoadRequest) (*localapi.LoadResponse, error) {
	start := a.now()
	if len(req.Images) == 0 {
		return nil, fmt.Errorf("load: no images: %w", release.ErrInvalid)
	}
	var imgs []imagetar.Image
	for _, li := range req.Images {
		img, err := imagetar.FromConfig(li.Config)
		if err != nil {
			return nil, err
		}
		for _, t := range li.Tags {
			if strings.ContainsAny(t, " \n\t") || len(t) > 255 {
				return nil, fmt.Errorf("load: bad tag %q: %w", t, release.ErrInvalid)
			}
		}
		img.Tags = li.Tags
		imgs = append(imgs, img)
	}
	resp, err := a.load(ctx, imgs)
	if err != nil {
		return nil, err
	}
	for _, img := range imgs {
		if _, err := a.eng.ImageID(ctx, img.ID); err != nil {
			return nil, fmt.Errorf("after the load the engine lacks image %s: %w", release.ShortID(img.ID), err)
		}
		resp.Images = append(resp.Images, img.ID)
	}
	a.removePartial(ctx, false)
	resp.Seconds = a.now().Sub(start).Seconds()
	a.emit(localapi.Event{Message: fmt.Sprintf("loaded %d images (%d layers, %d MiB) in %.1fs", len(imgs), resp.LayersLoaded, resp.BytesLoaded>>20, resp.Seconds)})
	return resp, nil
}

// LoadChain makes the engine hold a layer stack (diffIDs, bottom first)
// while the rest of an image is still on its way: the layers of it the
// engine lacks are rebuilt from the content store and loaded as an image of
// their own, labelled engine.LabelPartial, that keeps them until Load brings
// an image using them (or, left behind by a transfer that never finished,
// for six hours). So a device loads a layer as soon as it and those under it
// are here, not after the last one.
func (a *Agent) LoadChain(ctx context.Context, req localapi.LoadChainRequest) (*localapi.LoadResponse, error) {
	start := a.now()
	if len(req.DiffIDs) == 0 || len(req.DiffIDs) > 1024 {
		return nil, fmt.Errorf("load chain: %d layers: %w", len(req.DiffIDs), release.ErrInvalid)
	}
	arch := req.Arch
	if arch == "" {
		arch = runtime.GOARCH
	}
	cfg, err := json.Marshal(map[string]any{
		"architecture": arch,
		"os":           "linux",
		"config":       map[string]any{"Labels": map[string]string{engine.LabelPartial: strconv.FormatInt(a.now().Unix(), 10)}},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": req.DiffIDs},
	})
	if err != nil {
		return nil, err
	}
	img, err := imagetar.FromConfig(cfg)
	if err != nil {
		return nil, err
	}
	resp, err := a.load(ctx, []imagetar.Image{img})
	if err != nil {
		return nil, err
	}
	resp.Seconds = a.now().Sub(start).Seconds()
	if resp.LayersLoaded > 0 {
		a.log.Info("loaded layers ahead of their image", "layers", resp.LayersLoaded, "mib", resp.BytesLoaded>>20, "seconds", resp.Seconds)
	}
	return resp, nil
}

// load rebuilds the layers of imgs the engine lacks and loads the images.
func (a *Agent) load(ctx context.Context, imgs []imagetar.Image) (*localapi.LoadResponse, error) {
	h, err := a.eng.Holdings(ctx)
	if err != nil {
		return nil, err
	}
	chains := h.Chains
	include := map[string]int64{}
	indexes := map[string]*content.Index{}
	var need int64
	for _, img := range imgs {
		for i, ch := range imagetar.ChainIDs(img.DiffIDs) {
			d := img.DiffIDs[i]
			if chains[ch] || include[d] > 0 {
				continue
			}
			dd, err := content.ParseDigest(d)
			if err != nil {
				return nil, err
			}
			ix, err := a.content.Index(dd)
			if err != nil {
				return nil, fmt.Errorf("image %s: layer %s is neither in the engine nor in the content store; push the image again: %w", release.ShortID(img.ID), release.ShortID(d), err)
			}
			if m := a.content.Missing(ix); len(m) > 0 {
				return nil, fmt.Errorf("image %s: layer %s lacks %d pieces; push the image again: %w", release.ShortID(img.ID), release.ShortID(d), len(m), release.ErrConflict)
			}
			include[d] = ix.Size
			indexes[d] = ix
			need += ix.Size
		}
	}
	if ei, err := a.eng.Info(ctx); err == nil {
		if free, known := freeSpace(ei.RootDir); known && free < uint64(need)+a.cfg.MinFreeMB<<20 {
			return nil, fmt.Errorf("loading needs %d MiB on the engine's disk, %d MiB are free (keeping %d MiB); nothing was loaded, the running release keeps running: %w", need>>20, free>>20, a.cfg.MinFreeMB, release.ErrNoSpace)
		}
	}
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(imagetar.Write(pw, imgs, include, func(d string, w io.Writer) error {
			return content.Rebuild(indexes[d], a.content.Get, w)
		}))
	}()
	if _, err := a.eng.Load(ctx, pr); err != nil {
		pr.CloseWithError(err)
		return nil, fmt.Errorf("load into the engine: %w", err)
	}
	return &localapi.LoadResponse{LayersLoaded: len(include), BytesLoaded: need}, nil
}

// removePartial removes the images LoadChain made whose layer stacks a
// whole image now holds, and with stale (at start, or from content
// collection) those over six hours old: a transfer that never finished.
func (a *Agent) removePartial(ctx context.Context, stale bool) {
	h, err := a.eng.Holdings(ctx)
	if err != nil {
		return
	}
	for _, p := range h.Partial {
		if !h.Whole[p.Chain] && !(stale && a.now().Sub(p.Made) > 6*time.Hour) {
			continue
		}
		if err := a.eng.RemoveImage(ctx, p.ID); err != nil {
			a.log.Warn("remove a partial image", "image", p.ID, "error", err)
		}
	}
}

func (a *Agent) serveLoadChain(w http.ResponseWriter, r *http.Request) {
	var req localapi.LoadChainRequest
	if !decode(w, r, &req) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), time.Hour)
	defer cancel()
	resp, err := a.LoadChain(ctx, req)
	reply(w, resp, err)
}

func (a *Agent) serveLoad(w http.ResponseWriter, r *http.Request) {
	var req localapi.LoadRequest
	if !decode(w, r, &req) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), time.Hour)
	defer cancel()
	resp, err := a.Load(ctx, req)
	reply(w, resp, err)
}

// collectContent drops from the content store the layers no image in the
// engine uses any more, and the pieces only they used. It runs after each
// commit: the layers of every kept release are in the engine (their images
// are kept for rollback), so they stay. Over the content budget it keeps
// less: the layers of the kept releases, then of the current ones only —
// what goes costs bytes on a later push, nothing else.
func (a *Agent) collectContent(ctx context.Context) {
	a.gcMu.Lock()
	defer a.gcMu.Unlock()
	h, err := a.eng.Holdings(ctx)
	if err != nil {
		a.log.Warn("content gc skipped", "error", err)
		return
	}
	loaded := map[content.Digest]bool{}
	for d := range h.DiffIDs {
		if dd, err := content.ParseDigest(d); err == nil {
			loaded[dd] = true
		}
	}
	a.removePartial(ctx, true)
	policy := content.GCPolicy{Keep: loaded, Loaded: loaded, NotBefore: a.now().Add(-6 * time.Hour)}
	st, err := a.content.GC(policy)
	budget := int64(a.cfg.ContentBudgetMB) << 20
	for _, current := range []bool{false, true} {
		if err != nil || budget <= 0 || st.BytesKept <= budget {
			break
		}
		keep, kerr := a.releaseLayers(ctx, current)
		if kerr != nil {
			a.log.Warn("content budget not applied", "error", kerr)
			break
		}
		policy.Keep = keep
		var more content.GCStats
		more, err = a.content.GC(policy)
		st.LayersRemoved += more.LayersRemoved
		st.PiecesRemoved += more.PiecesRemoved
		st.BytesFreed += more.BytesFreed
		st.BytesKept = more.BytesKept
	}
	if err != nil {
		a.log.Warn("content gc", "error", err)
		return
	}
	if st.LayersRemoved+st.PiecesRemoved > 0 {
		a.log.Info("content gc", "layers_removed", st.LayersRemoved, "pieces_removed", st.PiecesRemoved, "freed_mib", st.BytesFreed>>20, "kept_mib", st.BytesKept>>20, "budget_mib", a.cfg.ContentBudgetMB)
	}
}

// releaseLayers returns the layers of the images of every app's kept
// releases, or of the current releases only.
func (a *Agent) releaseLayers(ctx context.Context, currentOnly bool) (map[content.Digest]bool, error) {
	apps, err := a.store.apps()
	if err != nil {
		return nil, err
	}
	keep := map[content.Digest]bool{}
	for _, app := range apps {
		rec, err := a.store.record(app)
		if err != nil {
			return nil, err
		}
		ids := rec.Kept
		if currentOnly {
			ids = []string{rec.Current}
		}
		for _, id := range ids {
			rel, err := a.store.release(app, id)
			if err != nil || rel == nil {
				continue // an unreadable record keeps nothing extra
			}
			for _, svc := range rel.Spec.Services {
				img, err := a.eng.Image(ctx, svc.ImageID)
				if err != nil {
					continue
				}
				for _, d := range img.DiffIDs {
					if dd, err := content.ParseDigest(d); err == nil {
						keep[dd] = true
					}
				}
			}
		}
	}
	return keep, nil
}

// freeSpace is the free space on dir's filesystem, and whether it could be
// measured (the engine's root directory may not be visible to berthd).
func freeSpace(dir string) (uint64, bool) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, false
	}
	return st.Bavail * uint64(st.Bsize), true
}

// reportedFree is free space as ContentInfo reports it, where 0 means
// unknown to the sender: a full disk reports 1 byte, so that the sender's
// preflight refuses it (as 0 it skipped the check and sent until the
// device's writes failed with ENOSPC).
func reportedFree(dir string) uint64 {
	free, known := freeSpace(dir)
	if known && free == 0 {
		return 1
	}
	return free
}
