package compose

import (
	"fmt"
	"path/filepath"
	"slices"

	"github.com/compose-spec/compose-go/v2/types"
)

// buildOf maps a service's build: section. Build secrets name top-level
// secrets that are files or environment variables of the building machine.
func buildOf(name string, s types.ServiceConfig, p *types.Project, srcs []source, refused *refusals) Build {
	at := func(attr ...string) []string { return append([]string{"services", name, "build"}, attr...) }
	bc := s.Build
	b := Build{
		Context:    bc.Context,
		Dockerfile: bc.Dockerfile,
		Target:     bc.Target,
		Labels:     mapOrNil(bc.Labels),
		Platforms:  sliceOrNil(bc.Platforms),
		Image:      s.Image,
	}
	if b.Context == "" {
		b.Context = p.WorkingDir
	} else if !filepath.IsAbs(b.Context) {
		b.Context = filepath.Join(p.WorkingDir, b.Context)
	}
	if b.Dockerfile == "" {
		b.Dockerfile = "Dockerfile"
	}
	if bc.DockerfileInline != "" {
		refused.add(srcs, at("dockerfile_inline"), "", "write the Dockerfile to a file and name it with dockerfile:")
	}
	for k, v := range bc.Args {
		if v != nil {
			b.Args = setKey(b.Args, k, *v)
		}
	}
	for _, ref := range bc.Secrets {
		sec, ok := p.Secrets[ref.Source]
		if !ok {
			refused.add(srcs, at("secrets"), ref.Source, fmt.Sprintf("secret %q is not declared under the top-level secrets:", ref.Source))
			continue
		}
		id := ref.Target
		if id == "" {
			id = ref.Source
		}
		out := Secret{ID: id, Env: sec.Environment}
		if sec.File != "" {
			out.File = sec.File
			if !filepath.IsAbs(out.File) {
				out.File = filepath.Join(p.WorkingDir, out.File)
			}
		}
		if out.File == "" && out.Env == "" {
			refused.add(srcs, at("secrets"), ref.Source, fmt.Sprintf("secret %q: give it a file: or an environment:", ref.Source))
			continue
		}
		b.Secrets = append(b.Secrets, out)
	}
	slices.SortFunc(b.Secrets, func(x, y Secret) int {
		if x.ID < y.ID {
			return -1
		}
		if x.ID > y.ID {
			return 1
		}
		return 0
	})
	return b
}
