// Package devloop is `berth dev`'s loop: it watches a Compose project's
// build contexts and files and, on a saved change, rebuilds the services
// whose context changed (the builder's cache keeps the rest of each build),
// sends what changed to the device and switches with the usual health gate,
// while the app's logs keep coming. Ctrl-C ends it and leaves the device
// running the last release that passed its health gate: a switch that
// fails rolls back on the device, as any switch does.
package devloop

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Loop is one `berth dev` session. Build, Deploy and Logs are the CLI's
// (build, push and switch, follow), so the loop holds no client of its own.
type Loop struct {
	// Contexts maps each service with a build: section to its context
	// directory; Files are the Compose files (a change of those rebuilds
	// every service).
	Contexts map[string]string
	Files    []string
	Poll     time.Duration // how often the files are looked at (300 ms)
	Quiet    time.Duration // how long no file may change before a rebuild (200 ms: an editor's save is several writes)
	Out      io.Writer

	// Build rebuilds these services (nil: every one).
	Build func(ctx context.Context, services []string) error
	// Deploy sends the images and switches; it returns once the switch
	// is committed or rolled back.
	Deploy func(ctx context.Context) error
	// Logs follows the app's logs until ctx ends.
	Logs func(ctx context.Context)
}

// Run deploys once, then watches until ctx ends (Ctrl-C), which is not an
// error: the device keeps its last good release.
func (l *Loop) Run(ctx context.Context) error {
	if l.Poll <= 0 {
		l.Poll = 300 * time.Millisecond
	}
	if l.Quiet <= 0 {
		l.Quiet = 200 * time.Millisecond
	}
	snap := l.snapshot()
	if err := l.round(ctx, nil, "start"); err != nil && ctx.Err() == nil {
		return err
	}
	follow := func() context.CancelFunc {
		c, cancel := context.WithCancel(ctx)
		go l.Logs(c)
		return cancel
	}
	stopLogs := follow()
	defer func() { stopLogs() }()
	fmt.Fprintf(l.Out, "watching %s for changes (Ctrl-C stops; the device keeps its last good release)\n", strings.Join(l.watched(), ", "))
	tick := time.NewTicker(l.Poll)
	defer tick.Stop()
	var changed map[string]bool
	var lastChange time.Time
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(l.Out, "stopped; the device runs the last release that passed its health gate")
			return nil
		case <-tick.C:
		}
		next := l.snapshot()
		if diff := changes(snap, next); len(diff) > 0 {
			if changed == nil {
				changed = map[string]bool{}
			}
			for _, p := range diff {
				changed[p] = true
			}
			snap, lastChange = next, time.Now()
			continue
		}
		if changed == nil || time.Since(lastChange) < l.Quiet {
			continue
		}
		paths := slices.Sorted(mapKeys(changed))
		changed = nil
		services := l.services(paths)
		what := fmt.Sprintf("%s changed", strings.Join(shorten(paths, 3), ", "))
		stopLogs()
		if err := l.round(ctx, services, what); err != nil {
			if ctx.Err() != nil {
				continue
			}
			fmt.Fprintf(l.Out, "%v\nthe device keeps its last good release; fix and save again\n", err)
		}
		snap = l.snapshot() // what the build itself wrote is no change
		stopLogs = follow()
	}
}

// round builds (services; nil: all) and deploys, timing each.
func (l *Loop) round(ctx context.Context, services []string, why string) error {
	t0 := time.Now()
	who := "every service"
	if services != nil {
		who = strings.Join(services, ", ")
	}
	fmt.Fprintf(l.Out, "--- %s: building %s\n", why, who)
	if err := l.Build(ctx, services); err != nil {
		return fmt.Errorf("build: %w", err)
	}
	built := time.Since(t0)
	if err := l.Deploy(ctx); err != nil {
		return err
	}
	fmt.Fprintf(l.Out, "--- %s: built in %.1fs, sent and switched in %.1fs (%.1fs in all)\n", why, built.Seconds(), (time.Since(t0) - built).Seconds(), time.Since(t0).Seconds())
	return nil
}

// services are those whose context holds a changed path; every one when a
// Compose file changed.
func (l *Loop) services(paths []string) []string {
	var out []string
	for _, p := range paths {
		if slices.Contains(l.Files, p) {
			return nil
		}
	}
	for svc, dir := range l.Contexts {
		for _, p := range paths {
			if rel, err := filepath.Rel(dir, p); err == nil && !strings.HasPrefix(rel, "..") {
				out = append(out, svc)
				break
			}
		}
	}
	slices.Sort(out)
	return out
}

func (l *Loop) watched() []string {
	seen := map[string]bool{}
	for _, d := range l.Contexts {
		seen[d] = true
	}
	for _, f := range l.Files {
		seen[f] = true
	}
	return shorten(slices.Sorted(mapKeys(seen)), 4)
}

// stamp is what a file looks like without reading it.
type stamp struct {
	size int64
	mod  time.Time
}

// snapshot stamps every file of the contexts and the Compose files (not
// .git: commits are no change to the images).
func (l *Loop) snapshot() map[string]stamp {
	out := map[string]stamp{}
	add := func(path string) {
		if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() {
			out[path] = stamp{fi.Size(), fi.ModTime()}
		}
	}
	for _, f := range l.Files {
		add(f)
	}
	for _, dir := range l.Contexts {
		_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if d.IsDir() && d.Name() == ".git" {
				return filepath.SkipDir
			}
			if !d.IsDir() {
				add(path)
			}
			return nil
		})
	}
	return out
}

// changes lists the paths added, removed or changed between two snapshots.
func changes(a, b map[string]stamp) []string {
	var out []string
	for p, s := range b {
		if a[p] != s {
			out = append(out, p)
		}
	}
	for p := range a {
		if _, ok := b[p]; !ok {
			out = append(out, p)
		}
	}
	return out
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func shorten(s []string, n int) []string {
	if len(s) <= n {
		return s
	}
	return append(s[:n:n], fmt.Sprintf("and %d more", len(s)-n))
}
