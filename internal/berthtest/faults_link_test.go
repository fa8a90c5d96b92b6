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
// serving the connection dies 300 ms later, the link comes back, and the
// push is run again, as a person would. The transfer must complete, and no
// cut may re-send more than 256 KiB: per cut, what the robot's TCP took in
// during the run (each byte once, read with the link down) less what its
// content store gained from the run, in wire bytes (cutCosts).
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
	pieces := filepath.Join(robot.StateDir, "content", "pieces")
	// run starts a push; received follows what the robot has taken in of
	// it while it runs.
	run := func(cache, archive string) (cmd *exec.Cmd, out *bytes.Buffer, done chan error) {
		cmd = push(context.Background(), cache, "push", archive)
		out = &bytes.Buffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done = make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		return cmd, out, done
	}

	// Uncut: what the push of a fresh image of this size costs on the link.
	var costs cutCosts
	archive, _ := sizedImage(t, env, size)
	held := dirBytes(pieces)
	before := link.Sent(t)
	start := time.Now()
	_, out, done := run(t.TempDir(), archive)
	var crossed int64
	for finished := false; !finished; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("uncut push: %v\n%s", err, out)
			}
			finished = true
		case <-time.After(5 * time.Millisecond):
			crossed = max(crossed, link.Received(t, true))
		}
	}
	uncut := link.Sent(t) - before
	costs.calibrate(t, crossed, settledBytes(pieces)-held)
	t.Logf("uncut push of %d MiB: %d bytes on the link in %s", size>>20, uncut, time.Since(start).Round(time.Millisecond))

	// Cut: another fresh image of the same size.
	archive, tag := sizedImage(t, env, size)
	cache := t.TempDir()
	held = settledBytes(pieces) // the first image's
	before = link.Sent(t)
	start = time.Now()
	runs := 0
	for cut := 0; ; cut++ {
		runs++
		runStart, runHeld := link.Sent(t), dirBytes(pieces)
		_, out, done := run(cache, archive)
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
				crossed := link.Received(t, true)
				// The robot's side goes on handing what came to berthd
				// until its sshd dies.
				time.Sleep(300 * time.Millisecond)
				exec.Command("pkill", "-KILL", "-P", strconv.Itoa(sshd.PID)).Run()
				link.Up(t, true)
				err = <-done
				costs.add(t, crossed, settledBytes(pieces)-runHeld)
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
	// All told, as before: the link's own retransmissions after the cuts
	// and their noise (1% loss) included.
	t.Logf("%d cuts, %d runs, %s: %d bytes on the link against %d uncut: %d KiB more per cut, all told", made, runs, time.Since(start).Round(time.Millisecond), total, uncut, (total-uncut)/int64(made)>>10)
	costs.check(t)
}
