//go:build unix

package build

import (
	"os"
	"path/filepath"
	"syscall"
)

// lockMachine holds a lock shared by every berth on this machine (an
// flock on a file in the temp directory) until the returned func is called,
// so that two builds do not both make the local Go image.
func lockMachine(name string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(os.TempDir(), name+".lock"), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}
