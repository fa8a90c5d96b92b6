package devloop

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestLoop: a saved change in one context rebuilds that service only; one
// in the Compose file rebuilds every service; a failed build leaves the
// loop watching; cancelling the context ends it without an error.
func TestLoop(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"web", "worker"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
		os.WriteFile(filepath.Join(dir, d, "main.go"), []byte("package main\n"), 0o644)
	}
	compose := filepath.Join(dir, "compose.yaml")
	os.WriteFile(compose, []byte("services: {}\n"), 0o644)
	var mu sync.Mutex
	var builds [][]string
	deploys := 0
	fail := false
	rounds := make(chan struct{}, 10)
	l := &Loop{
		Contexts: map[string]string{"web": filepath.Join(dir, "web"), "worker": filepath.Join(dir, "worker")},
		Files:    []string{compose}, Poll: 20 * time.Millisecond, Quiet: 50 * time.Millisecond, Out: io.Discard,
		Build: func(_ context.Context, s []string) error {
			mu.Lock()
			defer mu.Unlock()
			builds = append(builds, s)
			if fail {
				rounds <- struct{}{}
				return errors.New("does not build")
			}
			return nil
		},
		Deploy: func(context.Context) error {
			mu.Lock()
			deploys++
			mu.Unlock()
			rounds <- struct{}{}
			return nil
		},
		Logs: func(ctx context.Context) { <-ctx.Done() },
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	wait := func() {
		t.Helper()
		select {
		case <-rounds:
		case <-time.After(10 * time.Second):
			t.Fatal("no round")
		}
	}
	wait() // the first round
	time.Sleep(100 * time.Millisecond)
	os.WriteFile(filepath.Join(dir, "web", "main.go"), []byte("package main // changed\n"), 0o644)
	wait()
	os.WriteFile(compose, []byte("services: {web: {}}\n"), 0o644)
	wait()
	mu.Lock()
	fail = true
	mu.Unlock()
	os.WriteFile(filepath.Join(dir, "worker", "main.go"), []byte("package main // broken\n"), 0o644)
	wait()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := [][]string{nil, {"web"}, nil, {"worker"}}
	if !slices.EqualFunc(builds, want, slices.Equal) || deploys != 3 {
		t.Errorf("builds %v, deploys %d; want %v, 3", builds, deploys, want)
	}
}
