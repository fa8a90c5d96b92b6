package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/store"
)

// Config is `berth server`'s.
type Config struct {
	DataDir string // admin.token, the self-signed certificate, SQLite's file, content/
	Listen  string // host:port
	// DB is a PostgreSQL DSN (postgres://…), or empty for SQLite in DataDir.
	DB string

	TLSCert, TLSKey string   // a certificate and key (PEM) to serve
	TLSSelfSigned   bool     // or a self-signed one, made in DataDir
	TLSHosts        []string // more names and addresses for the self-signed certificate
	// InsecurePlainHTTP allows plain HTTP on an address that is not
	// loopback (behind a proxy that terminates TLS).
	InsecurePlainHTTP bool

	PollInterval time.Duration // see Options
	Logger       *slog.Logger
	// Pprof, if set, is a loopback address on which Go's profiler
	// (net/http/pprof) is served, for measuring the server under load.
	Pprof string
	// Ready, if set, is called once the server listens, with its base URL
	// and, with TLS, its certificate's fingerprint.
	Ready func(url, fingerprint string)
}

// shutdownGrace is how long requests under way get to finish on shutdown.
const shutdownGrace = 10 * time.Second

// Serve runs the fleet server until ctx ends, then shuts it down
// gracefully: long polls are answered at once, other requests get
// shutdownGrace to finish.
func Serve(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.DataDir == "" {
		return fmt.Errorf("no data directory: %w", release.ErrInvalid)
	}
	if (cfg.TLSCert == "") != (cfg.TLSKey == "") {
		return fmt.Errorf("give both --tls-cert and --tls-key, or neither: %w", release.ErrInvalid)
	}
	if cfg.TLSCert != "" && cfg.TLSSelfSigned {
		return fmt.Errorf("give --tls-cert and --tls-key, or --tls-self-signed, not both: %w", release.ErrInvalid)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}

	var tlsCert *tls.Certificate
	switch {
	case cfg.TLSCert != "":
		c, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return fmt.Errorf("TLS certificate: %w", err)
		}
		tlsCert = &c
	case cfg.TLSSelfSigned:
		host, _, _ := net.SplitHostPort(cfg.Listen)
		c, err := selfSigned(cfg.DataDir, certHosts(host, cfg.TLSHosts), cfg.TLSHosts, time.Now())
		if err != nil {
			return err
		}
		tlsCert = &c
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()
	addr := ln.Addr().(*net.TCPAddr)
	if tlsCert == nil && !addr.IP.IsLoopback() && !cfg.InsecurePlainHTTP {
		return fmt.Errorf("%s is not a loopback address, and plain HTTP would carry tokens in the clear: give --tls-cert and --tls-key, or --tls-self-signed (or --insecure-plain-http behind a proxy that terminates TLS): %w", addr, release.ErrInvalid)
	}

	if cfg.Pprof != "" {
		stop, err := servePprof(cfg.Pprof, log)
		if err != nil {
			return err
		}
		defer stop()
	}

	st, err := store.Open(ctx, cfg.DB, cfg.DataDir)
	if err != nil {
		return err
	}
	defer st.Close()
	if path, err := Bootstrap(ctx, st, cfg.DataDir, time.Now()); err != nil {
		return err
	} else if path != "" {
		log.Info("no admin had a token: one was made; it is in this file (keep it secret, log in with it, then make your own)", "path", path)
	}

	cs, err := OpenContent(filepath.Join(cfg.DataDir, "content"))
	if err != nil {
		return err
	}
	defer cs.Close()
	opts := Options{Logger: log, PollInterval: cfg.PollInterval, Content: cs}
	if st.Backend() == "postgres" {
		opts.ListenDSN = cfg.DB
	}
	s := New(st, opts)
	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() { _ = s.Run(runCtx) })
	defer wg.Wait()
	defer stopRun()

	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		// No WriteTimeout: long polls hold their answer up to a minute
		// by design; a dead peer is found by TCP keep-alive.
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		// HTTP/2 frames of 16 KiB (the protocol's least), not Go's 1 MiB:
		// an upload's body reaches the handler a whole frame at a time,
		// and Go's client sent frames of up to 512 KiB, all lost when a
		// cut fell inside one (TestReleaseUploadOverFaultyLink).
		HTTP2: &http.HTTP2Config{MaxReadFrameSize: 16 << 10},
	}
	url := "http://" + addr.String()
	fp := ""
	if tlsCert != nil {
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{*tlsCert}, MinVersion: tls.VersionTLS12}
		url = "https://" + addr.String()
		fp = fingerprint(*tlsCert)
	}
	serveErr := make(chan error, 1)
	wg.Go(func() {
		if tlsCert != nil {
			serveErr <- srv.ServeTLS(ln, "", "")
		} else {
			serveErr <- srv.Serve(ln)
		}
	})
	attrs := []any{"url", url, "store", st.Backend()}
	if fp != "" {
		attrs = append(attrs, "tls_fingerprint", fp)
	}
	log.Info("berth server listening", attrs...)
	if cfg.Ready != nil {
		cfg.Ready(url, fp)
	}

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down")
	stopRun() // long polls answer now
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("shut down: %w", err)
	} else if err != nil {
		srv.Close()
	}
	return nil
}
