package cli

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/engine"
	"github.com/berth-robotics/berth/internal/localreg"
	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/transfer"
)

func newPush() *cobra.Command {
	var to string
	var asJSON bool
	c := &cobra.Command{
		Use:   "push IMAGE... --to TARGET",
		Short: "Make images present on a device, sending only the pieces it lacks",
		Long: `push sends images to a device's engine: images from the local Docker Engine
(name:tag or ID) or docker save archives (.tar, .tar.gz). Each layer is split
into file contents and tar headers; the device is asked which pieces it lacks,
and only those travel, compressed, in acknowledged batches. A dropped link
keeps what arrived: run the command again to send the rest.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := dial(c.Context(), to, acceptNewHostKey(c))
			if err != nil {
				return err
			}
			defer cl.Close()
			sums, err := push(c.Context(), cl, args, c.ErrOrStderr(), asJSON, false)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(c.OutOrStdout(), sums)
			}
			return nil
		},
	}
	addTarget(c, &to)
	c.Flags().BoolVar(&asJSON, "json", false, "print a JSON summary per source (bytes changed, bytes sent, times)")
	return c
}

// pushResult is one source's summary.
type pushResult struct {
	Source  string            `json:"source"`
	Skipped string            `json:"skipped,omitempty"`
	Summary *transfer.Summary `json:"summary,omitempty"`
}

// push sends each source (engine images together, archives one by one) to
// a device's agent, or to a fleet server (serverapi's Uploader). With
// lenient (deploy), images the local engine lacks are left to the device's
// own check, and images the device has are skipped silently.
func push(ctx context.Context, cl transfer.Device, sources []string, log io.Writer, quiet, lenient bool) ([]pushResult, error) {
	cache, cacheDir, err := cacheStore()
	if err != nil {
		return nil, err
	}
	defer cache.Close()
	say := func(format string, args ...any) {
		if !quiet {
			fmt.Fprintf(log, format+"\n", args...)
		}
	}
	last := time.Time{}
	s := &transfer.Sender{Store: cache, Device: cl, Progress: func(p transfer.Progress) {
		if quiet {
			return
		}
		if p.Stage != "send" {
			say("  %s: %s", p.Stage, p.Message)
			return
		}
		if time.Since(last) < 500*time.Millisecond && p.Done < p.Total {
			return
		}
		last = time.Now()
		say("  send: %s of %s changed, %s on the wire, %s/s, ETA %s", transfer.Human(p.Done), transfer.Human(p.Total), transfer.Human(p.Wire), transfer.Human(int64(p.Rate)), p.ETA.Round(time.Second))
	}}
	info, err := cl.ContentInfo(ctx)
	if err != nil {
		return nil, fmt.Errorf("ask the device what it holds: %w", err)
	}
	s.Arch = info.Arch
	have := map[string]bool{}
	for _, id := range info.Images {
		have[id] = true
	}
	var results []pushResult
	var eng *engine.Client
	var local []localreg.Image
	for _, src := range sources {
		if st, err := os.Stat(src); err == nil && st.IsDir() {
			if _, err := os.Stat(filepath.Join(src, "oci-layout")); err != nil {
				return results, fmt.Errorf("%s is a directory but not an OCI image layout (it has no oci-layout file): %w", src, release.ErrInvalid)
			}
			say("pushing the OCI layout %s (the %s image)", src, info.Arch)
			sum, err := pushLayout(ctx, s, src)
			if err != nil {
				return results, fmt.Errorf("push %s: %w", src, err)
			}
			report(say, sum)
			results = append(results, pushResult{Source: src, Summary: sum})
			continue
		} else if err == nil {
			say("pushing %s", src)
			sum, err := pushArchive(ctx, s, src)
			if err != nil {
				return results, fmt.Errorf("push %s: %w", src, err)
			}
			report(say, sum)
			results = append(results, pushResult{Source: src, Summary: sum})
			continue
		}
		if eng == nil {
			if eng, err = engine.New(ctx, "", "berth-cli"); err != nil && lenient {
				return results, nil
			} else if err != nil {
				return results, fmt.Errorf("%s is not a file, and the local Docker Engine (to read images from) does not answer: %w", src, err)
			}
			defer eng.Close()
		}
		img, err := eng.Image(ctx, src)
		if err != nil && lenient {
			continue
		}
		if err != nil {
			return results, fmt.Errorf("image %s: not a file and not in the local engine (docker images lists them): %w", src, err)
		}
		// The device names images by their config's digest; on the
		// containerd image store the engine's ID is a manifest's.
		id := img.ID
		if cfgID, ok := localreg.ConfigID(cache, cacheDir, img.ID); ok {
			id = cfgID
		}
		if have[id] {
			if !lenient {
				say("%s (%s) is on the device already", src, release.ShortID(id))
			}
			results = append(results, pushResult{Source: src, Skipped: "on the device already"})
			continue
		}
		local = append(local, localreg.Image{Ref: src, Info: img, Tags: savedTags(src, img.Tags)})
	}
	if len(local) > 0 {
		var refs []string
		for _, im := range local {
			refs = append(refs, im.Ref)
		}
		say("pushing %s from the local engine", strings.Join(refs, ", "))
		p := &localreg.Pusher{Engine: eng, Sender: s, CacheDir: cacheDir, Via: os.Getenv("BERTH_PUSH_VIA"), Say: say}
		if port := os.Getenv("BERTH_PUSH_PORT"); port != "" {
			if _, err := fmt.Sscan(port, &p.Port); err != nil {
				return results, fmt.Errorf("BERTH_PUSH_PORT=%q: want a port number: %w", port, release.ErrInvalid)
			}
		}
		sum, err := p.Push(ctx, local)
		if err != nil {
			return results, fmt.Errorf("push %s: %w", strings.Join(refs, ", "), err)
		}
		report(say, sum)
		results = append(results, pushResult{Source: strings.Join(refs, " "), Summary: sum})
	}
	return results, nil
}

// savedTags is the tag `docker save REF` would record for ref: ref itself
// when it names one of the image's tags, none when it is an ID.
func savedTags(ref string, tags []string) []string {
	for _, t := range tags {
		if t == ref || t == ref+":latest" || strings.TrimPrefix(t, "docker.io/library/") == ref {
			return []string{t}
		}
	}
	return nil
}

// pushLayout pushes an OCI layout directory, streamed as the tar that
// imagetar reads.
func pushLayout(ctx context.Context, s *transfer.Sender, dir string) (*transfer.Summary, error) {
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := tw.AddFS(os.DirFS(dir))
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	defer pr.Close()
	return s.Push(ctx, pr)
}

func pushArchive(ctx context.Context, s *transfer.Sender, path string) (*transfer.Summary, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 1<<20)
	var r io.Reader = br
	if head, _ := br.Peek(2); len(head) == 2 && head[0] == 0x1f && head[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, err
		}
		r = zr
	}
	return s.Push(ctx, r)
}

func report(say func(string, ...any), s *transfer.Summary) {
	say("  done: %d images, %d of %d layers needed; %s changed, %s sent; %s loaded; export %.1fs, read %.1fs, send %.1fs, load %.1fs",
		len(s.Images), s.LayersNeeded, s.Layers, transfer.Human(s.BytesChanged), transfer.Human(s.BytesSent), transfer.Human(s.BytesLoaded), s.SaveSeconds, s.ReadSeconds, s.SendSeconds, s.LoadSeconds)
	if s.Streamed {
		say("  streamed from %s: the phases overlapped (each time is from the start, load is the device's own), %d layer stacks loaded ahead, all done in %.1fs", s.Source, s.PartialLoads, s.DoneSeconds)
	}
}

// cacheStore opens the sender's local content cache ($BERTH_CACHE, else the
// user cache directory).
func cacheStore() (*content.Store, string, error) {
	dir := os.Getenv("BERTH_CACHE")
	if dir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return nil, "", fmt.Errorf("no cache directory: set BERTH_CACHE: %w", err)
		}
		dir = filepath.Join(base, "berth", "content")
	}
	st, err := content.Open(dir)
	return st, dir, err
}
