package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-robotics/berth/internal/release"
)

// The update lock: an app's containers see their app's lock directory at
// /run/berth and hold off updates with flock(2) on /run/berth/update.lock.
// The local API takes the same lock for a TTL (api-lock.json beside it).
const lockFileName = "update.lock"

type apiLock struct {
	Holder  string    `json:"holder"`
	Since   time.Time `json:"since"`
	Expires time.Time `json:"expires"`
}

// ensureLockDir makes the app's lock directory, writable by any container
// user. Containers can plant anything in it, so berthd never follows a link
// there and only ever opens regular files (openLockFile).
func ensureLockDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o1777); err != nil {
		return err
	}
	f, err := openLockFile(filepath.Join(dir, lockFileName))
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Chmod(0o666)
}

// openLockFile opens (creating) the update lock file, refusing symlinks,
// FIFOs and devices a container may have put in its place.
func openLockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0o666)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w (if it is a symlink or not a regular file, remove it)", path, err)
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file; remove it: %w", path, release.ErrConflict)
	}
	return f, nil
}

// opLocker implements reconcile.Locker for one operation.
type opLocker struct {
	a       *Agent
	force   bool
	timeout time.Duration
}

func (l *opLocker) Acquire(ctx context.Context, app string, waiting func(string)) (func(), error) {
	dir := l.a.store.lockDir(app)
	if err := ensureLockDir(dir); err != nil {
		return nil, fmt.Errorf("lock directory: %w", err)
	}
	defer l.a.setLockWait(app, "", time.Time{})
	start := l.a.now()
	var last string
	for {
		holder, unlock, err := l.try(app, dir)
		if err != nil {
			return nil, err
		}
		if holder == "" {
			return unlock, nil
		}
		if holder != last {
			waiting(holder)
			last = holder
		}
		l.a.setLockWait(app, holder, start)
		if !strings.HasPrefix(holder, "maintenance window") && l.a.now().Sub(start) >= l.timeout {
			return nil, fmt.Errorf("update lock held by %s for %s (the lock timeout); nothing was changed, the running release keeps running; retry later, or deploy with --force: %w", holder, l.timeout.Round(time.Second), release.ErrLocked)
		}
		if err := l.a.sleep(ctx, 250*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// try takes every lock at once or none; it returns who holds one if it can't.
func (l *opLocker) try(app, dir string) (holder string, unlock func(), err error) {
	if l.force {
		return "", func() {}, nil
	}
	if w := l.a.windows; len(w) > 0 && !inWindow(w, l.a.now()) {
		return "maintenance window " + strings.Join(l.a.cfg.MaintenanceWindows, ", "), nil, nil
	}
	if al, ok := readAPILock(l.a.store.appDir(app), l.a.now()); ok {
		return fmt.Sprintf("%s (through the API, until %s)", al.Holder, al.Expires.Format(time.RFC3339)), nil, nil
	}
	path := filepath.Join(dir, lockFileName)
	f, err := openLockFile(path)
	if err != nil {
		return "", nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return l.a.lockHolder(path), nil, nil
		}
		return "", nil, fmt.Errorf("flock %s: %w", path, err)
	}
	return "", func() {
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}

// readAPILock reads the API lock, kept in the app's directory (not the
// lock directory containers see).
func readAPILock(dir string, now time.Time) (apiLock, bool) {
	var al apiLock
	if err := readJSON(filepath.Join(dir, "api-lock.json"), &al); err != nil {
		return al, false
	}
	return al, now.Before(al.Expires)
}

var containerIDRE = regexp.MustCompile(`[0-9a-f]{64}`)

// lockHolder names who holds the flock on path: a service of the app, or a
// process, found through /proc/locks.
func (a *Agent) lockHolder(path string) string {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return "another process"
	}
	b, err := os.ReadFile("/proc/locks")
	if err != nil {
		return "another process"
	}
	ino := ":" + strconv.FormatUint(st.Ino, 10)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || f[1] != "FLOCK" || !strings.HasSuffix(f[5], ino) {
			continue
		}
		pid := f[4]
		cg, _ := os.ReadFile("/proc/" + pid + "/cgroup")
		if id := containerIDRE.FindString(string(cg)); id != "" {
			if c, err := a.eng.Inspect(context.Background(), id); err == nil {
				return fmt.Sprintf("service %s (pid %s)", c.Service, pid)
			}
			return fmt.Sprintf("container %s (pid %s)", id[:12], pid)
		}
		comm, _ := os.ReadFile("/proc/" + pid + "/comm")
		return fmt.Sprintf("process %s (pid %s)", strings.TrimSpace(string(comm)), pid)
	}
	return "another process"
}

// window is a daily local-time window on some weekdays.
type window struct {
	days       [7]bool
	start, end int // minutes after midnight; end may be 1440
}

var days = map[string]time.Weekday{"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}

func parseWindows(specs []string) ([]window, error) {
	var out []window
	for _, s := range specs {
		w, err := parseWindow(s)
		if err != nil {
			return nil, fmt.Errorf("maintenance window %q: %v (want e.g. \"22:00-06:00\" or \"Mon-Fri 12:00-13:00\"): %w", s, err, release.ErrInvalid)
		}
		out = append(out, w)
	}
	return out, nil
}

func parseWindow(s string) (window, error) {
	var w window
	f := strings.Fields(s)
	span := ""
	switch len(f) {
	case 1:
		span = f[0]
		for i := range w.days {
			w.days[i] = true
		}
	case 2:
		span = f[1]
		for _, part := range strings.Split(strings.ToLower(f[0]), ",") {
			a, b, isRange := strings.Cut(part, "-")
			da, ok := days[a]
			if !ok {
				return w, fmt.Errorf("unknown day %q", a)
			}
			db := da
			if isRange {
				if db, ok = days[b]; !ok {
					return w, fmt.Errorf("unknown day %q", b)
				}
			}
			for d := da; ; d = (d + 1) % 7 {
				w.days[d] = true
				if d == db {
					break
				}
			}
		}
	default:
		return w, errors.New("too many fields")
	}
	a, b, ok := strings.Cut(span, "-")
	if !ok {
		return w, errors.New("no '-' between start and end")
	}
	var err error
	if w.start, err = minutes(a); err != nil {
		return w, err
	}
	if w.end, err = minutes(b); err != nil {
		return w, err
	}
	return w, nil
}

func minutes(s string) (int, error) {
	h, m, ok := strings.Cut(s, ":")
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if !ok || err1 != nil || err2 != nil || hh < 0 || hh > 24 || mm < 0 || mm > 59 || hh*60+mm > 1440 {
		return 0, fmt.Errorf("bad time %q", s)
	}
	return hh*60 + mm, nil
}

// inWindow reports whether t falls in any window. A window whose end is
// before its start runs past midnight and belongs to the day it starts.
func inWindow(ws []window, t time.Time) bool {
	m := t.Hour()*60 + t.Minute()
	today, yesterday := t.Weekday(), (t.Weekday()+6)%7
	for _, w := range ws {
		if w.start <= w.end {
			if w.days[today] && m >= w.start && m < w.end {
				return true
			}
			continue
		}
		if (w.days[today] && m >= w.start) || (w.days[yesterday] && m < w.end) {
			return true
		}
	}
	return false
}
