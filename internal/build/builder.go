package build

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/berth-robotics/berth/internal/buildkit"
	"github.com/berth-robotics/berth/internal/engine"
	"github.com/berth-robotics/berth/internal/release"
)

// Builder names one of the engine's builders.
type Builder string

// The builders: BuilderAuto lets the engine and the build decide.
const (
	BuilderAuto     Builder = ""
	BuilderBuildKit Builder = "buildkit"
	BuilderClassic  Builder = "classic"
)

// EnvBuilder is the environment variable that picks the builder when the
// command line does not: auto, buildkit or classic.
const EnvBuilder = "BERTH_BUILDER"

// ParseBuilder reads auto, buildkit or classic ("" is auto).
func ParseBuilder(s string) (Builder, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "auto":
		return BuilderAuto, nil
	case "buildkit", "2":
		return BuilderBuildKit, nil
	case "classic", "1":
		return BuilderClassic, nil
	}
	return BuilderAuto, fmt.Errorf("builder %q: want auto, buildkit or classic: %w", s, release.ErrInvalid)
}

// chooseBuilders picks the builder of each target: the one asked for, else
// BuildKit when it is the engine's default, the target has build secrets
// (the classic builder would leave them in the image) or the build is for
// another platform (cross: the classic builder runs every stage on the
// target platform, which needs an emulator), else the classic builder. It fails, before anything is built, when a target needs what the
// engine lacks or a build secret cannot be read.
func chooseBuilders(ctx context.Context, eng Engine, plan *Plan, want Builder, cross bool) ([]Builder, error) {
	for _, t := range plan.Targets {
		if err := checkSecrets(t); err != nil {
			return nil, fmt.Errorf("service %s: %w; nothing was built", t.Service, err)
		}
	}
	var offer engine.Builders
	need := want == BuilderBuildKit
	if want == BuilderAuto {
		var err error
		if offer, err = eng.Builders(ctx); err != nil {
			return nil, err
		}
	}
	out := make([]Builder, len(plan.Targets))
	for i, t := range plan.Targets {
		switch {
		case want == BuilderClassic && len(t.Secrets) > 0:
			return nil, fmt.Errorf("service %s has build secrets (%s), which the classic builder would leave in a layer or the image's history; nothing was built: build with BuildKit (--builder buildkit or auto, or %s unset): %w",
				t.Service, secretIDs(t), EnvBuilder, release.ErrInvalid)
		case want != BuilderAuto:
			out[i] = want
		case offer.Default == "2" || len(t.Secrets) > 0 || cross:
			out[i] = BuilderBuildKit
			need = true
		default:
			out[i] = BuilderClassic
		}
	}
	if !need {
		return out, nil
	}
	if want != BuilderAuto {
		var err error
		if offer, err = eng.Builders(ctx); err != nil {
			return nil, err
		}
	}
	if !offer.BuildKit {
		who := usersOf(plan, out)
		why := "--builder buildkit was asked for"
		if want == BuilderAuto && cross {
			why = "building for another platform than the engine's without an emulator needs it"
		} else if want == BuilderAuto {
			why = "their build secrets need it"
		}
		return nil, fmt.Errorf("the Docker Engine (API %s, %s) offers no BuildKit, which %s needs (%s); nothing was built: %s: %w",
			offer.API, offer.OS, strings.Join(who, ", "), why, noBuildKitHint, release.ErrInvalid)
	}
	if err := buildkit.Probe(ctx, eng.DialSession); err != nil {
		return nil, fmt.Errorf("the Docker Engine did not take a BuildKit session (%w), which %s needs; nothing was built: %s", err, strings.Join(usersOf(plan, out), ", "), noBuildKitHint)
	}
	return out, nil
}

const noBuildKitHint = "update the engine to Docker 18.09 or later on Linux, or build those images elsewhere (docker buildx build --secret) and deploy them by image:, or drop the secrets and use --builder classic"

// usersOf names the targets that build with BuildKit.
func usersOf(plan *Plan, builders []Builder) []string {
	var who []string
	for i, t := range plan.Targets {
		if builders[i] == BuilderBuildKit {
			who = append(who, t.Service)
		}
	}
	return who
}

// checkSecrets makes sure each of t's build secrets can be read now: a file
// that is missing or unreadable, or an environment variable that is not
// set, would otherwise fail the build halfway or mount an empty secret.
func checkSecrets(t Target) error {
	for _, s := range t.Secrets {
		switch {
		case s.File != "":
			f, err := os.Open(s.File)
			if err != nil {
				return fmt.Errorf("build secret %s: cannot read its file: %w (check secrets.%s.file in the Compose file): %w", s.ID, err, s.ID, release.ErrInvalid)
			}
			st, err := f.Stat()
			f.Close()
			if err != nil || !st.Mode().IsRegular() {
				return fmt.Errorf("build secret %s: %s is not a regular file: %w", s.ID, s.File, release.ErrInvalid)
			}
			if st.Size() > buildkit.MaxSecretSize {
				return fmt.Errorf("build secret %s: %s has %d bytes, more than BuildKit serves (%d): %w", s.ID, s.File, st.Size(), buildkit.MaxSecretSize, release.ErrInvalid)
			}
		case s.Env != "":
			if _, ok := os.LookupEnv(s.Env); !ok {
				return fmt.Errorf("build secret %s: the environment variable %s is not set: set it, or give the secret a file:: %w", s.ID, s.Env, release.ErrInvalid)
			}
		}
	}
	return nil
}

func secretIDs(t Target) string {
	var ids []string
	for _, s := range t.Secrets {
		ids = append(ids, s.ID)
	}
	return strings.Join(ids, ", ")
}

// buildKit builds t with the engine's BuildKit: a client session serves the
// context, the Dockerfile's directory and the secrets, and the progress
// becomes lines. The image is tagged and labelled as the classic builder's,
// and lands in the engine's image store.
func buildKit(ctx context.Context, eng Engine, t Target, dockerfile string, bo engine.BuildOptions, line func(string)) (string, error) {
	var secrets []buildkit.Secret
	for _, s := range t.Secrets {
		secrets = append(secrets, buildkit.Secret{ID: s.ID, File: s.File, Env: s.Env})
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sess, err := buildkit.Start(sctx, eng.DialSession, t.Context, filepath.Dir(dockerfile), secrets)
	if err != nil {
		return "", err
	}
	defer sess.Close()
	progress := buildkit.NewProgress(line)
	bo.Session, bo.Dockerfile, bo.Trace = sess.ID(), filepath.Base(dockerfile), progress.Trace
	id, err := eng.Build(ctx, bo, line)
	progress.Flush()
	if err != nil {
		if step := progress.Failed(); step != "" {
			return "", fmt.Errorf("step %s: %w", step, err)
		}
		return "", err
	}
	return id, nil
}
