package sshconn

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kevinburke/ssh_config"
)

// maxJumpDepth bounds nested ProxyJump lookups (a jump host's own ProxyJump),
// which catches loops such as `Host * / ProxyJump bastion` without
// `ProxyJump none` on the bastion.
const maxJumpDepth = 8

// hop is one SSH server on the way to the robot, resolved through the config.
type hop struct {
	alias          string // the name as given; what Host patterns match
	host           string // HostName
	port           int
	user           string
	identities     []string // IdentityFile, expanded
	identitiesOnly bool
	agent          string   // IdentityAgent: "" (SSH_AUTH_SOCK), "none" or a path
	knownHosts     []string // UserKnownHostsFile, expanded
	jumps          []string // ProxyJump, unresolved
	timeout        time.Duration
}

func (h hop) addr() string { return net.JoinHostPort(h.host, strconv.Itoa(h.port)) }

// String is user@host:port, with the alias in front when it differs.
func (h hop) String() string {
	s := h.user + "@" + h.addr()
	if h.alias != h.host {
		s = h.alias + " (" + s + ")"
	}
	return s
}

// sshConfig answers questions about one ssh_config file.
type sshConfig struct {
	file      *ssh_config.Config // nil without a config file
	path      string
	home      string
	localUser string
}

// loadConfig reads path; a missing file is an empty config unless required.
func loadConfig(path, home, localUser string, required bool) (*sshConfig, error) {
	c := &sshConfig{path: path, home: home, localUser: localUser}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) && !required {
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ssh config: %w", err)
	}
	defer f.Close()
	c.file, err = ssh_config.Decode(f)
	if err != nil {
		return nil, fmt.Errorf("ssh config %s: %w", path, err)
	}
	return c, nil
}

func (c *sshConfig) get(alias, key string) (string, error) {
	if c.file == nil {
		return "", nil
	}
	v, err := c.file.Get(alias, key)
	if err != nil {
		return "", fmt.Errorf("ssh config %s: %s for %s: %w", c.path, key, alias, err)
	}
	return strings.TrimSpace(v), nil
}

func (c *sshConfig) getAll(alias, key string) ([]string, error) {
	if c.file == nil {
		return nil, nil
	}
	vs, err := c.file.GetAll(alias, key)
	if err != nil {
		return nil, fmt.Errorf("ssh config %s: %s for %s: %w", c.path, key, alias, err)
	}
	return vs, nil
}

// resolve fills in a hop for alias; user and port given by the user win over
// the config.
func (c *sshConfig) resolve(user, alias string, port int) (hop, error) {
	h := hop{alias: alias, user: user, port: port, host: alias}
	var errs []error
	get := func(key string) string {
		v, err := c.get(alias, key)
		errs = append(errs, err)
		return v
	}
	if v := get("HostName"); v != "" {
		h.host = strings.NewReplacer("%h", alias, "%%", "%").Replace(v)
	}
	if h.port == 0 {
		if v := get("Port"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 65535 {
				return h, fmt.Errorf("ssh config %s: Port %q for %s is not a port number", c.path, v, alias)
			}
			h.port = n
		} else {
			h.port = 22
		}
	}
	if h.user == "" {
		h.user = get("User")
	}
	if h.user == "" {
		h.user = c.localUser
	}
	ids, err := c.getAll(alias, "IdentityFile")
	errs = append(errs, err)
	for _, id := range ids {
		if !strings.EqualFold(id, "none") {
			h.identities = append(h.identities, c.expand(id, h))
		}
	}
	h.identitiesOnly = strings.EqualFold(get("IdentitiesOnly"), "yes")
	if v := get("IdentityAgent"); v != "" {
		switch {
		case strings.EqualFold(v, "none"):
			h.agent = "none"
		case v == "SSH_AUTH_SOCK" || v == "$SSH_AUTH_SOCK":
		default:
			h.agent = c.expand(v, h)
		}
	}
	if v := get("UserKnownHostsFile"); v != "" && !strings.EqualFold(v, "none") {
		for _, f := range strings.Fields(v) {
			h.knownHosts = append(h.knownHosts, c.expand(f, h))
		}
	}
	if v := get("ProxyJump"); v != "" && !strings.EqualFold(v, "none") {
		for _, j := range strings.Split(v, ",") {
			h.jumps = append(h.jumps, strings.TrimSpace(j))
		}
	}
	if v := get("ConnectTimeout"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return h, fmt.Errorf("ssh config %s: ConnectTimeout %q for %s is not a number of seconds", c.path, v, alias)
		}
		h.timeout = time.Duration(n) * time.Second
	}
	return h, errors.Join(errs...)
}

// route lists the jump hosts to pass through to reach h, first to last. As
// with ssh -J, the first jump host's own ProxyJump is honoured; later ones
// are reached through the hops before them.
func (c *sshConfig) route(h hop, depth int) ([]hop, error) {
	if len(h.jumps) == 0 {
		return nil, nil
	}
	if depth >= maxJumpDepth {
		return nil, fmt.Errorf("ssh config %s: ProxyJump nests more than %d jump hosts deep at %s; is there a loop? (a jump host matched by `Host *` needs `ProxyJump none`)", c.path, maxJumpDepth, h.alias)
	}
	var hops []hop
	for i, spec := range h.jumps {
		user, host, port, err := parseJump(spec)
		if err != nil {
			return nil, fmt.Errorf("ssh config %s: ProxyJump for %s: %w", c.path, h.alias, err)
		}
		j, err := c.resolve(user, host, port)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			before, err := c.route(j, depth+1)
			if err != nil {
				return nil, err
			}
			hops = append(hops, before...)
		}
		hops = append(hops, j)
	}
	return hops, nil
}

// parseJump parses one ProxyJump entry: [user@]host[:port] or ssh://[user@]host[:port].
func parseJump(s string) (user, host string, port int, err error) {
	if s == "" {
		return "", "", 0, fmt.Errorf("empty jump host")
	}
	spec := s
	if strings.Contains(s, "://") {
		t, err := ParseTarget(s)
		if err != nil {
			return "", "", 0, err
		}
		if t.Socket != DefaultSocket || t.Berthd != DefaultBerthd {
			return "", "", 0, fmt.Errorf("jump host %q: socket= and berthd= apply to the robot, not a jump host", s)
		}
		return t.User, t.Host, t.Port, nil
	}
	if i := strings.LastIndex(s, "@"); i >= 0 {
		user, s = s[:i], s[i+1:]
		if user == "" {
			return "", "", 0, fmt.Errorf("jump host %q: empty user name before @", spec)
		}
	}
	host = s
	if strings.HasPrefix(s, "[") || strings.Count(s, ":") == 1 {
		h, p, err := net.SplitHostPort(s)
		if err != nil {
			return "", "", 0, fmt.Errorf("jump host %q: %w", spec, err)
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return "", "", 0, fmt.Errorf("jump host %q: port %q is not a number from 1 to 65535", spec, p)
		}
		host, port = h, n
	}
	if err := checkHost(host); err != nil {
		return "", "", 0, fmt.Errorf("jump host %q: %w", spec, err)
	}
	return user, host, port, nil
}

// expand replaces ~ and the common ssh_config tokens in a file name.
func (c *sshConfig) expand(s string, h hop) string {
	if s == "~" {
		return c.home
	}
	if strings.HasPrefix(s, "~/") {
		s = filepath.Join(c.home, s[2:])
	}
	return strings.NewReplacer(
		"%%", "%",
		"%d", c.home,
		"%h", h.host,
		"%n", h.alias,
		"%p", strconv.Itoa(h.port),
		"%r", h.user,
		"%u", c.localUser,
	).Replace(s)
}

// tilde shortens a path under home to ~/… for messages.
func tilde(path, home string) string {
	if home != "" {
		if rel, err := filepath.Rel(home, path); err == nil && !strings.HasPrefix(rel, "..") && rel != "." {
			return "~/" + rel
		}
	}
	return path
}
