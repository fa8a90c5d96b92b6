package berthtest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/sshtest"
)

// SSHD is a real OpenSSH server on a loopback port, and a home directory
// whose ~/.ssh holds a client key and a config with the Host alias "robot".
type SSHD struct {
	Port int
	Home string // use as HOME for berth
	PID  int    // the listening sshd; each connection is a child of it
	dir  string
	mu   sync.Mutex
	log  bytes.Buffer
}

func (s *SSHD) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.Write(b)
}

// NewSSHD starts sshd (Debian's openssh-server): skipped when it is missing
// outside CI, a failure in CI. It is stopped at cleanup.
func (e *Env) NewSSHD(t testing.TB) *SSHD {
	t.Helper()
	return e.NewSSHDAt(t, "127.0.0.1")
}

// NewSSHDAt is NewSSHD listening on ip (a link of the test's own).
func (e *Env) NewSSHDAt(t testing.TB, ip string) *SSHD {
	t.Helper()
	sshd, err := exec.LookPath("sshd")
	if err != nil {
		sshd = "/usr/sbin/sshd"
	}
	if _, err := os.Stat(sshd); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("sshd is missing: apt-get install openssh-server")
		}
		t.Skip("sshd is missing: apt-get install openssh-server")
	}
	dir := t.TempDir()
	s := &SSHD{dir: dir, Home: filepath.Join(dir, "home")}
	ssh := filepath.Join(s.Home, ".ssh")
	if err := os.MkdirAll(ssh, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{filepath.Join(dir, "host_ed25519"), filepath.Join(ssh, "id_ed25519")} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k).CombinedOutput(); err != nil {
			t.Fatal(err, string(out))
		}
	}
	pub, err := os.ReadFile(filepath.Join(ssh, "id_ed25519.pub"))
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "authorized_keys"), string(pub))
	_ = os.MkdirAll("/run/sshd", 0o755) // sshd as root wants its privilege separation dir
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	s.Port = l.Addr().(*net.TCPAddr).Port
	l.Close()
	write(t, filepath.Join(dir, "sshd_config"), sshtest.Config(fmt.Sprintf("%s:%d", ip, s.Port), dir, []string{"host_ed25519"}))
	write(t, filepath.Join(ssh, "config"), fmt.Sprintf("Host robot\n  HostName %s\n  Port %d\n  User root\n  IdentityFile ~/.ssh/id_ed25519\n", ip, s.Port))
	cmd := exec.Command(sshd, "-D", "-e", "-f", filepath.Join(dir, "sshd_config"))
	cmd.Stdout, cmd.Stderr = s, s
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.PID = cmd.Process.Pid
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			s.mu.Lock()
			t.Logf("sshd log:\n%s", s.log.String())
			s.mu.Unlock()
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", net.JoinHostPort(ip, fmt.Sprint(s.Port))); err == nil {
			c.Close()
			return s
		}
		select {
		case <-done:
			t.Fatalf("sshd exited: %s", s.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("sshd does not listen")
		}
	}
}

// Target is an SSH --to for device d through this sshd (Host alias "robot").
func (s *SSHD) Target(d *Device) string {
	return "ssh://robot?socket=" + d.Socket + "&berthd=" + filepath.Join(d.env.Bin, "berthd")
}

func write(t testing.TB, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// BerthSSH runs berth against d through s, with HOME set to s.Home.
func (d *Device) BerthSSH(t testing.TB, s *SSHD, args ...string) (string, error) {
	t.Helper()
	return d.BerthEnv(t, []string{"HOME=" + s.Home}, append(args, "--to", s.Target(d))...)
}
