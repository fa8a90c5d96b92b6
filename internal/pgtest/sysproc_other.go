//go:build !linux

package pgtest

import "syscall"

// runAs: elsewhere, the binaries run as the current user.
func runAs(dir string) (*syscall.SysProcAttr, error) {
	return nil, nil
}
