package berthtest

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestPushOverFaultyLink pushes over SSH through a link of the test's own —
// 20 Mbit/s (tbf), 1% of the laptop's packets dropped (iptables) — and cuts
// it at random offsets of the transfer: the link goes down, the robot's sshd
// serving the connection dies, the link comes back, and the push is run
// again, as a person would. The transfer must complete, and what the cuts
// cost is measured: the bytes the laptop put on the link in all runs,
// against an uncut push of an image of the same size over the same link,
// per cut.
//
// BERTH_FAULT_CUTS sets the number of cuts (default 3; make faults: 20),
// each within the next 4 MiB of a run; the image is 4 MiB per cut (at least
// 24 MiB).
func TestPushOverFaultyLink(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	rng := FaultSeed(t)
	cuts := FaultCount(t, "BERTH_FAULT_CUTS", 3)
	link := NewLink(t, "20mbit", "0.01")
	robot := env.NewDevice(t)
	sshd := env.NewSSHDAt(t, link.HostIP)
	// Each run is cut within its next 4 MiB: large enough an image that
	// every cut happens.
	size := max(24, 4*cuts) << 20
	push := func(ctx context.Context, cache string, args ...string) *exec.Cmd {
		cmd := link.Command(filepath.Join(env.Bin, "berth"), append(args, "--to", sshd.Target(robot))...)
		cmd.Env = append(cmd.Env, "HOME="+sshd.Home, "BERTH_CACHE="+cache)
		return cmd
	}
	if out, err := push(context.Background(), t.TempDir(), "status", "--accept-new-host-key").CombinedOutput(); err != nil {
		t.Fatalf("status through the link: %v\n%s", err, out)
	}

	// Uncut: what the push of a fresh image of this size puts on the link.
	archive, _ := sizedImage(t, env, size)
	before := link.Sent(t)
	start := time.Now()
	if out, err := push(context.Background(), t.TempDir(), "push", archive).CombinedOutput(); err != nil {
		t.Fatalf("uncut push: %v\n%s", err, out)
	}
	uncut := link.Sent(t) - before
	t.Logf("uncut push of %d MiB: %d bytes on the link in %s", size>>20, uncut, time.Since(start).Round(time.Millisecond))

	// Cut: another fresh image of the same size.
	archive, tag := sizedImage(t, env, size)
	cache := t.TempDir()
	pieces := filepath.Join(robot.StateDir, "content", "pieces")
	held := dirBytes(pieces) // the first image's
	before = link.Sent(t)
	start = time.Now()
	runs := 0
	for cut := 0; ; cut++ {
		runs++
		runStart := link.Sent(t)
		cmd := push(context.Background(), cache, "push", archive)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		if cut == cuts {
			if err := <-done; err != nil {
				t.Fatalf("the last run, with the link left alone: %v\n%s", err, out.String())
			}
			break
		}
		// A random offset into what is left to send.
		left := min(max(uncut-(dirBytes(pieces)-held), 1<<20), 4<<20)
		offset := rng.Int64N(left)
		var err error
		finished := false
		for !finished {
			select {
			case err = <-done:
				finished = true
			case <-time.After(5 * time.Millisecond):
			}
			if !finished && link.Sent(t)-runStart >= offset {
				link.Up(t, false)
				exec.Command("pkill", "-KILL", "-P", strconv.Itoa(sshd.PID)).Run()
				time.Sleep(300 * time.Millisecond)
				link.Up(t, true)
				err = <-done
				break
			}
		}
		if finished && err == nil {
			t.Logf("cut %d: the push finished before the offset (%d bytes)", cut+1, offset)
			break
		}
		if !strings.Contains(out.String(), "run the command again") && !strings.Contains(out.String(), "connection") {
			t.Logf("cut %d: the push failed with: %s", cut+1, lastLines(out.String(), 2))
		}
		t.Logf("cut %d at %d KiB into run %d", cut+1, offset>>10, runs)
	}
	total := link.Sent(t) - before
	if _, err := docker("image", "inspect", tag); err != nil {
		t.Fatalf("%s not loaded after the cuts", tag)
	}
	made := runs - 1
	if made == 0 {
		t.Fatal("no cut happened")
	}
	perCut := (total - uncut) / int64(made)
	// Within each run the link's own retransmissions after the cut count
	// too: the figure is what a cut costs on the wire, all told.
	t.Logf("%d cuts, %d runs, %s: %d bytes on the link against %d uncut: %d KiB re-sent per cut", made, runs, time.Since(start).Round(time.Millisecond), total, uncut, perCut>>10)
}
