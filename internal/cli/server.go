package cli

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-robotics/berth/internal/server"
)

func newServer() *cobra.Command {
	var cfg server.Config
	var debug bool
	c := &cobra.Command{
		Use:   "server [--data-dir DIR] [--listen ADDR] [--db postgres://…]",
		Short: "Run the fleet server: users, fleets, devices, releases, and devices' targets",
		Long: `server runs berth's fleet server: the HTTP+JSON API under /v1 (docs/api.md)
that operators, CI and devices talk to. It keeps its data in SQLite in the data
directory, or in PostgreSQL given --db (or BERTH_DB); several servers can share
one PostgreSQL.

On its first run (no admin holds a token) it makes an admin token and writes
it to DATA_DIR/admin.token, readable by its owner only; log in with it:
  berth login --server URL --token - < DATA_DIR/admin.token

TLS: --tls-cert and --tls-key, or --tls-self-signed to make a certificate in
the data directory and print its fingerprint for clients to pin. Plain HTTP
is allowed on loopback addresses only (or with --insecure-plain-http behind a
proxy that terminates TLS). SIGINT or SIGTERM shut it down gracefully.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if cfg.DB == "" {
				cfg.DB = os.Getenv("BERTH_DB") // not the flag's default: help would print it, password and all
			}
			level := slog.LevelInfo
			if debug {
				level = slog.LevelDebug
			}
			cfg.Logger = slog.New(slog.NewTextHandler(c.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			out := c.OutOrStdout()
			cfg.Ready = func(url, fp string) {
				fmt.Fprintf(out, "berth server: listening on %s\n", url)
				if fp != "" {
					fmt.Fprintf(out, "TLS certificate fingerprint: %s\n  berth login --server %s --tls-fingerprint %s --token …\n", fp, url, fp)
				}
			}
			return server.Serve(c.Context(), cfg)
		},
	}
	c.Flags().StringVar(&cfg.DataDir, "data-dir", ".berth/server", "data directory: SQLite's file, admin.token, the self-signed certificate")
	c.Flags().StringVar(&cfg.Listen, "listen", "127.0.0.1:7070", "address to listen on")
	c.Flags().StringVar(&cfg.DB, "db", "", "PostgreSQL DSN, postgres://… (env BERTH_DB; default: SQLite in the data directory)")
	c.Flags().StringVar(&cfg.TLSCert, "tls-cert", "", "TLS certificate (PEM)")
	c.Flags().StringVar(&cfg.TLSKey, "tls-key", "", "TLS private key (PEM)")
	c.Flags().BoolVar(&cfg.TLSSelfSigned, "tls-self-signed", false, "make (once) and serve a self-signed certificate kept in the data directory; its fingerprint is printed")
	c.Flags().StringSliceVar(&cfg.TLSHosts, "tls-host", nil, "another host name or address for the self-signed certificate")
	c.Flags().BoolVar(&cfg.InsecurePlainHTTP, "insecure-plain-http", false, "serve plain HTTP on an address that is not loopback (only behind a proxy that terminates TLS)")
	c.Flags().DurationVar(&cfg.PollInterval, "poll-interval", 30*time.Second, "how often devices poll; a device not seen for three of these is offline")
	c.Flags().BoolVar(&debug, "debug", false, "log every request, devices' polls included")
	c.Flags().StringVar(&cfg.Pprof, "pprof", "", "serve Go's profiler (net/http/pprof) on this loopback address, e.g. 127.0.0.1:6060, to measure the server")
	c.Flags().MarkHidden("pprof")
	return c
}
