package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/berth-robotics/berth/internal/atomicfile"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/signing"
)

// Key file names `berth keys generate` writes.
const (
	signKeyFile = "berth-release.key"
	pubKeyFile  = "berth-release.pub"
)

// newKeys is `berth keys`: release signing keys on this machine.
func newKeys() *cobra.Command {
	c := &cobra.Command{
		Use:   "keys",
		Short: "Make ed25519 key pairs that sign fleet releases",
	}
	var dir string
	gen := &cobra.Command{
		Use:   "generate [--out DIR]",
		Short: "Write a new release signing key pair; prints the public key",
		Long: `generate writes an ed25519 key pair: DIR/` + signKeyFile + `, the private key
(PEM "BERTH ED25519 PRIVATE KEY" holding the 32-byte seed, mode 0600), and
DIR/` + pubKeyFile + `, the public key as one line "ed25519:<base64>". It never
overwrites a key.

Register the public key with a fleet (berth fleet keys add FLEET PUBKEY): the
fleet then takes only releases signed with the private key (berth release
create --sign-key FILE). Give it to devices at provisioning too (berthd
--trusted-key), so that they refuse releases it did not sign even if the
server is not to be trusted.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			s, err := signing.Generate()
			if err != nil {
				return err
			}
			priv, pub := filepath.Join(dir, signKeyFile), filepath.Join(dir, pubKeyFile)
			for _, p := range []string{priv, pub} {
				if _, err := os.Stat(p); err == nil {
					return fmt.Errorf("%s exists; nothing was written: give another --out, or remove it if it is unused", p)
				} else if !errors.Is(err, fs.ErrNotExist) {
					return err
				}
			}
			if err := atomicfile.Write(priv, s.EncodePrivate()); err != nil { // mode 0600
				return fmt.Errorf("write the private key: %w", err)
			}
			if err := os.WriteFile(pub, []byte(s.Public().String()+"\n"), 0o644); err != nil {
				return fmt.Errorf("write the public key: %w", err)
			}
			out := c.OutOrStdout()
			fmt.Fprintln(out, s.Public())
			fmt.Fprintf(out, "key id %s\nprivate key: %s (keep it secret; berth release create --sign-key)\npublic key:  %s (berth fleet keys add FLEET; berthd --trusted-key)\n", s.Public().ID(), priv, pub)
			return nil
		},
	}
	gen.Flags().StringVar(&dir, "out", ".", "the directory to write the key files to")
	c.AddCommand(gen)
	return c
}

// newFleetKeys is `berth fleet keys`: a fleet's release signing keys.
func newFleetKeys(sf *serverFlags) *cobra.Command {
	c := &cobra.Command{
		Use:   "keys",
		Short: "A fleet's release signing keys: with one, the fleet takes only signed releases",
	}
	var asJSON bool
	add := &cobra.Command{
		Use:   "add FLEET PUBKEY",
		Short: "Register a public key (ed25519:…, or a file holding one) that signs the fleet's releases",
		Args:  cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			pub := args[1]
			if b, err := os.ReadFile(pub); err == nil {
				pub = string(b)
			}
			k, err := signing.ParsePublicKey(pub)
			if err != nil {
				return err
			}
			return withClient(sf, func(cl *serverapi.Client) error {
				sk, err := cl.AddSigningKey(c.Context(), args[0], k.String())
				if err != nil {
					return fmt.Errorf("add a signing key to fleet %s: %w", args[0], err)
				}
				fmt.Fprintf(c.OutOrStdout(), "fleet %s: key %s added; the fleet now takes only releases signed by one of its keys\n", args[0], sk.ID)
				return nil
			})
		},
	}
	list := &cobra.Command{
		Use:   "list FLEET [--json]",
		Short: "List a fleet's signing keys",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return withClient(sf, func(cl *serverapi.Client) error {
				ks, err := cl.SigningKeys(c.Context(), args[0])
				if err != nil {
					return fmt.Errorf("signing keys of fleet %s: %w", args[0], err)
				}
				if asJSON {
					return printJSON(c.OutOrStdout(), nonNil(ks))
				}
				if len(ks) == 0 {
					fmt.Fprintf(c.OutOrStdout(), "fleet %s has no signing keys: it takes unsigned releases\n", args[0])
					return nil
				}
				tw := tabwriter.NewWriter(c.OutOrStdout(), 2, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tPUBLIC KEY\tADDED\tBY")
				for _, k := range ks {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", k.ID, k.PublicKey, k.Created.Local().Format("2006-01-02 15:04"), k.CreatedBy)
				}
				return tw.Flush()
			})
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	remove := &cobra.Command{
		Use:   "remove FLEET KEY",
		Short: "Remove a signing key (by ID or public key); devices that pinned it keep trusting it",
		Args:  cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			return withClient(sf, func(cl *serverapi.Client) error {
				if err := cl.RemoveSigningKey(c.Context(), args[0], args[1]); err != nil {
					return fmt.Errorf("remove signing key %s of fleet %s: %w", args[1], args[0], err)
				}
				fmt.Fprintf(c.OutOrStdout(), "fleet %s: key %s removed\n", args[0], args[1])
				return nil
			})
		},
	}
	c.AddCommand(add, list, remove)
	return c
}
