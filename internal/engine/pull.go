package engine

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/registry"

	"github.com/berth-robotics/berth/internal/release"
)

// Pull pulls ref from its registry, for platform ("" is the engine's), with
// the credentials the Docker config at configDir holds for the registry
// ("" is $DOCKER_CONFIG, else ~/.docker), and returns the image ID.
func (c *Client) Pull(ctx context.Context, ref, platform, configDir string) (string, error) {
	auth, err := registryAuth(ref, configDir)
	if err != nil {
		return "", err
	}
	rc, err := c.api.ImagePull(ctx, ref, image.PullOptions{Platform: platform, RegistryAuth: auth})
	if err != nil {
		return "", fmt.Errorf("pull %s: %w", ref, err)
	}
	defer rc.Close()
	sc := bufio.NewScanner(rc)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var m struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(sc.Bytes(), &m) == nil && m.Error != "" {
			return "", fmt.Errorf("pull %s: %s", ref, m.Error)
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("pull %s: %w", ref, err)
	}
	return c.ImageID(ctx, ref)
}

// registryAuth is the X-Registry-Auth value for ref's registry from the
// "auths" of a Docker config.json: base64 "user:password" under the
// registry's host. Credential helpers (credsStore) are not consulted.
func registryAuth(ref, configDir string) (string, error) {
	if configDir == "" {
		configDir = os.Getenv("DOCKER_CONFIG")
	}
	if configDir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", nil
		}
		configDir = filepath.Join(home, ".docker")
	}
	b, err := os.ReadFile(filepath.Join(configDir, "config.json"))
	if os.IsNotExist(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read the Docker config for registry credentials: %w", err)
	}
	var cfg struct {
		Auths map[string]struct {
			Auth string `json:"auth"`
		} `json:"auths"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return "", fmt.Errorf("Docker config %s: %v: %w", filepath.Join(configDir, "config.json"), err, release.ErrInvalid)
	}
	host := RegistryHost(ref)
	for _, key := range []string{host, "https://" + host, "http://" + host, "https://" + host + "/v1/"} {
		a, ok := cfg.Auths[key]
		if !ok || a.Auth == "" {
			continue
		}
		dec, err := base64.StdEncoding.DecodeString(a.Auth)
		if err != nil {
			return "", fmt.Errorf("Docker config: the auth of %s is not base64: %w", key, release.ErrInvalid)
		}
		user, pass, _ := strings.Cut(string(dec), ":")
		enc, err := json.Marshal(registry.AuthConfig{Username: user, Password: pass, ServerAddress: host})
		if err != nil {
			return "", err
		}
		return base64.URLEncoding.EncodeToString(enc), nil
	}
	return "", nil
}

// RegistryHost is the registry an image reference names: the part before
// the first '/' when it looks like a host (has '.' or ':', or is
// localhost), else Docker Hub.
func RegistryHost(ref string) string {
	first, _, ok := strings.Cut(ref, "/")
	if ok && (strings.ContainsAny(first, ".:") || first == "localhost") {
		return first
	}
	return "index.docker.io"
}
