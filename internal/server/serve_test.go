package server_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/server"
	"github.com/berth-robotics/berth/internal/serverapi"
)

// serving is a server run by Serve, as `berth server` runs it.
type serving struct {
	url, fingerprint string
	logs             *logBuffer
	stop             func() error // cancels and waits; Serve's error
}

func serve(t *testing.T, cfg server.Config) *serving {
	t.Helper()
	s := &serving{logs: &logBuffer{}}
	cfg.Logger = slog.New(slog.NewTextHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ready := make(chan struct{})
	cfg.Ready = func(url, fp string) {
		s.url, s.fingerprint = url, fp
		close(ready)
	}
	sctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- server.Serve(sctx, cfg) }()
	select {
	case <-ready:
	case err := <-errc:
		cancel()
		t.Fatalf("Serve: %v", err)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("Serve did not get ready")
	}
	stopped := false
	var err error
	s.stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			err = <-errc
		}
		return err
	}
	t.Cleanup(func() { s.stop() })
	return s
}

// TestServeTLS: a self-signed certificate is made once and kept, its
// fingerprint logged and pinnable; the admin token is written 0600, its
// path logged and never the token; a long poll under way when the server
// stops is answered at once, and the server stops cleanly.
func TestServeTLS(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		dsn, dir := b.db(t)
		cfg := server.Config{DataDir: dir, Listen: "127.0.0.1:0", DB: dsn, TLSSelfSigned: true, TLSHosts: []string{"robots.example"}}
		s := serve(t, cfg)
		if !strings.HasPrefix(s.url, "https://127.0.0.1:") || !strings.HasPrefix(s.fingerprint, "sha256:") {
			t.Fatalf("url %s, fingerprint %s", s.url, s.fingerprint)
		}
		fi, err := os.Stat(filepath.Join(dir, "admin.token"))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("admin.token: %v, %v", fi, err)
		}
		if fi, err := os.Stat(filepath.Join(dir, server.SelfSignedKey)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("the certificate's key: %v, %v", fi, err)
		}
		token := strings.TrimSpace(readFile(t, dir, "admin.token"))
		logs := s.logs.String()
		if strings.Contains(logs, token) {
			t.Error("the log holds the admin token")
		}
		if !strings.Contains(logs, filepath.Join(dir, "admin.token")) || !strings.Contains(logs, s.fingerprint) {
			t.Errorf("the log names neither the token's file nor the fingerprint:\n%s", logs)
		}

		pinned, err := serverapi.New(s.url, serverapi.Options{Token: token, Fingerprint: strings.ToUpper(strings.TrimPrefix(s.fingerprint, "sha256:"))})
		if err != nil {
			t.Fatal(err)
		}
		defer pinned.Close()
		if who, err := pinned.Whoami(ctx); err != nil || who.User.Role != "admin" {
			t.Fatalf("whoami over pinned TLS: %+v, %v", who, err)
		}
		wrong, _ := serverapi.New(s.url, serverapi.Options{Token: token, Fingerprint: "sha256:" + strings.Repeat("0", 64)})
		if _, err := wrong.Whoami(ctx); err == nil || !strings.Contains(err.Error(), "fingerprint") {
			t.Errorf("a wrong pin: %v, want a refusal naming the fingerprint", err)
		}
		unpinned, _ := serverapi.New(s.url, serverapi.Options{Token: token})
		if _, err := unpinned.Whoami(ctx); err == nil {
			t.Error("an unknown self-signed certificate was trusted")
		}

		// A long poll under way when the server stops is answered at once.
		f, err := pinned.CreateFleet(ctx, "lab")
		if err != nil {
			t.Fatal(err)
		}
		anon, _ := serverapi.New(s.url, serverapi.Options{Fingerprint: s.fingerprint})
		reg, err := anon.Register(ctx, serverapi.RegisterRequest{ProvisioningKey: f.ProvisioningKey, Name: "robot-1"})
		if err != nil {
			t.Fatal(err)
		}
		dev, _ := serverapi.New(s.url, serverapi.Options{Token: reg.Token, Fingerprint: s.fingerprint})
		first, _, err := dev.Target(ctx, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		polled := make(chan error, 1)
		go func() {
			_, changed, err := dev.Target(ctx, first.Version, 60*time.Second)
			if err == nil && changed {
				err = context.Canceled
			}
			polled <- err
		}()
		time.Sleep(300 * time.Millisecond)
		start := time.Now()
		if err := s.stop(); err != nil {
			t.Fatalf("Serve: %v", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("shutdown took %s with a long poll under way", d)
		}
		select {
		case err := <-polled:
			if err != nil {
				t.Errorf("the long poll at shutdown: %v, want 304", err)
			}
		case <-time.After(3 * time.Second):
			t.Error("the long poll was not answered at shutdown")
		}
		for _, secret := range []string{token, f.ProvisioningKey, reg.Token} {
			if strings.Contains(s.logs.String(), secret) {
				t.Errorf("the log holds a secret (%.6s…)", secret)
			}
		}

		// Again: the same certificate, the same token, no new admin.token.
		again := serve(t, cfg)
		if again.fingerprint != s.fingerprint {
			t.Errorf("the fingerprint changed across restarts: %s, was %s", again.fingerprint, s.fingerprint)
		}
		if got := strings.TrimSpace(readFile(t, dir, "admin.token")); got != token {
			t.Error("a restart wrote a new admin token")
		}
		c2, _ := serverapi.New(again.url, serverapi.Options{Token: token, Fingerprint: s.fingerprint})
		if fs, err := c2.Fleets(ctx); err != nil || len(fs) != 1 {
			t.Errorf("after the restart: %+v, %v", fs, err)
		}
		c2.Close()
		if err := again.stop(); err != nil {
			t.Error(err)
		}

		// The kept certificate served as --tls-cert/--tls-key.
		cfg = server.Config{DataDir: dir, Listen: "127.0.0.1:0", DB: dsn,
			TLSCert: filepath.Join(dir, server.SelfSignedCert), TLSKey: filepath.Join(dir, server.SelfSignedKey)}
		given := serve(t, cfg)
		if given.fingerprint != s.fingerprint {
			t.Errorf("--tls-cert: fingerprint %s, want %s", given.fingerprint, s.fingerprint)
		}
	})
}

// TestServeRefuses: plain HTTP off loopback, and half a TLS configuration.
func TestServeRefuses(t *testing.T) {
	dir := t.TempDir()
	for name, cfg := range map[string]server.Config{
		"PlainHTTPOffLoopback": {DataDir: dir, Listen: "0.0.0.0:0"},
		"CertWithoutKey":       {DataDir: dir, Listen: "127.0.0.1:0", TLSCert: "x.crt"},
		"NoDataDir":            {Listen: "127.0.0.1:0"},
	} {
		t.Run(name, func(t *testing.T) {
			err := server.Serve(ctx, cfg)
			if err == nil {
				t.Fatal("Serve ran")
			}
			if name == "PlainHTTPOffLoopback" && !strings.Contains(err.Error(), "--tls-self-signed") {
				t.Errorf("the refusal does not say what to do: %v", err)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "berth.db")); err == nil {
		t.Error("a refused start made a database")
	}
}
