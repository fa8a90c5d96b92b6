package agent

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/berth-robotics/berth/internal/atomicfile"
	"github.com/berth-robotics/berth/internal/release"
)

// Runtime configs and secrets: a deploy sends their values beside the spec
// (DeployRequest.Files, "secret/NAME" or "config/NAME"); the agent keys a
// digest of each with a secret of its own (files.key, made once, 0600) and
// writes it into every reference of the spec, so the release names the value
// without telling it, and a new value makes a new container of exactly the
// services that use it. The values live as files in apps/<app>/files (0700,
// root's), one per value, owner and mode, which the engine bind-mounts
// read-only at each reference's target; they are never logged and no API
// answers them. Files no kept release uses go at commit.

// fileKey is the key of the digests, made at the first use.
func (a *Agent) fileKey() ([]byte, error) {
	path := filepath.Join(a.cfg.StateDir, "files.key")
	b, err := os.ReadFile(path)
	if err == nil && len(b) == 32 {
		return b, nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read the key of config and secret digests: %w", err)
	}
	b = make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(path, b); err != nil {
		return nil, fmt.Errorf("write the key of config and secret digests: %w", err)
	}
	return b, nil
}

// fileWrite is one value to write for a release.
type fileWrite struct {
	name  string // release.FileRef.FileName
	value []byte
	uid   int
	gid   int
	mode  os.FileMode
}

// bindFiles sets the digest of every config and secret reference of spec
// from the values sent, and returns the files the release needs. A
// reference whose value was not sent is refused.
func (a *Agent) bindFiles(spec *release.Spec, values map[string][]byte) ([]fileWrite, error) {
	var key []byte
	var out []fileWrite
	for _, name := range sortedNames(spec.Services) {
		svc := spec.Services[name]
		for _, kind := range []string{release.KindConfig, release.KindSecret} {
			refs := svc.Configs
			if kind == release.KindSecret {
				refs = svc.Secrets
			}
			for i, r := range refs {
				v, ok := values[kind+"/"+r.Source]
				if !ok {
					return nil, fmt.Errorf("service %s uses %s %s, but the deploy sent no value for it (berth deploy sends the values of the Compose file's configs and secrets; a fleet release cannot carry them yet); nothing changed: %w", name, kind, r.Source, release.ErrInvalid)
				}
				if key == nil {
					var err error
					if key, err = a.fileKey(); err != nil {
						return nil, err
					}
				}
				m := hmac.New(sha256.New, key)
				m.Write([]byte(kind + "\x00" + r.Source + "\x00"))
				m.Write(v)
				r.Digest = "hmac-sha256:" + hex.EncodeToString(m.Sum(nil))
				refs[i] = r
				uid, _ := strconv.Atoi(r.UID)
				gid, _ := strconv.Atoi(r.GID)
				mode := os.FileMode(r.Mode)
				if mode == 0 {
					mode = 0o444
				}
				out = append(out, fileWrite{name: r.FileName(kind), value: v, uid: uid, gid: gid, mode: mode})
			}
			if kind == release.KindSecret {
				svc.Secrets = refs
			} else {
				svc.Configs = refs
			}
		}
		spec.Services[name] = svc
	}
	for k := range values {
		kind, _, _ := strings.Cut(k, "/")
		if kind != release.KindConfig && kind != release.KindSecret {
			return nil, fmt.Errorf("deploy request: file %q: want config/NAME or secret/NAME: %w", k, release.ErrInvalid)
		}
	}
	return out, nil
}

func (a *Agent) filesDir(app string) string { return filepath.Join(a.store.appDir(app), "files") }

// writeFiles writes the values into the app's files directory, each with
// its owner and mode; a file already there (same value, owner and mode: its
// name says so) is left as it is.
func (a *Agent) writeFiles(app string, files []fileWrite) error {
	dir := a.filesDir(app)
	if len(files) == 0 {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, f := range files {
		path := filepath.Join(dir, f.name)
		if _, err := os.Stat(path); err == nil {
			continue
		}
		if err := atomicfile.Write(path, f.value); err != nil {
			return fmt.Errorf("write %s: %w", f.name, err)
		}
		if err := os.Chown(path, f.uid, f.gid); err != nil && !errors.Is(err, fs.ErrPermission) {
			return fmt.Errorf("chown %s: %w", f.name, err)
		}
		if err := os.Chmod(path, f.mode); err != nil {
			return fmt.Errorf("chmod %s: %w", f.name, err)
		}
	}
	return nil
}

// checkFiles refuses a release whose configs and secrets have no file on
// this device (a fleet release, or a kept one whose files are gone).
func (a *Agent) checkFiles(rel *release.Release) error {
	for _, name := range sortedNames(rel.Spec.Services) {
		svc := rel.Spec.Services[name]
		for kind, refs := range map[string][]release.FileRef{release.KindConfig: svc.Configs, release.KindSecret: svc.Secrets} {
			for _, r := range refs {
				if r.Digest == "" {
					return fmt.Errorf("service %s uses %s %s, which only berth deploy can send for now (not a fleet release); nothing changed: %w", name, kind, r.Source, release.ErrInvalid)
				}
				if _, err := os.Stat(filepath.Join(a.filesDir(rel.App), r.FileName(kind))); err != nil {
					return fmt.Errorf("service %s: the value of %s %s is not on this device any more; deploy again with berth deploy; nothing changed: %w", name, kind, r.Source, release.ErrNotFound)
				}
			}
		}
	}
	return nil
}

// gcFiles removes the files of app that none of its kept releases uses.
func (a *Agent) gcFiles(app string, kept []string) {
	ents, err := os.ReadDir(a.filesDir(app))
	if err != nil {
		return
	}
	used := map[string]bool{}
	for _, id := range kept {
		rel, err := a.store.release(app, id)
		if err != nil {
			return // unsure what is used: keep everything
		}
		for _, svc := range rel.Spec.Services {
			for _, r := range svc.Configs {
				used[r.FileName(release.KindConfig)] = true
			}
			for _, r := range svc.Secrets {
				used[r.FileName(release.KindSecret)] = true
			}
		}
	}
	for _, e := range ents {
		if !used[e.Name()] {
			_ = os.Remove(filepath.Join(a.filesDir(app), e.Name()))
		}
	}
}
