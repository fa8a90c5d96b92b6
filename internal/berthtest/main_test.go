package berthtest

import (
	"fmt"
	"os"
	"testing"

	"github.com/berth-robotics/berth/internal/pgtest"
)

// pg is one PostgreSQL for this test binary, started by the first test
// that needs it (replicas of the fleet server share one).
var pg pgtest.Cluster

func TestMain(m *testing.M) {
	code := m.Run()
	Teardown()
	if err := pg.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "stop PostgreSQL:", err)
	}
	os.Exit(code)
}
