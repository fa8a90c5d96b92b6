package sshconn

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// preferredHostKeyAlgos is asked for when known_hosts has no key for a host:
// OpenSSH's order (ed25519 first), so the key we show is the one `ssh` and
// `ssh-keyscan` users know. x/crypto's default puts ed25519 last.
var preferredHostKeyAlgos = []string{
	ssh.KeyAlgoED25519,
	ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521,
	ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256,
}

// hostKeys checks host keys against known_hosts files and, when allowed,
// records keys of hosts seen for the first time.
type hostKeys struct {
	primary   string // where new keys are written; always read
	acceptNew bool
	home      string
}

// hostKeyError is a refused host key; its text is the whole story.
type hostKeyError struct{ msg string }

func (e *hostKeyError) Error() string { return e.msg }

// forHop returns the host key callback for h, the host key algorithms to ask
// for and the keys known for h. The algorithms are those of the known keys,
// so that a host known by its ed25519 key is not refused for offering its
// ECDSA or RSA key first.
func (k *hostKeys) forHop(h hop) (ssh.HostKeyCallback, []string, []knownhosts.KnownKey, error) {
	var files []string
	seen := map[string]bool{}
	for _, f := range append([]string{k.primary}, h.knownHosts...) {
		if seen[f] {
			continue
		}
		seen[f] = true
		if _, err := os.Stat(f); errors.Is(err, fs.ErrNotExist) {
			continue
		} else if err != nil {
			return nil, nil, nil, fmt.Errorf("known_hosts: %w", err)
		}
		files = append(files, f)
	}
	check, err := knownhosts.New(files...)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read known_hosts: %w", err)
	}
	known := knownKeys(check, h.addr())
	algos := preferredHostKeyAlgos
	if len(known) > 0 {
		algos = algorithmsFor(known)
	}
	cb := func(addr string, remote net.Addr, key ssh.PublicKey) error {
		err := check(addr, remote, key)
		var ke *knownhosts.KeyError
		var re *knownhosts.RevokedError
		switch {
		case err == nil:
			return nil
		case errors.As(err, &re):
			return &hostKeyError{fmt.Sprintf("host key of %s (%s %s) is marked @revoked in %s:%d; refusing to connect", h, key.Type(), ssh.FingerprintSHA256(key), re.Revoked.Filename, re.Revoked.Line)}
		case errors.As(err, &ke) && len(ke.Want) == 0:
			if !k.acceptNew {
				return k.unknown(h, key)
			}
			if err := appendKnownHost(k.primary, h.addr(), key); err != nil {
				return &hostKeyError{fmt.Sprintf("%s is new (%s %s) and would be trusted, but recording it failed: %v; nothing was changed on the robot", h, key.Type(), ssh.FingerprintSHA256(key), err)}
			}
			return nil
		case errors.As(err, &ke):
			return changed(h, key, ke.Want)
		}
		return fmt.Errorf("check host key of %s: %w", h, err)
	}
	return cb, algos, known, nil
}

// knownKeys asks check which keys it knows for addr, by offering a key no
// host has.
func knownKeys(check ssh.HostKeyCallback, addr string) []knownhosts.KnownKey {
	probe, err := ssh.NewPublicKey(ed25519.PublicKey(make([]byte, ed25519.PublicKeySize)))
	if err != nil {
		return nil
	}
	var ke *knownhosts.KeyError
	if errors.As(check(addr, &net.TCPAddr{IP: net.IPv4zero}, probe), &ke) {
		return ke.Want
	}
	return nil
}

// algorithmsFor lists the host key algorithms that yield one of keys.
func algorithmsFor(keys []knownhosts.KnownKey) []string {
	var algos []string
	seen := map[string]bool{}
	add := func(as ...string) {
		for _, a := range as {
			if !seen[a] {
				seen[a] = true
				algos = append(algos, a)
			}
		}
	}
	for _, k := range keys {
		if k.Key.Type() == ssh.KeyAlgoRSA {
			add(ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA)
		} else {
			add(k.Key.Type())
		}
	}
	return algos
}

func (k *hostKeys) unknown(h hop, key ssh.PublicKey) error {
	scan := "ssh-keyscan"
	if h.port != 22 {
		scan += " -p " + strconv.Itoa(h.port)
	}
	scan += " " + h.host + " >> " + tilde(k.primary, k.home)
	return &hostKeyError{fmt.Sprintf(
		"unknown host key: %s is not in %s; it offered\n"+
			"  %s %s\n"+
			"No login was attempted. If that fingerprint is the robot's (check it on the robot with `ssh-keygen -lf /etc/ssh/ssh_host_%s_key.pub`), trust it with\n"+
			"  %s\n"+
			"or rerun with --accept-new-host-key to record it.",
		h, tilde(k.primary, k.home), key.Type(), ssh.FingerprintSHA256(key), keyFileKind(key), scan)}
}

func changed(h hop, key ssh.PublicKey, want []knownhosts.KnownKey) error {
	var b strings.Builder
	fmt.Fprintf(&b, "WARNING: HOST KEY MISMATCH for %s: someone may be intercepting the connection (man-in-the-middle), or the robot was reinstalled.\n", h)
	fmt.Fprintf(&b, "  offered: %s %s\n", key.Type(), ssh.FingerprintSHA256(key))
	for _, w := range want {
		fmt.Fprintf(&b, "  known:   %s %s at %s:%d\n", w.Key.Type(), ssh.FingerprintSHA256(w.Key), w.Filename, w.Line)
	}
	fmt.Fprintf(&b, "Refusing to connect; --accept-new-host-key never replaces a known key. If you know why the key CHANGED, remove the old entry with `ssh-keygen -R '%s' -f %s` and check the new fingerprint before trusting it.",
		knownhosts.Normalize(h.addr()), want[0].Filename)
	return &hostKeyError{b.String()}
}

// mismatchedAlgorithms explains a handshake that found no common host key
// algorithm although known_hosts holds keys for the host: the host no longer
// has any key of a known type, which is a changed host key.
func mismatchedAlgorithms(h hop, known []knownhosts.KnownKey, err error) error {
	var b strings.Builder
	fmt.Fprintf(&b, "WARNING: HOST KEY MISMATCH for %s: it offers no key of the types recorded for it; someone may be intercepting the connection (man-in-the-middle), or the robot was reinstalled.\n", h)
	for _, w := range known {
		fmt.Fprintf(&b, "  known:   %s %s at %s:%d\n", w.Key.Type(), ssh.FingerprintSHA256(w.Key), w.Filename, w.Line)
	}
	fmt.Fprintf(&b, "  (%v)\n", err)
	fmt.Fprintf(&b, "Refusing to connect; --accept-new-host-key never replaces a known key. If you know why the key CHANGED, remove the old entry with `ssh-keygen -R '%s' -f %s` and check the new fingerprint before trusting it.",
		knownhosts.Normalize(h.addr()), known[0].Filename)
	return &hostKeyError{b.String()}
}

func keyFileKind(key ssh.PublicKey) string {
	switch key.Type() {
	case ssh.KeyAlgoED25519:
		return "ed25519"
	case ssh.KeyAlgoRSA:
		return "rsa"
	}
	if strings.HasPrefix(key.Type(), "ecdsa-") {
		return "ecdsa"
	}
	return "*"
}

// appendKnownHost records key for addr in file, creating it (0600) and its
// directory (0700) when missing.
func appendKnownHost(file, addr string, key ssh.PublicKey) error {
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(file, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	line := knownhosts.Line([]string{knownhosts.Normalize(addr)}, key) + "\n"
	if st, err := f.Stat(); err == nil && st.Size() > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, st.Size()-1); err == nil && last[0] != '\n' {
			line = "\n" + line
		}
	}
	if _, err := f.WriteString(line); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
