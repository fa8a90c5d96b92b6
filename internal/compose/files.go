package compose

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/compose-spec/compose-go/v2/types"

	"github.com/berth-robotics/berth/internal/release"
)

// FileSource is where the value of one of the project's runtime configs or
// secrets comes from on the machine that deploys: a file, an environment
// variable (of the project's environment, .env included) or, for a config,
// the content written in the Compose file. Values are read only when a
// deploy sends them (ReadFiles), never into the spec.
type FileSource struct {
	Kind string // release.KindConfig or release.KindSecret
	Name string
	File string // absolute path, or ""
	Env  string // variable name, or ""

	content *string // a config's content:, or the variable's value
}

// Key is how a deploy request names the value: "secret/NAME", "config/NAME".
func (f FileSource) Key() string { return f.Kind + "/" + f.Name }

// ReadFiles reads the values of the runtime configs and secrets the
// project's services use, keyed by FileSource.Key. A missing file or unset
// variable is an error that names it; the values are for the deploy request
// only.
func (p *Project) ReadFiles() (map[string][]byte, error) {
	if len(p.Files) == 0 {
		return nil, nil
	}
	out := make(map[string][]byte, len(p.Files))
	keys := make([]string, 0, len(p.Files))
	for k := range p.Files {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		f := p.Files[k]
		switch {
		case f.File != "":
			b, err := os.ReadFile(f.File)
			if err != nil {
				return nil, fmt.Errorf("%s %s: read its file: %w; nothing was deployed", f.Kind, f.Name, err)
			}
			if len(b) > maxFileValue {
				return nil, fmt.Errorf("%s %s: %s is %d bytes, more than berth's %d: %w", f.Kind, f.Name, f.File, len(b), maxFileValue, release.ErrInvalid)
			}
			out[k] = b
		case f.content != nil:
			out[k] = []byte(*f.content)
		default:
			return nil, fmt.Errorf("%s %s: the variable %s is not set (give it in the environment or .env); nothing was deployed: %w", f.Kind, f.Name, f.Env, release.ErrInvalid)
		}
	}
	return out, nil
}

// maxFileValue bounds one config's or secret's value (1 MiB, as swarm's).
const maxFileValue = 1 << 20

// fileRefs maps a service's configs: or secrets: and records their sources.
func fileRefs(p *types.Project, svc, kind string, refs []types.FileReferenceConfig, files map[string]FileSource, srcs []source, refused *refusals) []release.FileRef {
	var out []release.FileRef
	for _, r := range refs {
		var obj types.FileObjectConfig
		var ok bool
		if kind == release.KindSecret {
			var s types.SecretConfig
			s, ok = p.Secrets[r.Source]
			obj = types.FileObjectConfig(s)
		} else {
			var c types.ConfigObjConfig
			c, ok = p.Configs[r.Source]
			obj = types.FileObjectConfig(c)
		}
		at := []string{"services", svc, kind + "s"}
		if !ok {
			refused.add(srcs, at, r.Source, fmt.Sprintf("%s %q is not declared under the top-level %ss:", kind, r.Source, kind))
			continue
		}
		if !release.ValidName(r.Source) {
			refused.add(srcs, at, r.Source, fmt.Sprintf("%s %q: name it with lower-case letters, digits, '-' and '_'", kind, r.Source))
			continue
		}
		src := FileSource{Kind: kind, Name: r.Source, File: obj.File, Env: obj.Environment}
		switch {
		case bool(obj.External):
			refused.add(srcs, []string{kind + "s", r.Source, "external"}, "", "an external "+kind+" lives in a swarm; give it a file:, environment: or content:")
			continue
		case obj.File != "":
			if !filepath.IsAbs(src.File) {
				src.File = filepath.Join(p.WorkingDir, src.File)
			}
		case obj.Environment != "":
			if v, ok := p.Environment[obj.Environment]; ok {
				src.content = &v
			}
		case obj.Content != "" || kind == release.KindConfig:
			c := obj.Content
			src.content = &c
		}
		files[src.Key()] = src
		ref := release.FileRef{Source: r.Source, Target: r.Target, UID: r.UID, GID: r.GID}
		if r.Mode != nil {
			ref.Mode = uint32(*r.Mode)
		}
		switch {
		case ref.Target == "" && kind == release.KindSecret:
			ref.Target = "/run/secrets/" + r.Source
		case ref.Target == "":
			ref.Target = "/" + r.Source
		case !strings.HasPrefix(ref.Target, "/") && kind == release.KindSecret:
			ref.Target = "/run/secrets/" + ref.Target
		case !strings.HasPrefix(ref.Target, "/"):
			ref.Target = "/" + ref.Target
		}
		out = append(out, ref)
	}
	return out
}
