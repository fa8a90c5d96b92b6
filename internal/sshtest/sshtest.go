// Package sshtest writes the configuration of a throwaway OpenSSH sshd, as
// tests and benchmarks start one: key-only root login, its host keys,
// authorized keys and pid file in one directory, StrictModes off (a
// directory under the sticky /tmp fails sshd's path check).
package sshtest

import (
	"fmt"
	"path/filepath"
	"strings"
)

// Config returns an sshd_config listening on addr (host:port) with the host
// keys named (files in dir), plus extra lines.
func Config(addr, dir string, hostKeys []string, extra ...string) string {
	var b strings.Builder
	host, port := addr, ""
	if i := strings.LastIndex(addr, ":"); i >= 0 {
		host, port = addr[:i], addr[i+1:]
	}
	if port != "" {
		fmt.Fprintf(&b, "Port %s\n", port)
	}
	fmt.Fprintf(&b, "ListenAddress %s\n", host)
	for _, k := range hostKeys {
		fmt.Fprintf(&b, "HostKey %s\n", filepath.Join(dir, k))
	}
	fmt.Fprintf(&b, "PidFile %s\nAuthorizedKeysFile %s\n", filepath.Join(dir, "sshd.pid"), filepath.Join(dir, "authorized_keys"))
	b.WriteString("StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n")
	for _, l := range extra {
		b.WriteString(l + "\n")
	}
	return b.String()
}
