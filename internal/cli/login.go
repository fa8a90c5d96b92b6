package cli

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/berth-robotics/berth/internal/serverapi"
)

// loginConfig is what `berth login` keeps in the user's config directory.
type loginConfig struct {
	Server         string `json:"server"`
	Token          string `json:"token"`
	TLSFingerprint string `json:"tls_fingerprint,omitempty"`
}

// configPath is os.UserConfigDir()/berth/config.json.
func configPath() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("config directory: %w", err)
	}
	return filepath.Join(dir, "berth", "config.json"), nil
}

func readLoginConfig() (loginConfig, error) {
	var c loginConfig
	path, err := configPath()
	if err != nil {
		return c, err
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("%s: %w (run berth login again)", path, err)
	}
	return c, nil
}

// writeLoginConfig writes the config readable by its owner only.
func writeLoginConfig(c loginConfig) (string, error) {
	path, err := configPath()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return "", err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".config.json.*")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return "", err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return path, os.Rename(f.Name(), path)
}

// serverFlags are what every command that talks to a fleet server takes:
// the flags, else BERTH_SERVER / BERTH_TOKEN / BERTH_TLS_FINGERPRINT, else
// what `berth login` stored.
type serverFlags struct {
	server, token, fingerprint string
}

func addServerFlags(c *cobra.Command, f *serverFlags) {
	c.PersistentFlags().StringVar(&f.server, "server", "", "the fleet server's URL (env BERTH_SERVER; default: the one berth login stored)")
	c.PersistentFlags().StringVar(&f.token, "token", "", "an API token (env BERTH_TOKEN; default: the one berth login stored)")
	c.PersistentFlags().StringVar(&f.fingerprint, "tls-fingerprint", "", "pin the server's TLS certificate by its SHA-256 fingerprint, as berth server --tls-self-signed prints it (env BERTH_TLS_FINGERPRINT)")
}

// client connects to the server the flags, the environment or the stored
// login name. A stored token is used only for the server it was stored with.
func (f *serverFlags) client() (*serverapi.Client, error) {
	server, token, fp := f.server, f.token, f.fingerprint
	if server == "" {
		server = os.Getenv("BERTH_SERVER")
	}
	if token == "" {
		token = os.Getenv("BERTH_TOKEN")
	}
	if fp == "" {
		fp = os.Getenv("BERTH_TLS_FINGERPRINT")
	}
	if server == "" || token == "" {
		c, err := readLoginConfig()
		if err != nil {
			return nil, err
		}
		if server == "" {
			server = c.Server
		}
		if token == "" && strings.TrimSuffix(c.Server, "/") == strings.TrimSuffix(server, "/") {
			token = c.Token
		}
		if fp == "" && c.Server == server {
			fp = c.TLSFingerprint
		}
	}
	if server == "" {
		return nil, errors.New("which server? give --server URL, set BERTH_SERVER, or run berth login --server URL --token TOKEN")
	}
	if token == "" {
		return nil, fmt.Errorf("no token for %s: give --token, set BERTH_TOKEN, or run berth login --server %s --token TOKEN", server, server)
	}
	return serverapi.New(server, serverapi.Options{Token: token, Fingerprint: fp})
}

func newLogin() *cobra.Command {
	var f serverFlags
	c := &cobra.Command{
		Use:   "login --server URL --token TOKEN",
		Short: "Check an API token against a fleet server and keep both for later commands",
		Long: `login asks the server whose token it is, and if it answers, keeps the server's
URL, the token and any pinned certificate fingerprint in your config directory
(` + "`os.UserConfigDir()/berth/config.json`" + `, readable by you only). Later commands use
them unless --server, --token or BERTH_SERVER / BERTH_TOKEN say otherwise.
--token - reads the token from standard input (it then stays out of your
shell history and the process list).`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if f.server == "" {
				f.server = os.Getenv("BERTH_SERVER")
			}
			if f.token == "" {
				f.token = os.Getenv("BERTH_TOKEN")
			}
			if f.token == "-" {
				line, err := bufio.NewReader(c.InOrStdin()).ReadString('\n')
				if err != nil && !errors.Is(err, io.EOF) {
					return fmt.Errorf("read the token from standard input: %w", err)
				}
				f.token = strings.TrimSpace(line)
			}
			if f.server == "" || f.token == "" {
				return errors.New("give --server URL and --token TOKEN (or --token - to read it from standard input)")
			}
			cl, err := f.client()
			if err != nil {
				return err
			}
			defer cl.Close()
			who, err := cl.Whoami(c.Context())
			if err != nil {
				return fmt.Errorf("log in to %s: %w; nothing was stored", f.server, err)
			}
			path, err := writeLoginConfig(loginConfig{Server: cl.Server(), Token: f.token, TLSFingerprint: f.fingerprint})
			if err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "logged in to %s as %s (%s); saved in %s\n", cl.Server(), who.User.Name, who.User.Role, path)
			return nil
		},
	}
	c.Flags().StringVar(&f.server, "server", "", "the fleet server's URL (env BERTH_SERVER)")
	c.Flags().StringVar(&f.token, "token", "", "the API token, or - to read it from standard input (env BERTH_TOKEN)")
	c.Flags().StringVar(&f.fingerprint, "tls-fingerprint", "", "pin the server's TLS certificate by its SHA-256 fingerprint (a self-signed server)")
	return c
}
