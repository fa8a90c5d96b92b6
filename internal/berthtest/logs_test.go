package berthtest

import (
	"strings"
	"testing"
	"time"
)

// TestFleetLogs: a fleet device ships its app's container logs to the
// server, where `berth logs --device` reads them.
func TestFleetLogs(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	srv := env.NewServer(t)
	port := FreePort(t)
	key := srv.CreateFleet(t, "lab")
	robot := env.NewFleetDevice(t, srv.URL, key)
	robot.MustDeploy(t, "app", web(port, "7"))
	robot.AwaitHealthy(t, "app")

	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := srv.Berth(t, "logs", "--device", robot.Name, "--fleet", "lab", "--app", "app", "web", "--json")
		if err == nil && strings.Contains(out, "serving on") && strings.Contains(out, "version 7") && strings.Contains(out, `"stream":"stdout"`) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the app's first log line did not reach the server in 30s: %v\n%s", err, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
