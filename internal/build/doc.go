// Package build builds the images of a Compose file's build: sections
// through the Docker Engine's classic builder, in parallel, tagged
// <app>-<service>:<version> with the version from git describe, and
// labelled with org.opencontainers.image.version and .revision.
//
// BuildKit over the Engine API needs a client-side session (the /session
// endpoint with moby/buildkit's filesync and secrets providers); that library
// roughly doubles the berth binary, so berth uses the classic builder and
// refuses build secrets with a clear error rather than letting them reach a
// layer. See docs/architecture.md.
package build
