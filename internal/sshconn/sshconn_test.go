package sshconn

import (
	"context"
	"crypto/ed25519"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/berth-robotics/berth/internal/localapi"
)

// TestDialStdio: an explicit key, the real berthd's dial-stdio, the local
// API client on top; a streaming request and a plain one at once; Run.
// known_hosts holds only the server's ed25519 key while the server also has
// an ECDSA key, which x/crypto would otherwise ask for first.
func TestDialStdio(t *testing.T) {
	d := startSSHD(t)
	sock := fakeAgent(t)
	c := dial(t, d.target(berthdBinary(t), sock), d.opts(t))
	state(t, c)

	// A follow request holds one session while a second request needs another.
	api := localapi.New("test", c.DialStdio)
	defer api.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a loaded machine: sshd forks per session
	defer cancel()
	evctx, stopEvents := context.WithCancel(ctx)
	first := make(chan struct{})
	evDone := make(chan error, 1)
	go func() {
		n := 0
		evDone <- api.Events(evctx, "", 0, true, func(e localapi.Event) bool {
			if n++; n == 1 {
				close(first)
			}
			return true
		})
	}()
	select {
	case <-first:
	case err := <-evDone:
		t.Fatalf("events ended before the first event: %v", err)
	case <-ctx.Done():
		t.Fatal("no event within a minute")
	}
	for range 3 {
		if st, err := api.State(ctx); err != nil || st.Agent.Name != "test-robot" {
			t.Fatalf("State while streaming events: %v, %v", st, err)
		}
	}
	stopEvents()
	if err := <-evDone; err != context.Canceled {
		t.Errorf("events after cancel: %v; want context.Canceled", err)
	}

	out, err := c.Run(ctx, "echo out; echo err >&2")
	if err != nil || !strings.Contains(string(out), "out\n") || !strings.Contains(string(out), "err\n") {
		t.Errorf("Run: %q, %v; want out and err", out, err)
	}
	out, err = c.Run(ctx, "echo failing; exit 3")
	wantIn(t, err, "exit status 3")
	if string(out) != "failing\n" {
		t.Errorf("Run of a failing command: output %q; want %q", out, "failing\n")
	}
}

// TestAgent: the key comes from a real ssh-agent found through SSH_AUTH_SOCK.
func TestAgent(t *testing.T) {
	d := startSSHD(t)
	sock := fakeAgent(t)
	agentSock := startSSHAgent(t)
	key := newEd25519(t)
	conn, err := net.Dial("unix", agentSock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The agent gets the server's key under the comment "test-key"; no key file is involved.
	if err := agent.NewClient(conn).Add(agent.AddedKey{PrivateKey: key, Comment: "test-key"}); err != nil {
		t.Fatal(err)
	}
	pub, _ := ssh.NewPublicKey(key.Public())
	writeFile(t, filepath.Join(d.dir, "authorized_keys"), string(ssh.MarshalAuthorizedKey(pub)))

	t.Setenv("SSH_AUTH_SOCK", agentSock)
	opts := d.opts(t)
	opts.IdentityFiles, opts.AgentSocket = nil, ""
	c := dial(t, d.target(berthdBinary(t), sock), opts)
	state(t, c)

	// An encrypted IdentityFile is used through the agent holding it.
	enc := filepath.Join(opts.Home, "encrypted")
	writeEncryptedKey(t, enc, key)
	opts.IdentityFiles = []string{enc}
	state(t, dial(t, d.target(berthdBinary(t), sock), opts))
}

// writeEncryptedKey writes key encrypted with a passphrase, without a .pub.
func writeEncryptedKey(t *testing.T, path string, key ed25519.PrivateKey) {
	t.Helper()
	block, err := ssh.MarshalPrivateKeyWithPassphrase(key, "", []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, string(pem.EncodeToMemory(block)))
}

// startSSHAgent runs `ssh-agent -D -a SOCK`, killed when the test ends.
func startSSHAgent(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("ssh-agent")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("ssh-agent is missing; CI must install openssh-client")
		}
		t.Skip("ssh-agent is missing; install openssh-client to run this test")
	}
	sock := filepath.Join(t.TempDir(), "agent")
	cmd := exec.Command(bin, "-D", "-a", sock)
	var log lockedBuffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	for deadline := time.Now().Add(5 * time.Second); ; {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return sock
		}
		select {
		case <-exited:
			t.Fatalf("ssh-agent exited: %s", log.Bytes())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("ssh-agent did not listen on %s: %s", sock, log.Bytes())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestConfig: a Host alias with HostName, Port, User and two IdentityFiles
// under ~ (the first one refused by the server, the second accepted).
func TestConfig(t *testing.T) {
	d := startSSHD(t)
	sock := fakeAgent(t)
	opts := d.opts(t)
	keys := filepath.Join(opts.Home, "keys")
	if err := os.Mkdir(keys, 0o700); err != nil {
		t.Fatal(err)
	}
	writeKey(t, filepath.Join(keys, "other"), newEd25519(t))
	copyFile(t, d.clientKey, filepath.Join(keys, "robot"))
	opts.ConfigFile = filepath.Join(opts.Home, "ssh_config")
	writeFile(t, opts.ConfigFile, fmt.Sprintf(`
Host robot
    HostName 127.0.0.1
    Port %d
    User %s
    IdentityFile ~/keys/other
    IdentityFile ~/keys/robot
`, d.port, d.user))
	opts.IdentityFiles = nil
	target := "ssh://robot?" + strings.SplitN(d.target(berthdBinary(t), sock), "?", 2)[1]
	c := dial(t, target, opts)
	state(t, c)
	if got := c.dest.String(); got != "robot ("+d.user+"@"+d.addr()+")" {
		t.Errorf("resolved robot as %s", got)
	}
}

// TestProxyJump: robot reached through two jump hosts named in the config
// (each resolved through it too); all three are the same sshd.
func TestProxyJump(t *testing.T) {
	d := startSSHD(t)
	sock := fakeAgent(t)
	opts := d.opts(t)
	opts.ConfigFile = filepath.Join(opts.Home, "ssh_config")
	writeFile(t, opts.ConfigFile, fmt.Sprintf(`
Host robot
    HostName 127.0.0.1
    ProxyJump jump1,%[3]s@jump2:%[1]d

Host jump1
    HostName 127.0.0.1

Host jump2
    HostName localhost
    ProxyJump nowhere

Host *
    Port %[1]d
    User %[2]s
    IdentityFile %[4]s
`, d.port, d.user, d.user, d.clientKey))
	opts.IdentityFiles = nil
	// jump2 is reached as localhost: known_hosts needs it too.
	f, err := os.OpenFile(d.knownHosts, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(f, knownhosts.Line([]string{knownhosts.Normalize(net.JoinHostPort("localhost", fmt.Sprint(d.port)))}, d.hostKey))
	f.Close()

	before := d.accepted()
	target := "ssh://robot?" + strings.SplitN(d.target(berthdBinary(t), sock), "?", 2)[1]
	c := dial(t, target, opts)
	if len(c.conns) != 3 {
		t.Fatalf("%d SSH connections; want 3 (jump1, jump2, robot)", len(c.conns))
	}
	state(t, c)
	for deadline := time.Now().Add(5 * time.Second); d.accepted()-before < 3; {
		if time.Now().After(deadline) {
			t.Fatalf("sshd accepted %d logins; want 3 (two jump hosts and the robot)", d.accepted()-before)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestUnknownHostKey: a host missing from known_hosts is refused with its
// fingerprint and both ways to trust it; nothing is written.
func TestUnknownHostKey(t *testing.T) {
	d := startSSHD(t)
	opts := d.opts(t)
	opts.KnownHostsFile = filepath.Join(opts.Home, "known_hosts")
	err := dialErr(t, d.target("berthd", DefaultSocket), opts)
	wantIn(t, err, "unknown host key", d.addr(), "ssh-ed25519 "+ssh.FingerprintSHA256(d.hostKey),
		fmt.Sprintf("ssh-keyscan -p %d 127.0.0.1 >> ~/known_hosts", d.port), "--accept-new-host-key")
	if _, err := os.Stat(opts.KnownHostsFile); !os.IsNotExist(err) {
		t.Errorf("known_hosts was written without --accept-new-host-key: %v", err)
	}
}

// TestAcceptNewHostKey: the key is recorded (file and directory created
// private) and the next Dial trusts it without the option.
func TestAcceptNewHostKey(t *testing.T) {
	d := startSSHD(t)
	sock := fakeAgent(t)
	opts := d.opts(t)
	opts.KnownHostsFile = filepath.Join(opts.Home, "new", ".ssh", "known_hosts")
	opts.AcceptNewHostKey = true
	target := d.target(berthdBinary(t), sock)
	c := dial(t, target, opts)
	state(t, c)

	b, err := os.ReadFile(opts.KnownHostsFile)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("[127.0.0.1]:%d %s", d.port, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(d.hostKey))))
	if string(b) != want+"\n" {
		t.Errorf("known_hosts:\n%s\nwant:\n%s", b, want)
	}
	for path, mode := range map[string]os.FileMode{opts.KnownHostsFile: 0o600, filepath.Dir(opts.KnownHostsFile): 0o700} {
		if st, err := os.Stat(path); err != nil || st.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, %v; want %v", path, st.Mode().Perm(), err, mode)
		}
	}

	opts.AcceptNewHostKey = false
	state(t, dial(t, target, opts))
	if b2, _ := os.ReadFile(opts.KnownHostsFile); string(b2) != string(b) {
		t.Errorf("known_hosts changed on the second dial:\n%s", b2)
	}
}

// TestChangedHostKey: a known_hosts entry with another key (of the same type,
// or only of a type the server lacks) is refused loudly, even with
// AcceptNewHostKey, and known_hosts is left alone.
func TestChangedHostKey(t *testing.T) {
	d := startSSHD(t)
	other, _ := ssh.NewPublicKey(newEd25519(t).Public())
	p384 := newECDSA384(t)
	for name, key := range map[string]ssh.PublicKey{"same-type": other, "other-type": p384} {
		t.Run(name, func(t *testing.T) {
			opts := d.opts(t)
			opts.AcceptNewHostKey = true
			opts.KnownHostsFile = filepath.Join(opts.Home, "known_hosts")
			text := "# robots\n" +
				knownhosts.Line([]string{"elsewhere.example.com"}, d.hostKey) + "\n" +
				knownhosts.Line([]string{knownhosts.Normalize(d.addr())}, key) + "\n"
			writeFile(t, opts.KnownHostsFile, text)
			err := dialErr(t, d.target("berthd", DefaultSocket), opts)
			wantIn(t, err, "HOST KEY MISMATCH", "man-in-the-middle", d.addr(), opts.KnownHostsFile+":3",
				ssh.FingerprintSHA256(key), "never replaces a known key", "ssh-keygen -R")
			if b, _ := os.ReadFile(opts.KnownHostsFile); string(b) != text {
				t.Errorf("known_hosts changed:\n%s", b)
			}
		})
	}
}

// TestWrongKey: the server refuses every key offered; the error names the
// login, the keys offered and skipped, and what to do.
func TestWrongKey(t *testing.T) {
	d := startSSHD(t)
	opts := d.opts(t)
	wrong := filepath.Join(opts.Home, "wrong")
	pub := writeKey(t, wrong, newEd25519(t))
	// The right key, but encrypted and no agent: skipped, with a note.
	enc := filepath.Join(opts.Home, "encrypted")
	b, err := os.ReadFile(d.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	right, err := ssh.ParseRawPrivateKey(b)
	if err != nil {
		t.Fatal(err)
	}
	writeEncryptedKey(t, enc, *right.(*ed25519.PrivateKey))
	opts.IdentityFiles = []string{wrong, filepath.Join(opts.Home, "missing"), enc}
	err = dialErr(t, d.target("berthd", DefaultSocket), opts)
	wantIn(t, err, d.user+"@"+d.addr(), "refused the login", "publickey", "offered ssh-ed25519 "+ssh.FingerprintSHA256(pub)+" (~/wrong)",
		"~/missing: no such file", "~/encrypted: encrypted with a passphrase and not loaded in ssh-agent", "ssh-add ~/encrypted",
		"authorized_keys", fmt.Sprintf("ssh-copy-id -p %d %s@127.0.0.1", d.port, d.user))

	// No key at all.
	opts.IdentityFiles = nil
	err = dialErr(t, d.target("berthd", DefaultSocket), opts)
	wantIn(t, err, "no keys to offer", "id_ed25519", "no ssh-agent (turned off by IdentityAgent none)")
}

// TestUnreachable: nothing listening fails at once; a server that never
// answers fails after the connect timeout. Both name the address.
func TestUnreachable(t *testing.T) {
	t.Run("refused", func(t *testing.T) {
		port := freePort(t)
		start := time.Now()
		err := dialErr(t, fmt.Sprintf("ssh://root@127.0.0.1:%d", port), Options{AgentSocket: "none", Home: t.TempDir()})
		wantIn(t, err, fmt.Sprintf("cannot reach root@127.0.0.1:%d", port), "connection refused")
		if time.Since(start) > 5*time.Second {
			t.Errorf("took %v", time.Since(start))
		}
	})
	t.Run("silent", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		held := make(chan net.Conn, 4)
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					close(held)
					return
				}
				held <- c
			}
		}()
		t.Cleanup(func() {
			l.Close()
			for c := range held {
				c.Close()
			}
		})
		start := time.Now()
		err = dialErr(t, "ssh://root@"+l.Addr().String(), Options{AgentSocket: "none", Home: t.TempDir(), ConnectTimeout: 300 * time.Millisecond})
		wantIn(t, err, "root@"+l.Addr().String(), "no answer within 300ms")
		if el := time.Since(start); el > 3*time.Second {
			t.Errorf("took %v with a 300ms timeout", el)
		}
	})
}

// TestRemoteFailure: a wrong berthd path, or no agent behind the socket,
// come back as clear errors through the HTTP client.
func TestRemoteFailure(t *testing.T) {
	d := startSSHD(t)
	tests := []struct {
		name, berthd, socket string
		want                 []string
	}{
		{"no-berthd", "/nonexistent/berthd", DefaultSocket, []string{"berthd (/nonexistent/berthd) is not installed on the robot", "exit status 127", "?berthd=/usr/local/bin/berthd"}},
		{"no-agent", berthdBinary(t), filepath.Join(t.TempDir(), "none.sock"), []string{"dial-stdio", "exit status 1", "agent socket", "is berthd running here?"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dial(t, d.target(tt.berthd, tt.socket), d.opts(t))
			api := localapi.New("test", c.DialStdio)
			defer api.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := api.State(ctx)
			t.Logf("State error (as a person sees it):\n%v", err)
			wantIn(t, err, tt.want...)
		})
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, to, string(b))
}
