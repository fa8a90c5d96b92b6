package berthtest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDeployOverSSH: the CLI reaches the device through a real sshd running
// berthd dial-stdio. An unknown host key is refused with its fingerprint;
// --accept-new-host-key trusts it once; then deploy, status, logs and
// rollback work as on the socket.
func TestDeployOverSSH(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	robot := env.NewDevice(t)
	sshd := env.NewSSHD(t)
	port := FreePort(t)

	out, err := robot.BerthSSH(t, sshd, "status")
	if err == nil {
		t.Fatalf("status with an unknown host key went through:\n%s", out)
	}
	Contains(t, out, "SHA256:", "--accept-new-host-key")
	if _, err := os.Stat(filepath.Join(sshd.Home, ".ssh", "known_hosts")); err == nil {
		t.Fatal("known_hosts written without --accept-new-host-key")
	}
	if out, err := robot.BerthSSH(t, sshd, "status", "--accept-new-host-key"); err != nil {
		t.Fatal(err, out)
	}

	f := filepath.Join(t.TempDir(), "compose.yaml")
	write(t, f, web(port, "1"))
	out, err = robot.BerthSSH(t, sshd, "deploy", "-f", f, "--app", "app", "--version", "v1")
	if err != nil {
		t.Fatal(err, out)
	}
	Contains(t, out, "committed", "app v1 is running")
	if got, _ := Get("http://127.0.0.1:" + port + "/"); got != "version=1\n" {
		t.Fatalf("answers %q", got)
	}
	write(t, f, web(port, "2"))
	if out, err := robot.BerthSSH(t, sshd, "deploy", "-f", f, "--app", "app", "--version", "v2"); err != nil {
		t.Fatal(err, out)
	}
	out, err = robot.BerthSSH(t, sshd, "status", "--json")
	if err != nil || !strings.Contains(out, `"version": "v2"`) {
		t.Fatalf("status over SSH: %v\n%s", err, out)
	}
	out, err = robot.BerthSSH(t, sshd, "logs", "--app", "app", "--tail", "3")
	if err != nil {
		t.Fatal(err, out)
	}
	Contains(t, out, "web | serving on 8080 version 2")
	if out, err := robot.BerthSSH(t, sshd, "rollback", "--app", "app"); err != nil {
		t.Fatal(err, out)
	}
	if got, _ := Get("http://127.0.0.1:" + port + "/"); got != "version=1\n" {
		t.Fatalf("after rollback over SSH answers %q", got)
	}

	// A changed host key is refused, even with --accept-new-host-key.
	kh := filepath.Join(sshd.Home, ".ssh", "known_hosts")
	b, _ := os.ReadFile(kh)
	fields := strings.Fields(string(b))
	fields[2] = "AAAAC3NzaC1lZDI1NTE5AAAAIFY6z2Bqk0ZvYc1Wq0e8wBz3B3f0p0Y5J7m9i5Q0w8mS"
	write(t, kh, strings.Join(fields, " ")+"\n")
	out, err = robot.BerthSSH(t, sshd, "status", "--accept-new-host-key")
	if err == nil {
		t.Fatalf("a changed host key was accepted:\n%s", out)
	}
	Contains(t, out, "known_hosts")
}
