package install

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type fakeRunner struct{ answer string }

func (f fakeRunner) RunInput(context.Context, string, io.Reader) ([]byte, error) {
	return []byte(f.answer), nil
}

func TestProbeRobot(t *testing.T) {
	tests := []struct {
		answer string
		want   Probe
		err    string
	}{
		{"x86_64\n0\nnuc\nsystemd\n", Probe{Arch: "amd64", Hostname: "nuc", Root: true, Systemd: true}, ""},
		{"aarch64\n1000\njetson\nnone\n", Probe{Arch: "arm64", Hostname: "jetson"}, ""},
		{"armv7l\n1000\npi\nnone\n", Probe{Arch: "arm", Hostname: "pi"}, ""},
		{"mips\n0\nold\nnone\n", Probe{}, `architecture "mips"`},
		{"garbage", Probe{}, "unexpected answer"},
	}
	for _, tt := range tests {
		t.Run(strings.Fields(tt.answer)[0], func(t *testing.T) {
			got, err := ProbeRobot(context.Background(), fakeRunner{tt.answer})
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestFindBinary(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"berthd-linux-amd64", "berthd-linux-armv7"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if p, err := FindBinary(dir, "arm"); err != nil || filepath.Base(p) != "berthd-linux-armv7" {
		t.Errorf("arm: %q %v", p, err)
	}
	if _, err := FindBinary(dir, "arm64"); err == nil || !strings.Contains(err.Error(), "make cross") {
		t.Errorf("arm64 missing: %v", err)
	}
	file := filepath.Join(dir, "berthd-linux-amd64")
	if p, err := FindBinary(file, "arm64"); err != nil || p != file {
		t.Errorf("a file is taken as it is: %q %v", p, err)
	}
}

func TestUnitFile(t *testing.T) {
	o := Options{Name: "robot 1", Args: []string{"--server=https://fleet:7443"}}
	o.defaults()
	u := UnitFile(o)
	for _, s := range []string{
		"ExecStart=/usr/local/bin/berthd --state-dir /var/lib/berth --socket /run/berth/berthd.sock --name 'robot 1' --server=https://fleet:7443\n",
		"Restart=always", "After=docker.service", "WantedBy=multi-user.target",
	} {
		if !strings.Contains(u, s) {
			t.Errorf("unit lacks %q:\n%s", s, u)
		}
	}
}
