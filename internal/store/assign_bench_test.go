package store_test

import (
	"fmt"
	"testing"

	"github.com/berth-robotics/berth/internal/store"
)

// BenchmarkAssignFleet: a fleet-wide release to 10,000 devices, the
// write at the start of every device's wake-up (bench/fleet); each
// iteration assigns the other of two releases, so every device changes.
func BenchmarkAssignFleet(b *testing.B) {
	for _, be := range backends() {
		b.Run(be.name, func(b *testing.B) {
			if be.name == "Postgres" {
				pg.Require(b)
			}
			dsn, dir := be.dsn(b)
			db, err := store.Open(ctx, dsn, dir)
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			f, err := db.CreateFleet(ctx, "bench", "bp_bench-key-0123456789")
			if err != nil {
				b.Fatal(err)
			}
			const devices = 10000
			for i := range devices {
				if _, err := db.CreateDevice(ctx, f.ID, fmt.Sprintf("robot-%05d", i), fmt.Sprintf("bd_bench-token-%05d", i)); err != nil {
					b.Fatal(err)
				}
			}
			var rels []string
			for _, v := range []string{"v1", "v2"} {
				r, _, err := db.CreateRelease(ctx, store.Release{ID: "sha256:" + v, FleetID: f.ID, App: "nav", Version: v, Spec: []byte(`{"services":{}}`), CreatedBy: "bench"})
				if err != nil {
					b.Fatal(err)
				}
				rels = append(rels, r.ID)
			}
			i := 0
			for b.Loop() {
				changed, _, err := db.AssignFleet(ctx, f.ID, rels[i%2])
				if err != nil || len(changed.Changed) != devices {
					b.Fatalf("%d changed, %v", len(changed.Changed), err)
				}
				i++
			}
		})
	}
}
