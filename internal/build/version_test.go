package build

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
)

func TestGitVersion(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("no git")
	}
	dir := t.TempDir()
	git := func(args ...string) {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-C", dir}, args...)...)
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.com")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	write := func(name, text string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	check := func(name string, want *regexp.Regexp, dirty bool) {
		t.Helper()
		v, err := GitVersion(ctx, dir)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !want.MatchString(v.Describe) || v.Dirty != dirty {
			t.Errorf("%s: version %+v, want %v dirty=%v", name, v, want, dirty)
		}
		if !regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`).MatchString(v.Tag()) {
			t.Errorf("%s: tag %q is not an image tag", name, v.Tag())
		}
	}

	check("not-git", regexp.MustCompile(`^dev$`), true)
	git("init", "-q")
	check("no-commit", regexp.MustCompile(`^dev$`), true)
	write("compose.yaml", "services: {}\n")
	git("add", ".")
	git("commit", "-qm", "one")
	check("clean", regexp.MustCompile(`^[0-9a-f]{7,}$`), false)
	git("tag", "v1.0.0")
	check("tagged", regexp.MustCompile(`^v1\.0\.0$`), false)
	write("compose.yaml", "services: {a: {image: a}}\n")
	check("dirty", regexp.MustCompile(`^v1\.0\.0-dirty$`), true)
	git("commit", "-qam", "two")
	check("after-tag", regexp.MustCompile(`^v1\.0\.0-1-g[0-9a-f]{7,}$`), false)
}

func TestVersionTag(t *testing.T) {
	for in, want := range map[string]string{
		"v1.2.3":           "v1.2.3",
		"release/2-1-gabc": "release_2-1-gabc",
		"-x":               "x",
		"":                 "dev",
		"v1+build.5-dirty": "v1_build.5-dirty",
	} {
		if got := (Version{Describe: in}).Tag(); got != want {
			t.Errorf("Tag(%q) = %q, want %q", in, got, want)
		}
	}
}
