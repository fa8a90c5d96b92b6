package build

import (
	"context"
	"fmt"
	"io"
	"path/filepath"

	"github.com/berth-robotics/berth/internal/compose"
)

// Offline loads a Compose file, builds every service with a build: section
// on the local Go image (LocalGoImage, passed as the build arg GO_IMAGE), at
// the git version of the file's directory, and returns the project with its
// spec pointing at the images built. It is berth build --local-go-image as a
// function: the quickstart builds examples/robot/compose.yaml with it, then
// deploys p.Spec or releases it.
func Offline(ctx context.Context, eng Importer, composeFile string, opts compose.Options, out io.Writer) (*compose.Project, []Result, error) {
	p, err := compose.LoadProject(ctx, []string{composeFile}, opts)
	if err != nil {
		return nil, nil, err
	}
	v, err := GitVersion(ctx, filepath.Dir(composeFile))
	if err != nil {
		return nil, nil, err
	}
	plan, err := NewPlan(p, v)
	if err != nil {
		return nil, nil, err
	}
	ref, err := LocalGoImage(ctx, eng)
	if err != nil {
		return nil, nil, fmt.Errorf("build %s offline: %w", p.App, err)
	}
	res, err := Run(ctx, eng, plan, Options{Out: out, Args: map[string]string{"GO_IMAGE": ref}})
	if err != nil {
		return nil, res, err
	}
	plan.Pin(p.Spec)
	return p, res, nil
}
