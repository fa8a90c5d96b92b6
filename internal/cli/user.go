package cli

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
)

func newUser() *cobra.Command {
	var sf serverFlags
	var asJSON bool
	c := &cobra.Command{
		Use:   "user",
		Short: "Manage a fleet server's users and their API tokens (admin)",
	}
	addServerFlags(c, &sf)

	var role string
	create := &cobra.Command{
		Use:   "create NAME --role admin|deployer|viewer [--json]",
		Short: "Add a user; then give it a token with berth user token",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return withClient(&sf, func(cl *serverapi.Client) error {
				u, err := cl.CreateUser(c.Context(), args[0], role)
				if err != nil {
					return fmt.Errorf("create user %s: %w", args[0], err)
				}
				if asJSON {
					return printJSON(c.OutOrStdout(), u)
				}
				fmt.Fprintf(c.OutOrStdout(), "created user %s (%s, %s)\n", u.Name, u.Role, u.ID)
				return nil
			})
		},
	}
	create.Flags().StringVar(&role, "role", serverapi.RoleViewer, "admin (everything), deployer (releases, devices) or viewer (read only)")
	create.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	list := &cobra.Command{
		Use:   "list [--json]",
		Short: "List the users",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return withClient(&sf, func(cl *serverapi.Client) error {
				us, err := cl.Users(c.Context())
				if err != nil {
					return fmt.Errorf("list users: %w", err)
				}
				if asJSON {
					return printJSON(c.OutOrStdout(), nonNil(us))
				}
				tw := tabwriter.NewWriter(c.OutOrStdout(), 2, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tROLE\tID\tCREATED")
				for _, u := range us {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", u.Name, u.Role, u.ID, u.Created.Local().Format("2006-01-02 15:04"))
				}
				return tw.Flush()
			})
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	var name string
	var expires time.Duration
	token := &cobra.Command{
		Use:   "token USER [--name NAME] [--expires-in 720h] [--json]",
		Short: "Make an API token for a user; prints it (shown this once)",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return withClient(&sf, func(cl *serverapi.Client) error {
				t, err := cl.CreateToken(c.Context(), args[0], serverapi.CreateTokenRequest{Name: name, ExpiresIn: release.Duration(expires)})
				if err != nil {
					return fmt.Errorf("token for %s: %w", args[0], err)
				}
				if asJSON {
					return printJSON(c.OutOrStdout(), t)
				}
				fmt.Fprintf(c.OutOrStdout(), "token %s for %s (shown this once):\n  %s\n", t.ID, args[0], t.Secret)
				return nil
			})
		},
	}
	token.Flags().StringVar(&name, "name", "", "what the token is for (ci, laptop, …)")
	token.Flags().DurationVar(&expires, "expires-in", 0, "expire the token after this long (default: never)")
	token.Flags().BoolVar(&asJSON, "json", false, "print JSON (the secret is \"token\")")

	c.AddCommand(create, list, token)
	return c
}
