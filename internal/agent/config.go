package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/berth-robotics/berth/internal/release"
)

// Config is the agent's configuration: flags, plus the policy file
// <state-dir>/config.json (every field optional).
type Config struct {
	StateDir   string `json:"-"`
	Socket     string `json:"-"`
	Name       string `json:"-"`
	DockerHost string `json:"-"`
	Version    string `json:"-"`
	// Fleet, if set, puts the agent in fleet mode (fleet.go).
	Fleet *FleetConfig `json:"-"`

	// Settle is how long a service without a healthcheck must run without
	// restarting to count as up (default 10s).
	Settle release.Duration `json:"settle,omitempty"`
	// VerifyTimeout bounds the health gate and depends_on waits (default 2m).
	VerifyTimeout release.Duration `json:"verify_timeout,omitempty"`
	// LockTimeout bounds the wait for an app's update lock (default 10m).
	LockTimeout release.Duration `json:"lock_timeout,omitempty"`
	// Retain is how many releases per app are kept for rollback, the current
	// one included (default 3).
	Retain int `json:"retain,omitempty"`
	// MinFreeMB is the free space the agent keeps on the state and engine
	// disks; a deploy that would go below it is refused (default 256).
	MinFreeMB uint64 `json:"min_free_mb,omitempty"`
	// ContentBudgetMB bounds the content store (the pieces kept as bases for
	// the next transfer): over it, collection keeps only the kept releases'
	// layers, then only the current ones' (default 4096; 0 in the file
	// means the default).
	ContentBudgetMB uint64 `json:"content_budget_mb,omitempty"`
	// MaintenanceWindows, when set, restrict switches to these local-time
	// windows: "22:00-06:00", "Sat,Sun 00:00-24:00", "Mon-Fri 12:00-13:00".
	MaintenanceWindows []string `json:"maintenance_windows,omitempty"`
}

// LoadPolicy reads <state-dir>/config.json into c, if it exists, and fills defaults.
func (c *Config) LoadPolicy() error {
	p := filepath.Join(c.StateDir, "config.json")
	b, err := os.ReadFile(p)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read %s: %w", p, err)
	}
	if err == nil {
		dec := json.NewDecoder(strings.NewReader(string(b)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(c); err != nil {
			return fmt.Errorf("%s: %v (fields: settle, verify_timeout, lock_timeout, retain, min_free_mb, content_budget_mb, maintenance_windows): %w", p, err, release.ErrInvalid)
		}
	}
	c.defaults()
	if _, err := parseWindows(c.MaintenanceWindows); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	return nil
}

func (c *Config) defaults() {
	if c.Settle == 0 {
		c.Settle = release.Duration(10 * time.Second)
	}
	if c.VerifyTimeout == 0 {
		c.VerifyTimeout = release.Duration(2 * time.Minute)
	}
	if c.LockTimeout == 0 {
		c.LockTimeout = release.Duration(10 * time.Minute)
	}
	if c.Retain < 2 {
		c.Retain = 3
	}
	if c.MinFreeMB == 0 {
		c.MinFreeMB = 256
	}
	if c.ContentBudgetMB == 0 {
		c.ContentBudgetMB = 4096
	}
}
