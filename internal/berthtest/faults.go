package berthtest

import (
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"
)

// Fault runs are repeatable: the seed is logged, and BERTH_FAULT_SEED replays
// it. Their length comes from an environment variable, small by default (CI)
// and long by hand (make faults).

// FaultSeed returns the run's random source and logs its seed.
func FaultSeed(t testing.TB) *rand.Rand {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("BERTH_FAULT_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("BERTH_FAULT_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("fault seed %d (replay with BERTH_FAULT_SEED=%d)", seed, seed)
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

// FaultCount is how many faults a test injects: the variable name's value,
// else def.
func FaultCount(t testing.TB, name string, def int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive count", name, s)
	}
	return n
}

// requireRoot skips a test that needs root (mounts, namespaces, a second
// engine) outside CI, and fails it in CI, where a missing prerequisite is a
// failure.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("this fault test needs root (loop mounts, network namespaces, a second dockerd)")
	}
	t.Skip("needs root")
}
