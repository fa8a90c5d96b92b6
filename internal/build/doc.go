// Package build builds the images of a Compose file's build: sections
// through the Docker Engine, in parallel, tagged <app>-<service>:<version>
// with the version from git describe, and labelled with
// org.opencontainers.image.version and .revision.
//
// Each target goes to the engine's classic builder (a context tar) or to its
// BuildKit (internal/buildkit: a client session over the engine's /session
// endpoint serves the context, the Dockerfile and the build secrets):
// BuildKit when it is the engine's default, when the target has build
// secrets, which the classic builder would leave in a layer, or when asked
// (Options.Builder, berth's --builder and BERTH_BUILDER). See
// docs/architecture.md.
package build
