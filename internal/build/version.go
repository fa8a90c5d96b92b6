package build

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
)

// Version names what is being built: `git describe --tags --dirty --always`
// and the commit, of the working tree that holds the Compose file.
type Version struct {
	Describe string // v1.2.0, v1.2.0-3-gabc1234, abc1234-dirty, or "dev" outside git
	Revision string // full commit hash; "" outside git or before the first commit
	Dirty    bool   // uncommitted changes: an image of this version is never taken as current
}

// Tag is Describe as an image tag ([A-Za-z0-9_.-], at most 128 characters).
func (v Version) Tag() string {
	t := badTag.ReplaceAllString(v.Describe, "_")
	t = strings.TrimLeft(t, ".-")
	if t == "" {
		t = "dev"
	}
	if len(t) > 128 {
		t = t[:128]
	}
	return t
}

var badTag = regexp.MustCompile(`[^A-Za-z0-9_.-]`)

// GitVersion describes the git working tree at dir. Outside a git work tree,
// or without git, it is Version{Describe: "dev", Dirty: true}, so that such
// builds are always redone.
func GitVersion(ctx context.Context, dir string) (Version, error) {
	git := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "git", append([]string{"-C", dir}, args...)...)
		out, err := cmd.Output()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(ee.Stderr)))
		}
		return strings.TrimSpace(string(out)), err
	}
	if _, err := exec.LookPath("git"); err != nil {
		return Version{Describe: "dev", Dirty: true}, nil
	}
	if inside, err := git("rev-parse", "--is-inside-work-tree"); err != nil || inside != "true" {
		return Version{Describe: "dev", Dirty: true}, nil
	}
	rev, err := git("rev-parse", "--verify", "-q", "HEAD")
	if err != nil || rev == "" {
		return Version{Describe: "dev", Dirty: true}, nil // no commit yet
	}
	d, err := git("describe", "--tags", "--dirty", "--always")
	if err != nil {
		return Version{}, fmt.Errorf("version of %s: %w", dir, err)
	}
	return Version{Describe: d, Revision: rev, Dirty: strings.HasSuffix(d, "-dirty")}, nil
}
