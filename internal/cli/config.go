package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/berth-robotics/berth/internal/build"
	"github.com/berth-robotics/berth/internal/release"
)

func newConfig() *cobra.Command {
	var (
		pf       projectFlags
		version  string
		services bool
		images   bool
	)
	c := &cobra.Command{
		Use:   "config [-f compose.yaml] [-p APP] [--services | --images]",
		Short: "Print the release berth would send: the Compose project, normalized (like docker compose config)",
		Long: `config reads the Compose project as berth deploy does (the files, override
files, .env, --env-file, COMPOSE_FILE, COMPOSE_PROJECT_NAME, COMPOSE_PROFILES)
and prints the app, its version and the normalized spec berth would send to
the device, as JSON. Services with a build: section show the image tag berth
would build them as. Nothing is built or sent; the agent pins each image to
its image ID when it receives the release.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx := c.Context()
			p, err := pf.load(ctx)
			if err != nil {
				return err
			}
			v, err := buildVersion(ctx, p, version)
			if err != nil {
				return err
			}
			if len(p.Builds) > 0 {
				plan, err := build.NewPlan(p, v)
				if err != nil {
					return err
				}
				plan.Pin(p.Spec)
			}
			out := c.OutOrStdout()
			switch {
			case services:
				for _, n := range sortedServices(p.Spec) {
					fmt.Fprintln(out, n)
				}
				return nil
			case images:
				for _, n := range sortedServices(p.Spec) {
					fmt.Fprintln(out, p.Spec.Services[n].Image)
				}
				return nil
			}
			return printJSON(out, struct {
				App     string       `json:"app"`
				Version string       `json:"version"`
				Spec    release.Spec `json:"spec"`
			}{p.App, v.Describe, *p.Spec})
		},
	}
	pf.add(c, true)
	c.Flags().StringVar(&version, "version", "", "release version (default: git describe --tags --dirty --always)")
	c.Flags().BoolVar(&services, "services", false, "print the service names, one a line")
	c.Flags().BoolVar(&images, "images", false, "print the services' images, one a line")
	return c
}
