package sshconn

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// defaultIdentities are tried when neither the options nor the config name
// an IdentityFile, like ssh does.
var defaultIdentities = []string{"id_ed25519", "id_ecdsa", "id_rsa"}

// keys gathers the client keys for each hop of one Dial.
type keys struct {
	opts   Options
	home   string
	agents map[string]*agentConn // by socket path
}

type agentConn struct {
	conn    net.Conn
	signers []ssh.Signer
	err     error
}

// offer is what one hop will try, and what it could not use.
type offer struct {
	signers []ssh.Signer
	tried   []string // descriptions of the keys offered, in order
	notes   []string // keys skipped, and why
	noAgent string   // why no agent was asked, if none was
}

func (k *keys) close() {
	for _, a := range k.agents {
		if a.conn != nil {
			a.conn.Close()
		}
	}
}

// agent returns the signers of the ssh-agent for h, or nil.
func (k *keys) agent(h hop, o *offer) []ssh.Signer {
	sock := k.opts.AgentSocket
	if sock == "" {
		sock = h.agent
	}
	if sock == "" {
		sock = os.Getenv("SSH_AUTH_SOCK")
	}
	switch sock {
	case "":
		o.noAgent = "no ssh-agent (SSH_AUTH_SOCK is not set)"
		return nil
	case "none":
		o.noAgent = "no ssh-agent (turned off by IdentityAgent none)"
		return nil
	}
	a, ok := k.agents[sock]
	if !ok {
		a = &agentConn{}
		a.conn, a.err = net.Dial("unix", sock)
		if a.err == nil {
			a.signers, a.err = agent.NewClient(a.conn).Signers()
		}
		k.agents[sock] = a
	}
	if a.err != nil {
		o.noAgent = fmt.Sprintf("ssh-agent at %s unusable: %v", sock, a.err)
	}
	return a.signers
}

// forHop lists the keys to offer h: its identity files first (through the
// agent when it holds them), then the agent's other keys.
func (k *keys) forHop(h hop) offer {
	var o offer
	agentSigners := k.agent(h, &o)
	inAgent := func(pub ssh.PublicKey) ssh.Signer {
		for _, s := range agentSigners {
			if bytes.Equal(s.PublicKey().Marshal(), pub.Marshal()) {
				return s
			}
		}
		return nil
	}
	used := map[string]bool{}
	add := func(s ssh.Signer, from string) {
		m := string(s.PublicKey().Marshal())
		if used[m] {
			return
		}
		used[m] = true
		o.signers = append(o.signers, s)
		o.tried = append(o.tried, fmt.Sprintf("%s %s (%s)", s.PublicKey().Type(), ssh.FingerprintSHA256(s.PublicKey()), from))
	}

	files := append(append([]string(nil), k.opts.IdentityFiles...), h.identities...)
	explicit := len(files) > 0
	if !explicit {
		for _, f := range defaultIdentities {
			files = append(files, filepath.Join(k.home, ".ssh", f))
		}
	}
	for _, f := range files {
		name := tilde(f, k.home)
		b, err := os.ReadFile(f)
		if errors.Is(err, fs.ErrNotExist) {
			if explicit {
				o.notes = append(o.notes, name+": no such file")
			}
			continue
		}
		if err != nil {
			o.notes = append(o.notes, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		s, err := ssh.ParsePrivateKey(b)
		var pm *ssh.PassphraseMissingError
		switch {
		case errors.As(err, &pm):
			pub := pm.PublicKey
			if pub == nil {
				pub = readPublicKey(f + ".pub")
			}
			if pub != nil {
				if as := inAgent(pub); as != nil {
					add(as, name+", via ssh-agent")
					continue
				}
			}
			o.notes = append(o.notes, fmt.Sprintf("%s: encrypted with a passphrase and not loaded in ssh-agent (berth does not prompt; run `ssh-add %s`)", name, name))
		case err != nil:
			o.notes = append(o.notes, fmt.Sprintf("%s: not a private key berth can read: %v", name, err))
		default:
			add(s, name)
		}
	}
	if !h.identitiesOnly || !explicit {
		for _, s := range agentSigners {
			comment := "ssh-agent"
			if ak, ok := s.PublicKey().(*agent.Key); ok && ak.Comment != "" {
				comment = "ssh-agent: " + ak.Comment
			}
			add(s, comment)
		}
	}
	return o
}

func readPublicKey(path string) ssh.PublicKey {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		return nil
	}
	return pub
}

var attemptedRE = regexp.MustCompile(`attempted methods \[([^\]]*)\]`)

// isAuthFailure reports whether a handshake failed because every key was refused.
func isAuthFailure(err error) bool {
	return err != nil && strings.Contains(err.Error(), "ssh: unable to authenticate")
}

// authError explains a refused login and what to do about it.
func authError(h hop, o offer, err error) error {
	var b strings.Builder
	methods := "publickey"
	if m := attemptedRE.FindStringSubmatch(err.Error()); m != nil {
		methods = strings.Join(strings.Fields(m[1]), ", ")
	}
	fmt.Fprintf(&b, "ssh: %s refused the login (methods tried: %s)\n", h, methods)
	if len(o.tried) == 0 {
		fmt.Fprintf(&b, "  no keys to offer: no usable IdentityFile and none of ~/.ssh/id_ed25519, id_ecdsa, id_rsa\n")
	}
	for _, t := range o.tried {
		fmt.Fprintf(&b, "  offered %s\n", t)
	}
	for _, n := range o.notes {
		fmt.Fprintf(&b, "  skipped %s\n", n)
	}
	if o.noAgent != "" {
		fmt.Fprintf(&b, "  %s\n", o.noAgent)
	}
	copyID := "ssh-copy-id"
	if h.port != 22 {
		copyID += " -p " + strconv.Itoa(h.port)
	}
	copyID += " " + h.user + "@" + h.host
	fmt.Fprintf(&b, "Nothing was changed on the robot. Check the user name (ssh://USER@host, or User in ~/.ssh/config); "+
		"put your public key in %s's ~/.ssh/authorized_keys on the robot (e.g. `%s`); "+
		"or load the right key into ssh-agent (`ssh-add KEY`) or name it with IdentityFile in ~/.ssh/config. "+
		"berth does not ask for passwords.", h.user, copyID)
	return errors.New(b.String())
}
