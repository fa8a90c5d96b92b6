package sshconn

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/berth-robotics/berth/internal/localapi"
	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/sshtest"
)

// This file is the harness: a real sshd from Debian's openssh-server on a
// loopback port, the real berthd binary for `dial-stdio`, and a stand-in
// agent API on a unix socket.

const sshdPath = "/usr/sbin/sshd"

// testSSHD is one sshd started for one test.
type testSSHD struct {
	port       int
	user       string
	dir        string
	hostKey    ssh.PublicKey // ed25519; the server also has an ECDSA key
	clientKey  string        // private key file the server accepts
	knownHosts string        // holds hostKey only
	log        *lockedBuffer
}

func needSSHD(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(sshdPath); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is missing; CI must install openssh-server", sshdPath)
		}
		t.Skipf("%s is missing; install it with `apt-get install -y openssh-server` to run this test", sshdPath)
	}
}

// startSSHD runs `sshd -D -e` with its own config and keys under a temp dir,
// killed when the test ends.
func startSSHD(t *testing.T) *testSSHD {
	t.Helper()
	needSSHD(t)
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	d := &testSSHD{user: u.Username, dir: t.TempDir(), log: &lockedBuffer{}}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	d.hostKey = writeKey(t, filepath.Join(d.dir, "host_ed25519"), edKey)
	writeKey(t, filepath.Join(d.dir, "host_ecdsa"), ecKey)
	d.clientKey = filepath.Join(d.dir, "client_key")
	clientPub := writeKey(t, d.clientKey, newEd25519(t))
	writeFile(t, filepath.Join(d.dir, "authorized_keys"), string(ssh.MarshalAuthorizedKey(clientPub)))
	if os.Geteuid() == 0 {
		// sshd running as root insists on its privilege separation directory.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Fatal(err)
		}
	}
	d.port = freePort(t)
	cfg := sshtest.Config(fmt.Sprintf("127.0.0.1:%d", d.port), d.dir, []string{"host_ed25519", "host_ecdsa"}, "AllowTcpForwarding yes", "LogLevel VERBOSE")
	cfgFile := filepath.Join(d.dir, "sshd_config")
	writeFile(t, cfgFile, cfg)
	cmd := exec.Command(sshdPath, "-D", "-e", "-f", cfgFile)
	cmd.Stdout, cmd.Stderr = d.log, d.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("sshd log:\n%s", d.log.Bytes())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", d.addr(), time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			t.Fatalf("sshd exited:\n%s", d.log.Bytes())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshd did not listen on %s within 10s:\n%s", d.addr(), d.log.Bytes())
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.knownHosts = filepath.Join(d.dir, "known_hosts")
	writeFile(t, d.knownHosts, knownhosts.Line([]string{knownhosts.Normalize(d.addr())}, d.hostKey)+"\n")
	return d
}

func (d *testSSHD) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(d.port)) }

// target is an ssh:// target for this server running berthd for socket.
func (d *testSSHD) target(berthd, socket string) string {
	q := url.Values{"berthd": {berthd}, "socket": {socket}}
	return fmt.Sprintf("ssh://%s@%s?%s", d.user, d.addr(), q.Encode())
}

// opts are Options that use only the test's files: the server's client key,
// known_hosts with its ed25519 key, no agent, and a home of its own.
func (d *testSSHD) opts(t *testing.T) Options {
	return Options{
		KnownHostsFile: d.knownHosts,
		IdentityFiles:  []string{d.clientKey},
		AgentSocket:    "none",
		Home:           t.TempDir(),
		ConnectTimeout: 10 * time.Second,
	}
}

// accepted counts the logins sshd accepted so far.
func (d *testSSHD) accepted() int {
	return strings.Count(string(d.log.Bytes()), "Accepted publickey")
}

func newEd25519(t *testing.T) ed25519.PrivateKey {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newECDSA384(t *testing.T) ssh.PublicKey {
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ssh.NewPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// writeKey writes key in OpenSSH format (0600) and its .pub next to it.
func writeKey(t *testing.T, path string, key crypto.Signer) ssh.PublicKey {
	t.Helper()
	block, err := ssh.MarshalPrivateKey(key, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	pub, err := ssh.NewPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path+".pub", string(ssh.MarshalAuthorizedKey(pub)))
	return pub
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// berthd builds cmd/berthd once per test binary run; TestMain removes it.
var berthd struct {
	once sync.Once
	dir  string
	path string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if berthd.dir != "" {
		os.RemoveAll(berthd.dir)
	}
	os.Exit(code)
}

func berthdBinary(t *testing.T) string {
	t.Helper()
	berthd.once.Do(func() {
		berthd.dir, berthd.err = os.MkdirTemp("", "sshconn-berthd-")
		if berthd.err != nil {
			return
		}
		berthd.path = filepath.Join(berthd.dir, "berthd")
		cmd := exec.Command("go", "build", "-o", berthd.path, "./cmd/berthd")
		cmd.Dir = filepath.Join("..", "..")
		if out, err := cmd.CombinedOutput(); err != nil {
			berthd.err = fmt.Errorf("go build ./cmd/berthd: %v\n%s", err, out)
		}
	})
	if berthd.err != nil {
		t.Fatal(berthd.err)
	}
	return berthd.path
}

// fakeAgent serves a stand-in of berthd's local API on a unix socket:
// GET /v1/state, and GET /v1/events which streams until the client leaves.
func fakeAgent(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/state", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(release.CurrentState{Agent: release.AgentInfo{Name: "test-robot", Version: "test"}})
	})
	mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		fl := w.(http.Flusher)
		enc := json.NewEncoder(w)
		for seq := uint64(1); ; seq++ {
			if err := enc.Encode(localapi.Event{Seq: seq, Message: "tick"}); err != nil {
				return
			}
			fl.Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() { _ = srv.Serve(l); close(done) }()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return sock
}

// dial is Dial that fails the test on error and closes the client at cleanup.
func dial(t *testing.T, target string, opts Options) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Dial(ctx, target, opts)
	if err != nil {
		t.Fatalf("Dial(%s): %v", target, err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

// dialErr is Dial that expects an error.
func dialErr(t *testing.T, target string, opts Options) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Dial(ctx, target, opts)
	if err == nil {
		c.Close()
		t.Fatalf("Dial(%s) succeeded; want an error", target)
	}
	t.Logf("Dial error (as a person sees it):\n%v", err)
	return err
}

// state asks the agent behind c for its state through berthd dial-stdio.
func state(t *testing.T, c *Client) *release.CurrentState {
	t.Helper()
	api := localapi.New("test", c.DialStdio)
	defer api.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := api.State(ctx)
	if err != nil {
		t.Fatalf("State through SSH: %v", err)
	}
	if st.Agent.Name != "test-robot" {
		t.Fatalf("State through SSH: agent %q; want test-robot", st.Agent.Name)
	}
	return st
}

func wantIn(t *testing.T, err error, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if err == nil || !strings.Contains(err.Error(), s) {
			t.Errorf("error does not mention %q:\n%v", s, err)
		}
	}
}
