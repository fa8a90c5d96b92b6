package berthtest

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// maxResentPerCut is the invariant of the link-fault tests: what a cut
// costs is at most this many bytes on the wire.
const maxResentPerCut = 256 << 10

// cutCosts accounts, cut by cut, the bytes a transfer re-sends because a
// link was cut. Per cut: crossed is what the receiving side's TCP took in
// during the run the cut ended (each byte once, read with the link down);
// kept is what the receiver's content store gained from that run; and
// re-sent = crossed − kept × ratio, ratio being the wire bytes per stored
// byte of an uncut transfer over the same link. That is everything that
// came across and must come again: the frames that arrived but were not
// kept, and the run's own costs (handshakes, the plan, the question about
// missing pieces). Bytes, not time: TCP's retransmissions are not in it.
type cutCosts struct {
	ratio float64
	cuts  []cutCost
}

type cutCost struct {
	crossed, kept, resent int64
}

// calibrate sets the ratio from an uncut transfer.
func (c *cutCosts) calibrate(t testing.TB, crossed, stored int64) {
	t.Helper()
	if crossed <= 0 || stored <= 0 {
		t.Fatalf("uncut transfer: %d bytes crossed, %d stored", crossed, stored)
	}
	c.ratio = float64(crossed) / float64(stored)
	t.Logf("uncut: %d bytes crossed the link for %d bytes stored (%.4f on the wire per byte stored)", crossed, stored, c.ratio)
}

// add records one cut.
func (c *cutCosts) add(t testing.TB, crossed, kept int64) {
	t.Helper()
	cc := cutCost{crossed: crossed, kept: kept, resent: crossed - int64(float64(kept)*c.ratio)}
	c.cuts = append(c.cuts, cc)
	t.Logf("cut %d: %d bytes came across, %d stored: %d KiB re-sent", len(c.cuts), crossed, kept, cc.resent>>10)
}

// report logs the largest and the mean cost.
func (c *cutCosts) report(t testing.TB) {
	t.Helper()
	if len(c.cuts) == 0 {
		t.Fatal("no cut happened")
	}
	var worst, sum int64
	for _, cc := range c.cuts {
		worst = max(worst, cc.resent)
		sum += cc.resent
	}
	t.Logf("%d cuts: re-sent per cut max %d KiB, mean %d KiB (bound %d KiB)", len(c.cuts), worst>>10, sum/int64(len(c.cuts))>>10, maxResentPerCut>>10)
}

// check reports, and fails the test if any cut re-sent more than
// maxResentPerCut.
func (c *cutCosts) check(t testing.TB) {
	t.Helper()
	c.report(t)
	for i, cc := range c.cuts {
		if cc.resent > maxResentPerCut {
			t.Errorf("cut %d re-sent %d KiB (%d bytes came across, %d stored); at most %d KiB may be", i+1, cc.resent>>10, cc.crossed, cc.kept, maxResentPerCut>>10)
		}
	}
}

// settledBytes is dirBytes(pieces) once the store has settled: no batch
// under way in its tmp directory (a receiver commits what arrived when it
// sees its stream end: every piece of the batch flushed, then moved into
// pieces/), and pieces/ unchanged for 300 ms; waiting at most 20 s.
func settledBytes(pieces string) int64 {
	tmp := filepath.Join(filepath.Dir(pieces), "tmp")
	last, since := dirBytes(pieces), time.Now()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		if n := dirBytes(pieces); n != last {
			last, since = n, time.Now()
		} else if pending, _ := os.ReadDir(tmp); len(pending) == 0 && time.Since(since) >= 300*time.Millisecond {
			break
		}
	}
	return last
}
