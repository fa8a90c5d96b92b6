package delta

import (
	"math/rand"
	"slices"
	"testing"
)

func TestSuffixArray(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for _, n := range []int{0, 1, 2, 3, 10, 100, 1000, 5000} {
		for _, alpha := range []int{1, 2, 4, 256} {
			b := make([]byte, n)
			for i := range b {
				b[i] = byte(rng.Intn(alpha))
			}
			if got, want := suffixArray(b), naiveSuffixArray(b); !slices.Equal(got, want) {
				t.Fatalf("n=%d alpha=%d: suffix array differs\n got %v\nwant %v", n, alpha, got[:min(len(got), 20)], want[:min(len(want), 20)])
			}
		}
	}
}
