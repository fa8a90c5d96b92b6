package sshconn

import (
	"fmt"
	"net"
	"net/url"
	"path"
	"strconv"
	"strings"
)

// DefaultSocket is where berthd serves its local API on a robot.
const DefaultSocket = "/run/berth/berthd.sock"

// DefaultBerthd is the command run on the robot when the target names none:
// berthd on the remote PATH.
const DefaultBerthd = "berthd"

// Target is a robot as the user named it, before ~/.ssh/config fills in the
// rest. Empty User and zero Port mean "from the config, else the default".
type Target struct {
	User string
	Host string // a host name, an address, or a Host alias of ~/.ssh/config
	Port int
	// Socket is berthd's socket on the robot (DefaultSocket unless given).
	Socket string
	// Berthd is the berthd command on the robot (DefaultBerthd unless given).
	Berthd string
}

// ParseTarget parses ssh://user@host[:port][?socket=PATH&berthd=PATH],
// user@host, or host (an address or a Host alias of ~/.ssh/config).
func ParseTarget(s string) (Target, error) {
	t := Target{Socket: DefaultSocket, Berthd: DefaultBerthd}
	if s == "" {
		return t, fmt.Errorf("empty SSH target: use ssh://user@host[:port], user@host or a Host alias of ~/.ssh/config")
	}
	if strings.Contains(s, "://") {
		return parseURL(s, t)
	}
	if strings.ContainsAny(s, "?/ \t") {
		return t, fmt.Errorf("SSH target %q: options and paths need the URL form, e.g. ssh://user@host:22?socket=/run/berth/berthd.sock&berthd=/usr/local/bin/berthd", s)
	}
	user, host, ok := strings.Cut(s, "@")
	if !ok {
		user, host = "", s
	} else if user == "" {
		return t, fmt.Errorf("SSH target %q: empty user name before @", s)
	}
	if strings.Contains(host, ":") {
		return t, fmt.Errorf("SSH target %q: to give a port (or an IPv6 address) use the URL form: ssh://%s", s, hostPortHint(user, host))
	}
	if err := checkHost(host); err != nil {
		return t, fmt.Errorf("SSH target %q: %w", s, err)
	}
	t.User, t.Host = user, host
	return t, nil
}

func hostPortHint(user, host string) string {
	if user != "" {
		user += "@"
	}
	if h, p, err := net.SplitHostPort(host); err == nil {
		return user + net.JoinHostPort(h, p)
	}
	if strings.Count(host, ":") > 1 { // a bare IPv6 address
		return user + "[" + host + "]:22"
	}
	return user + host
}

func parseURL(s string, t Target) (Target, error) {
	u, err := url.Parse(s)
	if err != nil {
		return t, fmt.Errorf("SSH target %q: %w", s, err)
	}
	if u.Scheme != "ssh" {
		return t, fmt.Errorf("SSH target %q: scheme %q is not supported; use ssh://user@host[:port]", s, u.Scheme)
	}
	if u.Opaque != "" {
		return t, fmt.Errorf("SSH target %q: write it as ssh://user@host[:port]", s)
	}
	if u.Path != "" && u.Path != "/" {
		return t, fmt.Errorf("SSH target %q: unexpected path %q; give berthd's socket as ?socket=%s", s, u.Path, u.Path)
	}
	if u.Fragment != "" {
		return t, fmt.Errorf("SSH target %q: unexpected #%s", s, u.Fragment)
	}
	if u.User != nil {
		if _, has := u.User.Password(); has {
			return t, fmt.Errorf("SSH target %q: passwords are not supported; use a key (ssh-agent or IdentityFile)", redact(u))
		}
		t.User = u.User.Username()
		if t.User == "" {
			return t, fmt.Errorf("SSH target %q: empty user name before @", s)
		}
	}
	t.Host = u.Hostname()
	if err := checkHost(t.Host); err != nil {
		return t, fmt.Errorf("SSH target %q: %w", s, err)
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return t, fmt.Errorf("SSH target %q: port %q is not a number from 1 to 65535", s, p)
		}
		t.Port = n
	} else if strings.HasSuffix(u.Host, ":") {
		return t, fmt.Errorf("SSH target %q: empty port after ':'", s)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return t, fmt.Errorf("SSH target %q: query: %w", s, err)
	}
	for k, vs := range q {
		if len(vs) != 1 {
			return t, fmt.Errorf("SSH target %q: %s given %d times", s, k, len(vs))
		}
		v := vs[0]
		switch k {
		case "socket":
			if !path.IsAbs(v) {
				return t, fmt.Errorf("SSH target %q: socket=%q must be an absolute path on the robot, like %s", s, v, DefaultSocket)
			}
			t.Socket = v
		case "berthd":
			if v == "" || strings.ContainsAny(v, "\x00\n") {
				return t, fmt.Errorf("SSH target %q: berthd=%q must name berthd on the robot, like /usr/local/bin/berthd", s, v)
			}
			t.Berthd = v
		default:
			return t, fmt.Errorf("SSH target %q: unknown option %q (known: socket, berthd)", s, k)
		}
	}
	return t, nil
}

func checkHost(h string) error {
	switch {
	case h == "":
		return fmt.Errorf("no host")
	case strings.HasPrefix(h, "-"):
		return fmt.Errorf("host %q may not start with '-'", h)
	case strings.ContainsAny(h, " \t\n\x00@/?#*!,"):
		return fmt.Errorf("host %q contains characters not allowed in a host name", h)
	}
	return nil
}

func redact(u *url.URL) string {
	c := *u
	c.User = url.User(u.User.Username())
	return c.String()
}

// String is the target in URL form; defaults are left out.
func (t Target) String() string {
	u := url.URL{Scheme: "ssh", Host: t.Host}
	if t.Port != 0 {
		u.Host = net.JoinHostPort(t.Host, strconv.Itoa(t.Port))
	} else if strings.Contains(t.Host, ":") {
		u.Host = "[" + t.Host + "]"
	}
	if t.User != "" {
		u.User = url.User(t.User)
	}
	// Paths stay readable: only what would break the query is escaped.
	esc := func(v string) string { return strings.ReplaceAll(url.QueryEscape(v), "%2F", "/") }
	var q []string
	if t.Socket != "" && t.Socket != DefaultSocket {
		q = append(q, "socket="+esc(t.Socket))
	}
	if t.Berthd != "" && t.Berthd != DefaultBerthd {
		q = append(q, "berthd="+esc(t.Berthd))
	}
	u.RawQuery = strings.Join(q, "&")
	return u.String()
}
