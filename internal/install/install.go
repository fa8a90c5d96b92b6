// Package install sets a robot up to run berthd, over SSH and once: it
// copies the berthd binary built for the robot's architecture, creates the
// berth group for the socket, installs a systemd unit and starts it — or,
// where systemd is not running (a container, a minimal image), starts the
// unit's ExecStart line directly and says so. Every step checks first, so a
// second install changes nothing; Uninstall takes it all away again but the
// apps' volumes.
package install

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/sshconn"
)

// Runner runs shell commands on the robot: sshconn.Client.
type Runner interface {
	RunInput(ctx context.Context, cmd string, stdin io.Reader) ([]byte, error)
}

// Options say what to install where. Zero values are the defaults.
type Options struct {
	Binary   string // local berthd for the robot's architecture (see FindBinary)
	BinDir   string // default /usr/local/bin
	UnitDir  string // default /etc/systemd/system
	UnitName string // default berthd.service
	StateDir string // default /var/lib/berth
	Socket   string // default /run/berth/berthd.sock
	Name     string // agent name; default the robot's hostname
	Group    string // default berth: may use the socket without root
	Args     []string
	// NoSystemd starts ExecStart directly even where systemd runs.
	NoSystemd bool
	Log       io.Writer
}

func (o *Options) defaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&o.BinDir, "/usr/local/bin")
	def(&o.UnitDir, "/etc/systemd/system")
	def(&o.StateDir, "/var/lib/berth")
	def(&o.Socket, sshconn.DefaultSocket)
	def(&o.Group, "berth")
	def(&o.UnitName, Unit)
	if o.Log == nil {
		o.Log = io.Discard
	}
}

// Unit is the systemd unit's default name.
const Unit = "berthd.service"

// Result says what Install did.
type Result struct {
	Arch    string `json:"arch"`
	Binary  string `json:"binary"`   // the path on the robot
	Changed bool   `json:"changed"`  // binary or unit replaced, group made, or agent (re)started
	Systemd bool   `json:"systemd"`  // the unit runs under systemd; false: ExecStart run directly
	Started bool   `json:"started"`  // the agent was (re)started now
	PIDFile string `json:"pid_file"` // without systemd: where its PID is
	LogFile string `json:"log_file"` // without systemd: its log
}

// sh runs a shell script on the robot as root (through sudo -n when the
// login is not root).
type sh struct {
	r    Runner
	sudo bool
}

func (s sh) run(ctx context.Context, script string, stdin io.Reader) (string, error) {
	cmd := "sh -c " + sshconn.ShellQuote(script)
	if s.sudo {
		cmd = "sudo -n " + cmd
	}
	out, err := s.r.RunInput(ctx, cmd, stdin)
	if err != nil {
		return string(out), fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func q(s string) string { return sshconn.ShellQuote(s) }

// Probe is what Install learns of the robot first.
type Probe struct {
	Arch     string // GOARCH: amd64, arm64, arm
	Hostname string
	Root     bool
	Systemd  bool // systemd is PID 1 and systemctl answers
}

// ProbeRobot asks the robot its architecture, whether the login is root and
// whether systemd runs.
func ProbeRobot(ctx context.Context, r Runner) (Probe, error) {
	out, err := r.RunInput(ctx, `uname -m; id -u; hostname; if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then echo systemd; else echo none; fi`, nil)
	if err != nil {
		return Probe{}, fmt.Errorf("probe the robot: %w: %s", err, strings.TrimSpace(string(out)))
	}
	f := strings.Fields(string(out))
	if len(f) < 4 {
		return Probe{}, fmt.Errorf("probe the robot: unexpected answer %q", out)
	}
	p := Probe{Root: f[1] == "0", Hostname: f[2], Systemd: f[3] == "systemd"}
	switch f[0] {
	case "x86_64", "amd64":
		p.Arch = "amd64"
	case "aarch64", "arm64":
		p.Arch = "arm64"
	case "armv7l", "armv7", "armv8l":
		p.Arch = "arm"
	default:
		return p, fmt.Errorf("the robot's architecture %q: berthd is built for x86_64, aarch64 and armv7l: %w", f[0], release.ErrInvalid)
	}
	return p, nil
}

// BinaryName is the file `make cross` writes for a GOARCH: berthd-linux-amd64,
// berthd-linux-arm64, berthd-linux-armv7.
func BinaryName(arch string) string {
	if arch == "arm" {
		return "berthd-linux-armv7"
	}
	return "berthd-linux-" + arch
}

// FindBinary picks the berthd for arch from from: a file is taken as it is,
// a directory (a release directory, or bin/ after make cross) must hold
// BinaryName(arch).
func FindBinary(from, arch string) (string, error) {
	st, err := os.Stat(from)
	if err != nil {
		return "", fmt.Errorf("berthd binaries: %w (run make cross, or give --berthd PATH)", err)
	}
	if !st.IsDir() {
		return from, nil
	}
	p := filepath.Join(from, BinaryName(arch))
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("no berthd for linux/%s in %s: want %s (make cross builds it): %w", arch, from, BinaryName(arch), release.ErrNotFound)
	}
	return p, nil
}

// ExecStart is the agent's command line, as the unit runs it.
func ExecStart(o Options) string {
	args := []string{path.Join(o.BinDir, "berthd"), "--state-dir", o.StateDir, "--socket", o.Socket}
	if o.Name != "" {
		args = append(args, "--name", o.Name)
	}
	args = append(args, o.Args...)
	for i, a := range args {
		args[i] = q(a)
	}
	return strings.Join(args, " ")
}

// UnitFile is the systemd unit for o.
func UnitFile(o Options) string {
	return `[Unit]
Description=berth device agent (berthd)
Documentation=https://github.com/berth-robotics/berth
After=docker.service network-online.target
Wants=docker.service network-online.target

[Service]
ExecStart=` + ExecStart(o) + `
Restart=always
RestartSec=2
KillMode=process

[Install]
WantedBy=multi-user.target
`
}

// Install sets the robot up; see the package comment.
func Install(ctx context.Context, r Runner, o Options) (*Result, error) {
	o.defaults()
	say := func(format string, args ...any) { fmt.Fprintf(o.Log, format+"\n", args...) }
	p, err := ProbeRobot(ctx, r)
	if err != nil {
		return nil, err
	}
	if o.Name == "" {
		o.Name = p.Hostname
	}
	s := sh{r: r, sudo: !p.Root}
	res := &Result{Arch: p.Arch, Binary: path.Join(o.BinDir, "berthd"), Systemd: p.Systemd && !o.NoSystemd}
	bin, err := os.ReadFile(o.Binary)
	if err != nil {
		return nil, fmt.Errorf("berthd for %s: %w", p.Arch, err)
	}
	sum := sha256.Sum256(bin)
	want := hex.EncodeToString(sum[:])
	say("robot %s: linux/%s, %s", p.Hostname, p.Arch, map[bool]string{true: "systemd", false: "no systemd running"}[p.Systemd])

	// the binary, by temp file and rename, only when it differs
	have, _ := s.run(ctx, "sha256sum "+q(res.Binary)+" 2>/dev/null | cut -d' ' -f1", nil)
	binChanged := strings.TrimSpace(have) != want
	if binChanged {
		tmp := res.Binary + ".new"
		if _, err := s.run(ctx, "mkdir -p "+q(o.BinDir)+" && cat > "+q(tmp)+" && chmod 755 "+q(tmp)+" && "+q(tmp)+" version >/dev/null && mv -f "+q(tmp)+" "+q(res.Binary), bytes.NewReader(bin)); err != nil {
			return res, fmt.Errorf("copy berthd to %s: %w", res.Binary, err)
		}
		say("copied %s to %s (%d bytes, sha256 %s)", filepath.Base(o.Binary), res.Binary, len(bin), want[:12])
	} else {
		say("%s is already this berthd (sha256 %s)", res.Binary, want[:12])
	}

	// the group for the socket
	// groupadd fails at once while another tool holds /etc/group's lock: retry
	g := q(o.Group)
	out, err := s.run(ctx, "if getent group "+g+" >/dev/null 2>&1; then echo have; else "+
		"for i in $(seq 20); do (groupadd --system "+g+" || addgroup -S "+g+") >/dev/null 2>&1 && break; sleep 0.25; done; "+
		"getent group "+g+" >/dev/null 2>&1 && echo made || { echo cannot make the group "+g+" >&2; exit 1; }; fi", nil)
	if err != nil {
		return res, fmt.Errorf("group %s: %w", o.Group, err)
	}
	groupMade := strings.TrimSpace(out) == "made"
	if groupMade {
		say("made the group %s: its members may use %s without root", o.Group, o.Socket)
	}

	// the unit
	unit := UnitFile(o)
	unitPath := path.Join(o.UnitDir, o.UnitName)
	old, _ := s.run(ctx, "cat "+q(unitPath)+" 2>/dev/null || true", nil)
	unitChanged := old != unit
	if unitChanged {
		if _, err := s.run(ctx, "mkdir -p "+q(o.UnitDir)+" && cat > "+q(unitPath+".new")+" && mv -f "+q(unitPath+".new")+" "+q(unitPath), strings.NewReader(unit)); err != nil {
			return res, fmt.Errorf("write %s: %w", unitPath, err)
		}
		say("wrote %s", unitPath)
	}
	restart := binChanged || unitChanged

	if res.Systemd {
		script := "systemctl daemon-reload && systemctl enable " + o.UnitName + " >/dev/null 2>&1 && "
		if restart {
			script += "systemctl restart " + o.UnitName + " && echo started"
		} else {
			script += "{ systemctl is-active --quiet " + o.UnitName + " && echo running || { systemctl start " + o.UnitName + " && echo started; }; }"
		}
		out, err := s.run(ctx, script, nil)
		if err != nil {
			return res, fmt.Errorf("start %s with systemd: %w", o.UnitName, err)
		}
		res.Started = strings.Contains(out, "started")
		say("systemd: %s %s", o.UnitName, map[bool]string{true: "(re)started", false: "already running"}[res.Started])
	} else {
		res.PIDFile = path.Join(o.StateDir, "berthd.pid")
		res.LogFile = path.Join(o.StateDir, "berthd.log")
		alive := "[ -f " + q(res.PIDFile) + " ] && kill -0 \"$(cat " + q(res.PIDFile) + ")\" 2>/dev/null"
		script := "mkdir -p " + q(o.StateDir) + " " + q(path.Dir(o.Socket)) + " && "
		if restart {
			script += "if " + alive + "; then kill \"$(cat " + q(res.PIDFile) + ")\"; for i in $(seq 100); do " + alive + " || break; sleep 0.1; done; fi; "
		} else {
			script += "if " + alive + "; then echo running; exit 0; fi; "
		}
		script += "nohup setsid " + ExecStart(o) + " >>" + q(res.LogFile) + " 2>&1 </dev/null & echo $! > " + q(res.PIDFile) + "; echo started"
		out, err := s.run(ctx, script, nil)
		if err != nil {
			return res, fmt.Errorf("start berthd: %w", err)
		}
		res.Started = strings.Contains(out, "started")
		say("no systemd running on the robot: ran the unit's ExecStart directly (%s; PID in %s, log in %s); it will not come back after a reboot until systemd runs the unit",
			map[bool]string{true: "started", false: "already running"}[res.Started], res.PIDFile, res.LogFile)
	}
	res.Changed = binChanged || unitChanged || groupMade || res.Started
	return res, nil
}

// Uninstall stops berthd and removes its unit, binary, socket and state
// directory. The apps' containers must be removed first (through the agent,
// while it runs); their volumes and images stay on the engine.
func Uninstall(ctx context.Context, r Runner, o Options) ([]string, error) {
	o.defaults()
	p, err := ProbeRobot(ctx, r)
	if err != nil {
		return nil, err
	}
	s := sh{r: r, sudo: !p.Root}
	unitPath := path.Join(o.UnitDir, o.UnitName)
	pid := path.Join(o.StateDir, "berthd.pid")
	var done []string
	if p.Systemd && !o.NoSystemd {
		if out, err := s.run(ctx, "if [ -f "+q(unitPath)+" ]; then systemctl disable --now "+o.UnitName+" >/dev/null 2>&1; echo stopped; fi", nil); err == nil && strings.Contains(out, "stopped") {
			done = append(done, "stopped and disabled "+o.UnitName)
		}
	}
	alive := "[ -f " + q(pid) + " ] && kill -0 \"$(cat " + q(pid) + ")\" 2>/dev/null"
	out, err := s.run(ctx, "if "+alive+"; then kill \"$(cat "+q(pid)+")\"; for i in $(seq 100); do "+alive+" || break; sleep 0.1; done; echo stopped; fi", nil)
	if err != nil {
		return done, fmt.Errorf("stop berthd: %w", err)
	}
	if strings.Contains(out, "stopped") {
		done = append(done, "stopped berthd (PID file "+pid+")")
	}
	script := "rm -f " + q(unitPath) + " " + q(path.Join(o.BinDir, "berthd")) + " " + q(o.Socket) + " && rm -rf " + q(o.StateDir)
	if p.Systemd && !o.NoSystemd {
		script += " && systemctl daemon-reload"
	}
	if _, err := s.run(ctx, script, nil); err != nil {
		return done, fmt.Errorf("remove berthd's files: %w", err)
	}
	done = append(done, "removed "+unitPath+", "+path.Join(o.BinDir, "berthd")+", "+o.Socket+" and "+o.StateDir)
	return done, nil
}
