package build

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
)

// ignoreRule is one line of a .dockerignore file.
type ignoreRule struct {
	re     *regexp.Regexp
	negate bool
}

// readIgnore parses dir/.dockerignore (missing: no rules). Patterns follow
// docker's: relative to the context root, * and ? within a path element, **
// across elements, a leading ! re-includes, the last matching rule wins, and
// a rule matching a directory matches everything below it.
func readIgnore(dir string) ([]ignoreRule, error) {
	f, err := os.Open(filepath.Join(dir, ".dockerignore"))
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var rules []ignoreRule
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		r := ignoreRule{}
		if strings.HasPrefix(line, "!") {
			r.negate, line = true, strings.TrimSpace(line[1:])
		}
		line = path.Clean(strings.TrimPrefix(filepath.ToSlash(line), "/"))
		var b strings.Builder
		b.WriteString("^")
		for i := 0; i < len(line); i++ {
			switch c := line[i]; c {
			case '*':
				if i+1 < len(line) && line[i+1] == '*' {
					b.WriteString(".*")
					i++
					if i+1 < len(line) && line[i+1] == '/' {
						i++
						b.WriteString("/?")
					}
				} else {
					b.WriteString("[^/]*")
				}
			case '?':
				b.WriteString("[^/]")
			default:
				b.WriteString(regexp.QuoteMeta(string(c)))
			}
		}
		b.WriteString("(/.*)?$")
		re, err := regexp.Compile(b.String())
		if err != nil {
			return nil, fmt.Errorf(".dockerignore: %q: %w", sc.Text(), err)
		}
		r.re = re
		rules = append(rules, r)
	}
	return rules, sc.Err()
}

func ignored(rules []ignoreRule, rel string) bool {
	out := false
	for _, r := range rules {
		if r.re.MatchString(rel) {
			out = !r.negate
		}
	}
	return out
}

// contextTar writes the build context dir as a tar to w, leaving out what
// .dockerignore names (the Dockerfile and .dockerignore always go). A
// Dockerfile outside the context is added under a name of its own; the
// returned name is the Dockerfile's path inside the tar.
func contextTar(w io.Writer, dir, dockerfile string) (string, error) {
	rules, err := readIgnore(dir)
	if err != nil {
		return "", err
	}
	dfRel := dockerfileInTar(dir, dockerfile)
	outside := strings.HasPrefix(dfRel, ".berth-dockerfile-")
	dfAbs := dockerfile
	if !filepath.IsAbs(dfAbs) {
		dfAbs = filepath.Join(dir, dockerfile)
	}
	tw := tar.NewWriter(w)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		always := rel == ".dockerignore" || (!outside && rel == dfRel)
		if !always && ignored(rules, rel) {
			if d.IsDir() && !hasNegation(rules) {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		if !info.Mode().IsRegular() && !info.IsDir() && link == "" {
			return nil // sockets, devices: not context
		}
		h, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		h.Name = rel
		if info.IsDir() {
			h.Name += "/"
		}
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("build context %s: %w", dir, err)
	}
	if outside {
		b, err := os.ReadFile(dfAbs)
		if err != nil {
			return "", fmt.Errorf("dockerfile: %w", err)
		}
		if err := tw.WriteHeader(&tar.Header{Name: dfRel, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			return "", err
		}
		if _, err := tw.Write(b); err != nil {
			return "", err
		}
	} else if _, err := os.Stat(dfAbs); err != nil {
		return "", fmt.Errorf("dockerfile: %w", err)
	}
	return dfRel, tw.Close()
}

func hasNegation(rules []ignoreRule) bool {
	for _, r := range rules {
		if r.negate {
			return true
		}
	}
	return false
}

// dockerfileInTar is the name contextTar gives the Dockerfile.
func dockerfileInTar(dir, dockerfile string) string {
	abs := dockerfile
	if !filepath.IsAbs(abs) {
		abs = filepath.Join(dir, dockerfile)
	}
	if rel, err := filepath.Rel(dir, abs); err == nil && !strings.HasPrefix(rel, "..") {
		return filepath.ToSlash(rel)
	}
	b, err := os.ReadFile(abs)
	if err != nil {
		return dockerfile
	}
	sum := sha256.Sum256(b)
	return ".berth-dockerfile-" + hex.EncodeToString(sum[:6])
}
