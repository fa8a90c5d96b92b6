package berthtest

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Installed is a berthd that berth install set up on this machine through
// a real sshd, in temporary directories.
type Installed struct {
	Target  string // --to for every later command
	Dirs    []string
	Systemd bool // the unit was started by a real systemd; else its ExecStart ran directly
	sshd    *SSHD
	env     *Env
	flags   []string
}

// Install runs berth install through sshd into temporary directories (a
// unit in /run/systemd/system when systemd runs here, else ExecStart run
// directly) and uninstalls at cleanup.
func (e *Env) Install(t testing.TB, sshd *SSHD) (*Installed, string) {
	t.Helper()
	root := t.TempDir()
	id := randomID()
	bin, state := filepath.Join(root, "bin"), filepath.Join(root, "state")
	socket := filepath.Join(root, "run", "berthd.sock")
	in := &Installed{sshd: sshd, env: e, Target: "ssh://robot?socket=" + socket + "&berthd=" + filepath.Join(bin, "berthd")}
	unitDir := filepath.Join(root, "units")
	if st, err := os.Stat("/run/systemd/system"); err == nil && st.IsDir() {
		if _, err := exec.LookPath("systemctl"); err == nil {
			unitDir, in.Systemd = "/run/systemd/system", true
		}
	}
	group := "berthtest-" + id[:6]
	in.flags = []string{"--unit-dir", unitDir, "--unit", "berthtest-" + id + ".service", "--state-dir", state, "--group", group, "--name", "berthtest-install-" + id}
	out, err := in.Berth(t, append([]string{"install", "--accept-new-host-key", "--berthd", filepath.Join(e.Bin, "berthd")}, in.flags...)...)
	if err != nil {
		t.Fatalf("berth install: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := in.Berth(t, append([]string{"uninstall", "--volumes"}, in.flags[:8]...)...); err != nil {
			t.Errorf("berth uninstall: %v\n%s", err, out)
		}
		for i := 0; i < 20 && exec.Command("groupdel", group).Run() != nil; i++ {
			if exec.Command("getent", "group", group).Run() != nil {
				break // gone
			}
			time.Sleep(250 * time.Millisecond) // /etc/group locked by a parallel test
		}
	})
	return in, out
}

// Berth runs berth with --to the installed agent, HOME at the sshd's home.
func (in *Installed) Berth(t testing.TB, args ...string) (string, error) {
	t.Helper()
	d := &Device{env: in.env}
	return d.BerthEnv(t, []string{"HOME=" + in.sshd.Home}, append(args, "--to", in.Target)...)
}

// TestInstall: berth install over a real sshd copies berthd, makes the
// group, writes the unit and starts it (under systemd when it runs here,
// else the unit's ExecStart directly: the output says which); the agent
// answers; a second install changes nothing; uninstall removes it all.
func TestInstall(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	sshd := env.NewSSHD(t)
	in, out := env.Install(t, sshd)
	if in.Systemd {
		t.Log("systemd runs here: the unit was started by systemd")
		Contains(t, out, "systemd: berthtest-")
	} else {
		t.Log("no systemd here: the unit's ExecStart line was run directly")
		Contains(t, out, "no systemd running on the robot: ran the unit's ExecStart directly")
	}
	Contains(t, out, "copied berthd to", "made the group berthtest-", "wrote ", "answers on ssh://robot")

	unitDir, state := in.flags[1], in.flags[5]
	unit, err := os.ReadFile(filepath.Join(unitDir, in.flags[3]))
	if err != nil {
		t.Fatal(err)
	}
	Contains(t, string(unit), "ExecStart=", "/bin/berthd --state-dir "+state+" --socket ", "Restart=always", "WantedBy=multi-user.target")

	out, err = in.Berth(t, append([]string{"install", "--json", "--berthd", filepath.Join(env.Bin, "berthd")}, in.flags...)...)
	if err != nil {
		t.Fatalf("second install: %v\n%s", err, out)
	}
	var again struct {
		Install struct {
			Changed bool `json:"changed"`
		} `json:"install"`
	}
	if err := json.Unmarshal([]byte(out), &again); err != nil || again.Install.Changed {
		t.Fatalf("second install changed something (or said nothing): %v\n%s", err, out)
	}
	if out, err := in.Berth(t, "status"); err != nil {
		t.Fatalf("status after install: %v\n%s", err, out)
	}

	out, err = in.Berth(t, append([]string{"uninstall"}, in.flags[:8]...)...)
	if err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	Contains(t, out, "berthd is uninstalled")
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("state dir after uninstall: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err = in.Berth(t, "status")
		if err != nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err == nil || !strings.Contains(out, "berth") {
		t.Fatalf("berthd still answers after uninstall:\n%s", out)
	}
}
