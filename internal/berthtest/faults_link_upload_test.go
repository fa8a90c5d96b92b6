package berthtest

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestReleaseUploadOverFaultyLink: `berth release create` uploads an
// image to the fleet server over HTTPS from a laptop behind a link of the
// test's own — 20 Mbit/s (tbf), 1% of the laptop's packets dropped — cut
// at random offsets of the upload: the link goes down, both ends' TCP
// connections break (ss -K) 300 ms later, the link comes back, and the
// command is run again, as a person would. The release must be created in
// the end, and no cut may re-send more than 256 KiB (cutCosts, the
// server's content store as the receiver). BERTH_FAULT_CUTS and
// BERTH_FAULT_SEED as for TestPushOverFaultyLink.
func TestReleaseUploadOverFaultyLink(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	rng := FaultSeed(t)
	cuts := FaultCount(t, "BERTH_FAULT_CUTS", 3)
	link := NewLink(t, "20mbit", "0.01")
	srv := newTLSServer(t, env, link.HostIP)
	srv.admin(t, "fleet", "create", "lab")
	pieces := filepath.Join(srv.dir, "data", "content", "pieces")
	size := max(24, 4*cuts) << 20
	port := FreePort(t)
	cache := t.TempDir()
	// create starts `berth release create` on the laptop's side of the
	// link for the image tag.
	create := func(tag, version string) (*bytes.Buffer, chan error) {
		compose := filepath.Join(t.TempDir(), "compose.yaml")
		write(t, compose, strings.Replace(web(port, version), "${IMG_A}", tag, 1))
		cmd := link.Command(srv.bin, "release", "create", "-f", compose, "--fleet", "lab", "--app", "app", "--version", version, "--json")
		cmd.Env = append(cmd.Env, "BERTH_SERVER="+srv.url, "BERTH_TOKEN="+srv.token, "BERTH_TLS_FINGERPRINT="+srv.fingerprint, "HOME="+srv.dir, "BERTH_CACHE="+cache)
		out := &bytes.Buffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		return out, done
	}

	// The test image's own layers first, so that the uncut upload measured
	// carries random bytes only, as the cut ones do.
	if out, err := create(env.Images["a"], "0"); <-err != nil {
		t.Fatalf("upload of the base image: %s", out)
	}

	// Uncut.
	var costs cutCosts
	tag := payloadImage(t, env, size, "/payload-1")
	held := settledBytes(pieces)
	before := link.Sent(t)
	start := time.Now()
	out, done := create(tag, "1")
	var crossed int64
	for finished := false; !finished; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("uncut upload: %v\n%s", err, out)
			}
			finished = true
		case <-time.After(5 * time.Millisecond):
			crossed = max(crossed, link.Received(t, true))
		}
	}
	uncut := link.Sent(t) - before
	costs.calibrate(t, crossed, settledBytes(pieces)-held)
	t.Logf("uncut upload of %d MiB: %d bytes on the link in %s", size>>20, uncut, time.Since(start).Round(time.Millisecond))

	// Cut.
	tag = payloadImage(t, env, size, "/payload-2")
	held = settledBytes(pieces)
	var last *bytes.Buffer // the output of the run that succeeded
	for run := 1; ; run++ {
		runStart, runHeld := link.Sent(t), dirBytes(pieces)
		out, done := create(tag, "2")
		last = out
		if run > cuts {
			if err := <-done; err != nil {
				t.Fatalf("the last run, with the link left alone: %v\n%s", err, out)
			}
			break
		}
		left := min(max(uncut-(runHeld-held), 1<<20), 4<<20)
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
				got := link.Received(t, true)
				// What came across is read on: the connections break
				// 300 ms later, as a broken one hands over what it had.
				time.Sleep(300 * time.Millisecond)
				link.Reset(t)
				link.Up(t, true)
				err = <-done
				costs.add(t, got, settledBytes(pieces)-runHeld)
				break
			}
		}
		if finished && err == nil {
			t.Logf("cut %d: the upload finished before the offset (%d bytes)", run, offset)
			break
		}
		if err == nil {
			t.Fatalf("cut %d: the upload succeeded through a cut\n%s", run, out)
		}
		t.Logf("cut %d at %d KiB into run %d: %s", run, offset>>10, run, lastLines(out.String(), 1))
	}
	var rel struct {
		ID string `json:"id"`
	}
	if i := strings.Index(last.String(), "{"); i < 0 || json.Unmarshal(last.Bytes()[i:], &rel) != nil || rel.ID == "" {
		t.Fatalf("release create --json:\n%s", last)
	}
	if out := srv.admin(t, "release", "list", "--fleet", "lab", "--json"); !strings.Contains(out, rel.ID) {
		t.Fatalf("release %s not listed:\n%s", rel.ID, out)
	}
	costs.check(t)
}
