package cli

import "github.com/spf13/cobra"

func newInstall() *cobra.Command   { return &cobra.Command{Use: "install", Hidden: true} }
func newUninstall() *cobra.Command { return &cobra.Command{Use: "uninstall", Hidden: true} }
