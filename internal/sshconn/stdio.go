package sshconn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// exitWait is how long a stream that stopped waits for the remote command's
// exit status, which tells a clean end from a failure.
const exitWait = 5 * time.Second

// stderrMax bounds the remote stderr kept for error messages.
const stderrMax = 4 << 10

// DialStdio starts `berthd dial-stdio` on the robot in a new session and
// returns a connection to berthd's socket over its stdin and stdout, fit for
// localapi.New. ctx bounds starting the session only. Several may be open at
// once (sshd allows 10 sessions per connection by default).
func (c *Client) DialStdio(ctx context.Context) (net.Conn, error) {
	var stdin io.WriteCloser
	var stdout io.Reader
	stderr := &headBuffer{max: stderrMax}
	s, err := c.start(ctx, c.command, func(s *ssh.Session) error {
		var err error
		if stdin, err = s.StdinPipe(); err != nil {
			return err
		}
		if stdout, err = s.StdoutPipe(); err != nil {
			return err
		}
		s.Stderr = stderr
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("berthd dial-stdio: %w", err)
	}
	sc := &stdioConn{c: c, s: s, stdin: stdin, stdout: stdout, stderr: stderr, done: make(chan struct{}), closed: make(chan struct{})}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		s.Close()
		return nil, fmt.Errorf("berthd dial-stdio: ssh %s: %w", c.dest, net.ErrClosed)
	}
	c.wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.wg.Done()
		sc.waitErr = s.Wait()
		close(sc.done)
	}()
	return sc, nil
}

// stdioConn is a net.Conn over a remote command's stdin and stdout.
type stdioConn struct {
	c      *Client
	s      *ssh.Session
	stdin  io.WriteCloser
	stdout io.Reader
	stderr *headBuffer

	done    chan struct{} // closed when the session has ended
	waitErr error         // how it ended; read after done

	closeOnce sync.Once
	closed    chan struct{}
}

func (sc *stdioConn) Read(p []byte) (int, error) {
	n, err := sc.stdout.Read(p)
	if err != nil {
		err = sc.ended(err)
	}
	return n, err
}

func (sc *stdioConn) Write(p []byte) (int, error) {
	n, err := sc.stdin.Write(p)
	if err != nil {
		err = sc.ended(err)
	}
	return n, err
}

// ended turns the end of the stream into the remote command's failure, if
// it failed.
func (sc *stdioConn) ended(err error) error {
	select {
	case <-sc.done:
	case <-sc.closed:
		return err
	case <-time.After(exitWait):
		return err
	}
	if ferr := sc.failure(); ferr != nil {
		return ferr
	}
	return err
}

// failure explains how the remote command ended, or is nil for a clean exit.
func (sc *stdioConn) failure() error {
	if sc.waitErr == nil {
		return nil
	}
	dest := sc.c.dest
	t := sc.c.target
	said := strings.TrimSpace(sc.stderr.String())
	if said != "" {
		said = ": " + said
	}
	var ee *ssh.ExitError
	var em *ssh.ExitMissingError
	switch {
	case errors.As(sc.waitErr, &ee) && (ee.ExitStatus() == 127 || ee.ExitStatus() == 126):
		fix := t
		fix.Berthd = "/usr/local/bin/berthd"
		why := "is not installed on the robot, or not on the PATH of a non-interactive SSH session"
		if ee.ExitStatus() == 126 {
			why = "could not be executed on the robot"
		}
		return fmt.Errorf("berthd (%s) %s for %s (exit status %d%s). Install berthd there, or give its path in the target, e.g. %s",
			t.Berthd, why, dest, ee.ExitStatus(), said, fix)
	case errors.As(sc.waitErr, &ee) && ee.Signal() != "":
		return fmt.Errorf("%s on %s was killed by SIG%s%s", sc.c.command, dest, ee.Signal(), said)
	case errors.As(sc.waitErr, &ee):
		hint := ""
		if strings.Contains(said, "agent socket") {
			fix := t
			fix.Socket = "/path/to/berthd.sock"
			hint = ". If berthd serves another socket there, name it in the target, e.g. " + fix.String()
		}
		return fmt.Errorf("%s on %s failed with exit status %d%s%s", sc.c.command, dest, ee.ExitStatus(), said, hint)
	case errors.As(sc.waitErr, &em):
		return fmt.Errorf("%s on %s ended without an exit status (connection lost?)%s", sc.c.command, dest, said)
	}
	return fmt.Errorf("%s on %s: %w%s", sc.c.command, dest, sc.waitErr, said)
}

// Close ends the session: berthd dial-stdio sees end of input and the
// session closes.
func (sc *stdioConn) Close() error {
	sc.closeOnce.Do(func() {
		close(sc.closed)
		_ = sc.stdin.Close()
		_ = sc.s.Close()
	})
	return nil
}

func (sc *stdioConn) LocalAddr() net.Addr  { return stdioAddr("local") }
func (sc *stdioConn) RemoteAddr() net.Addr { return stdioAddr(sc.c.dest.String()) }

// SetDeadline and friends are not supported by SSH channels; they do nothing.
func (sc *stdioConn) SetDeadline(time.Time) error      { return nil }
func (sc *stdioConn) SetReadDeadline(time.Time) error  { return nil }
func (sc *stdioConn) SetWriteDeadline(time.Time) error { return nil }

// stdioAddr names one end of a stdioConn.
type stdioAddr string

func (a stdioAddr) Network() string { return "ssh" }
func (a stdioAddr) String() string  { return string(a) }

// headBuffer keeps the first max bytes written to it.
type headBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (h *headBuffer) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if room := h.max - len(h.b); room > 0 {
		h.b = append(h.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (h *headBuffer) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return string(h.b)
}
