// Package sshconn dials robots over SSH the way ssh(1) would — honouring
// ~/.ssh/config (Host aliases, HostName, User, Port, IdentityFile, ProxyJump),
// ssh-agent and known_hosts — and runs `berthd dial-stdio` there, so the CLI
// can speak berthd's local API through the SSH connection.
//
// Host keys are always checked: an unknown key is refused unless
// Options.AcceptNewHostKey records it, and a changed key is always refused.
// berth never asks for passwords or passphrases: keys come from ssh-agent or
// unencrypted key files.
//
// Only the user's config file is read, not /etc/ssh/ssh_config; relative
// Include paths are resolved by the ssh_config library against the home
// directory of the passwd entry. Hosts known only through @cert-authority
// lines are treated as unknown.
package sshconn

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// DefaultConnectTimeout bounds reaching each SSH server and its handshake.
const DefaultConnectTimeout = 15 * time.Second

// Options tune Dial. The zero value behaves like ssh(1) for the current user.
type Options struct {
	ConfigFile       string // default ~/.ssh/config; a missing default file is fine
	KnownHostsFile   string // default ~/.ssh/known_hosts; new keys are written here
	AcceptNewHostKey bool   // record keys of hosts seen for the first time (never replaces a known key)
	// ConnectTimeout bounds reaching each server and logging in; default
	// the config's ConnectTimeout, else DefaultConnectTimeout.
	ConnectTimeout time.Duration

	// IdentityFiles are private keys tried before the config's IdentityFile.
	// When neither names one, ~/.ssh/id_ed25519, id_ecdsa and id_rsa are.
	IdentityFiles []string
	// AgentSocket is the ssh-agent to use; default the config's
	// IdentityAgent, else SSH_AUTH_SOCK; "none" uses no agent.
	AgentSocket string
	// Home replaces the home directory in ~ and the defaults above.
	Home string
}

// Client is one SSH connection to a robot, through its jump hosts if any.
// It is safe for concurrent use.
type Client struct {
	target  Target
	dest    hop
	command string        // `berthd dial-stdio --socket …`, quoted for the remote shell
	conns   []*ssh.Client // jump hosts first, the robot last

	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup // session watchers
}

// Dial connects to target (see ParseTarget), through the ProxyJump hosts
// the config names for it.
func Dial(ctx context.Context, target string, opts Options) (*Client, error) {
	t, err := ParseTarget(target)
	if err != nil {
		return nil, err
	}
	home := opts.Home
	if home == "" {
		if home, err = os.UserHomeDir(); err != nil {
			return nil, fmt.Errorf("ssh: %w", err)
		}
	}
	cfgFile := opts.ConfigFile
	if cfgFile == "" {
		cfgFile = filepath.Join(home, ".ssh", "config")
	}
	knownFile := opts.KnownHostsFile
	if knownFile == "" {
		knownFile = filepath.Join(home, ".ssh", "known_hosts")
	}
	cfg, err := loadConfig(cfgFile, home, localUser(), opts.ConfigFile != "")
	if err != nil {
		return nil, err
	}
	dest, err := cfg.resolve(t.User, t.Host, t.Port)
	if err != nil {
		return nil, err
	}
	jumps, err := cfg.route(dest, 0)
	if err != nil {
		return nil, err
	}
	timeout := opts.ConnectTimeout
	if timeout <= 0 {
		timeout = dest.timeout
	}
	if timeout <= 0 {
		timeout = DefaultConnectTimeout
	}

	c := &Client{target: t, dest: dest, command: shellQuote(t.Berthd) + " dial-stdio --socket " + shellQuote(t.Socket)}
	ks := &keys{opts: opts, home: home, agents: map[string]*agentConn{}}
	defer ks.close()
	hk := &hostKeys{primary: knownFile, acceptNew: opts.AcceptNewHostKey, home: home}
	var via *ssh.Client
	var viaHop hop
	for i, h := range append(jumps, dest) {
		sc, err := connect(ctx, via, viaHop, h, timeout, ks, hk)
		if err != nil {
			c.Close()
			if i < len(jumps) {
				err = fmt.Errorf("jump host for %s: %w", dest, err)
			}
			return nil, err
		}
		c.conns = append(c.conns, sc)
		via, viaHop = sc, h
	}
	return c, nil
}

// connect reaches h (directly, or through via) and logs in, within timeout.
func connect(ctx context.Context, via *ssh.Client, viaHop hop, h hop, timeout time.Duration, ks *keys, hk *hostKeys) (*ssh.Client, error) {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	fail := func(what string, err error) error {
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("ssh %s: %w", h, ctx.Err())
		case cctx.Err() != nil:
			return fmt.Errorf("ssh %s: %s: no answer within %v (the connect timeout). Check that the robot is powered and on the network and that its sshd runs", h, what, timeout)
		}
		return err
	}

	var conn net.Conn
	var err error
	if via == nil {
		var d net.Dialer
		conn, err = d.DialContext(cctx, "tcp", h.addr())
	} else {
		conn, err = via.DialContext(cctx, "tcp", h.addr())
	}
	if err != nil {
		from := ""
		if via != nil {
			from = " from jump host " + viaHop.String()
		}
		return nil, fail("connect", fmt.Errorf("ssh: cannot reach %s%s: %w. Check the host name and port (ssh://user@host:port, or HostName and Port in ~/.ssh/config), that the robot is powered and on the network, and that its sshd runs", h, from, err))
	}

	check, algos, known, err := hk.forHop(h)
	if err != nil {
		conn.Close()
		return nil, err
	}
	o := ks.forHop(h)
	signers := o.signers
	cfg := &ssh.ClientConfig{
		User:              h.user,
		Auth:              []ssh.AuthMethod{ssh.PublicKeysCallback(func() ([]ssh.Signer, error) { return signers, nil })},
		HostKeyCallback:   check,
		HostKeyAlgorithms: algos,
		Timeout:           timeout,
	}
	// The handshake must end within the timeout too; channels through a
	// jump host have no deadlines, so close the connection instead.
	stop := context.AfterFunc(cctx, func() { conn.Close() })
	sconn, chans, reqs, err := ssh.NewClientConn(conn, h.addr(), cfg)
	if !stop() {
		if err == nil {
			sconn.Close()
		}
		return nil, fail("SSH handshake", fmt.Errorf("ssh %s: handshake interrupted", h))
	}
	if err != nil {
		var hke *hostKeyError
		switch {
		case errors.As(err, &hke):
			return nil, hke
		case isAuthFailure(err):
			return nil, authError(h, o, err)
		case len(known) > 0 && strings.Contains(err.Error(), "no common algorithm for host key"):
			return nil, mismatchedAlgorithms(h, known, err)
		}
		return nil, fmt.Errorf("ssh %s: %w", h, err)
	}
	return ssh.NewClient(sconn, chans, reqs), nil
}

// Run runs cmd on the robot and returns its combined output; a non-zero exit
// is an error, returned with the output.
func (c *Client) Run(ctx context.Context, cmd string) ([]byte, error) {
	return c.RunInput(ctx, cmd, nil)
}

// RunInput is Run with stdin read from in (nil: none), such as a file to copy.
func (c *Client) RunInput(ctx context.Context, cmd string, in io.Reader) ([]byte, error) {
	var out lockedBuffer
	s, err := c.start(ctx, cmd, func(s *ssh.Session) error {
		s.Stdout, s.Stderr = &out, &out
		if in != nil {
			s.Stdin = in
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	waited := make(chan error, 1)
	go func() { waited <- s.Wait() }()
	select {
	case err = <-waited:
	case <-ctx.Done():
		_ = s.Signal(ssh.SIGKILL)
		s.Close()
		<-waited
		return out.Bytes(), fmt.Errorf("run %q on %s: %w", cmd, c.dest, ctx.Err())
	}
	if err != nil {
		var ee *ssh.ExitError
		if errors.As(err, &ee) && ee.Signal() == "" {
			return out.Bytes(), fmt.Errorf("run %q on %s: exit status %d", cmd, c.dest, ee.ExitStatus())
		}
		return out.Bytes(), fmt.Errorf("run %q on %s: %w", cmd, c.dest, err)
	}
	return out.Bytes(), nil
}

// start opens a session, lets setup wire it, and starts cmd, giving up when
// ctx ends first.
func (c *Client) start(ctx context.Context, cmd string, setup func(*ssh.Session) error) (*ssh.Session, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, fmt.Errorf("ssh %s: %w", c.dest, net.ErrClosed)
	}
	c.wg.Add(1)
	c.mu.Unlock()
	type result struct {
		s   *ssh.Session
		err error
	}
	ch := make(chan result, 1)
	abandoned := make(chan struct{})
	go func() {
		defer c.wg.Done()
		s, err := c.conns[len(c.conns)-1].NewSession()
		if err == nil {
			if err = setup(s); err == nil {
				err = s.Start(cmd)
			}
			if err != nil {
				s.Close()
				s = nil
			}
		}
		select {
		case ch <- result{s, err}:
		case <-abandoned:
			if s != nil {
				s.Close()
			}
		}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("ssh %s: start %q: %w", c.dest, cmd, r.err)
		}
		return r.s, nil
	case <-ctx.Done():
		close(abandoned)
		return nil, fmt.Errorf("ssh %s: start %q: %w", c.dest, cmd, ctx.Err())
	}
}

// Close ends every session and the connection, jump hosts included.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	var first error
	for i := len(c.conns) - 1; i >= 0; i-- {
		if err := c.conns[i].Close(); err != nil && first == nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
			first = err
		}
	}
	c.wg.Wait()
	return first
}

func localUser() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return os.Getenv("USER")
}

// ShellQuote quotes s for a POSIX shell when it needs it.
func ShellQuote(s string) string { return shellQuote(s) }

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./=:,+@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// lockedBuffer is a bytes.Buffer written from several goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}
