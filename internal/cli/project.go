package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/berth-robotics/berth/internal/compose"
	"github.com/berth-robotics/berth/internal/release"
)

// projectFlags are docker compose's project flags: -f, -p, --project-directory,
// --env-file and --profile. --app is -p under berth's older name.
type projectFlags struct {
	files    []string
	name     string
	dir      string
	envFiles []string
	profiles []string
}

// add adds the flags to c; fileShort is false where -f means something else
// (logs -f follows).
func (p *projectFlags) add(c *cobra.Command, fileShort bool) {
	fileHelp := "Compose file(s); later ones override earlier (default: COMPOSE_FILE, else compose.yaml, compose.yml, docker-compose.yml or docker-compose.yaml and its override file, here or in the nearest parent directory)"
	if fileShort {
		c.Flags().StringArrayVarP(&p.files, "file", "f", nil, fileHelp)
	} else {
		c.Flags().StringArrayVar(&p.files, "file", nil, fileHelp)
	}
	c.Flags().StringVarP(&p.name, "project-name", "p", "", "app name, the Compose project name (default: COMPOSE_PROJECT_NAME, the file's name:, else the project directory's name)")
	c.Flags().StringVar(&p.name, "app", "", "app name; the same as -p")
	c.Flags().StringVar(&p.dir, "project-directory", "", "the project directory, where .env is read and relative paths start (default: the first file's directory)")
	c.Flags().StringArrayVar(&p.envFiles, "env-file", nil, "variables for the Compose file (default: .env in the project directory)")
	c.Flags().StringArrayVar(&p.profiles, "profile", nil, "Compose profiles to enable (default: COMPOSE_PROFILES)")
}

func (p *projectFlags) options() compose.Options {
	return compose.Options{ProjectName: p.name, WorkingDir: p.dir, EnvFiles: p.envFiles, Profiles: p.profiles}
}

// load reads the Compose project as docker compose would.
func (p *projectFlags) load(ctx context.Context) (*compose.Project, error) {
	return compose.LoadProject(ctx, p.files, p.options())
}

// app is the app a command that takes --app acts on: -p/--app, else the
// name of the Compose project of this directory (or one above it).
func (p *projectFlags) app(ctx context.Context) (string, error) {
	if p.name != "" {
		return p.name, nil
	}
	name, err := compose.ProjectName(ctx, p.files, p.options())
	if err != nil {
		if len(p.files) == 0 && p.dir == "" && errors.Is(err, release.ErrInvalid) {
			return "", fmt.Errorf("which app? give --app, or run this in a Compose project's directory (%w)", err)
		}
		return "", err
	}
	return name, nil
}

// addAppFlags adds --app with the project flags that find it, for commands
// that act on an app of a device.
func addAppFlags(c *cobra.Command, p *projectFlags) {
	c.Flags().StringVar(&p.name, "app", "", "the app (default: the Compose project name of this directory, as docker compose finds it)")
	c.Flags().StringVarP(&p.name, "project-name", "p", "", "the app; the same as --app")
	c.Flags().StringArrayVar(&p.files, "file", nil, "Compose file(s) whose project names the app")
	c.Flags().StringVar(&p.dir, "project-directory", "", "the Compose project directory whose project names the app")
	c.Flags().StringArrayVar(&p.envFiles, "env-file", nil, "env files (COMPOSE_PROJECT_NAME may come from one)")
}
