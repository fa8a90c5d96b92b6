// Command oci runs the OCI distribution-spec conformance suite against
// berth's two registry endpoints, both over internal/registry: the fleet
// server's /v2 (where CI's `docker push` goes) and the CLI's loopback
// endpoint that the local engine pushes to during `berth push`. It is an
// external check: the suite is not part of berth; build it once from
// github.com/opencontainers/distribution-spec (its conformance/ directory):
//
//	cd distribution-spec/conformance && go test -c -o /tmp/conformance.test .
//	go run ./bench/oci -suite /tmp/conformance.test     # from the repository root
//
// Each endpoint is tested twice: with the suite's defaults (every API), and
// with only the push workflow (OCI_API_PULL and the delete, tag-list and
// referrers APIs off). Digests are SHA-256 only in berth, so sha512 data
// is off in both (OCI_DATA_SHA512=false); -sha512 turns it on. The counts
// go to stdout as a markdown table, each run's full output beside it in
// -out.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/localreg"
	"github.com/berth-robotics/berth/internal/server"
)

func main() {
	suite := flag.String("suite", "", "the conformance test binary (go test -c in distribution-spec/conformance)")
	out := flag.String("out", "", "directory for each run's output (default: a temporary one)")
	sha512 := flag.Bool("sha512", false, "leave the suite's sha512 data on")
	flag.Parse()
	if *suite == "" {
		fmt.Fprintln(os.Stderr, "oci: give -suite (see go doc ./bench/oci)")
		os.Exit(2)
	}
	if err := run(*suite, *out, *sha512); err != nil {
		fmt.Fprintln(os.Stderr, "oci:", err)
		os.Exit(1)
	}
}

func run(suite, out string, sha512 bool) error {
	tmp, err := os.MkdirTemp("", "berth-oci-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if out == "" {
		out = filepath.Join(tmp, "results")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The fleet server, in this process.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := ln.Addr().String()
	ln.Close()
	dataDir := filepath.Join(tmp, "server")
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- server.Serve(ctx, server.Config{DataDir: dataDir, Listen: addr, Ready: func(string, string) { close(ready) }})
	}()
	select {
	case <-ready:
	case err := <-done:
		return fmt.Errorf("server: %w", err)
	case <-time.After(time.Minute):
		return fmt.Errorf("the server did not start")
	}
	token, err := os.ReadFile(filepath.Join(dataDir, "admin.token"))
	if err != nil {
		return err
	}

	// The CLI's loopback endpoint, over a cache of its own.
	cache, err := content.Open(filepath.Join(tmp, "cache"))
	if err != nil {
		return err
	}
	lr, err := localreg.Listen(cache, filepath.Join(tmp, "cache", "localreg.json"), 0)
	if err != nil {
		return err
	}
	defer lr.Close()

	fmt.Println("| endpoint | APIs | pass | fail | skip | disabled | total |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for _, ep := range []struct{ name, addr, user, pass string }{
		{"fleet server", addr, "admin", strings.TrimSpace(string(token))},
		{"CLI loopback endpoint", lr.Addr(), "", ""},
	} {
		for _, mode := range []string{"all", "push"} {
			dir := filepath.Join(out, strings.ReplaceAll(ep.name, " ", "-")+"-"+mode)
			counts, err := conformance(ctx, suite, dir, ep.addr, ep.user, ep.pass, mode == "push", sha512)
			if err != nil {
				return fmt.Errorf("%s (%s): %w", ep.name, mode, err)
			}
			fmt.Printf("| %s | %s | %s | %s | %s | %s | %s |\n", ep.name, mode, counts["Pass"], counts["FAIL"], counts["Skip"], counts["Disabled"], counts["Total"])
		}
	}
	fmt.Printf("\nfull output: %s\n", out)
	cancel()
	<-done
	return nil
}

var countLine = regexp.MustCompile(`^\s+(Pass|FAIL|Skip|Disabled|Error|Total)\.+:\s+(\d+)`)

// conformance runs the suite against one registry and returns its counts.
func conformance(ctx context.Context, suite, dir, addr, user, pass string, pushOnly, sha512 bool) (map[string]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, suite)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "OCI_REGISTRY="+addr, "OCI_TLS=disabled", "OCI_USERNAME="+user, "OCI_PASSWORD="+pass,
		"OCI_REPO1=conformance/repo1", "OCI_REPO2=conformance/repo2", "OCI_RESULTS_DIR="+filepath.Join(dir, "results"), "OCI_LOG=error")
	if !sha512 {
		cmd.Env = append(cmd.Env, "OCI_DATA_SHA512=false")
	}
	if pushOnly {
		cmd.Env = append(cmd.Env, "OCI_API_PULL=false", "OCI_API_BLOBS_DELETE=false", "OCI_API_MANIFESTS_DELETE=false",
			"OCI_API_TAGS_DELETE=false", "OCI_API_TAGS_LIST=false", "OCI_API_REFERRER=false")
	}
	b, _ := cmd.CombinedOutput() // the suite exits non-zero on any failure
	if err := os.WriteFile(filepath.Join(dir, "out.txt"), b, 0o644); err != nil {
		return nil, err
	}
	counts := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		if m := countLine.FindStringSubmatch(sc.Text()); m != nil {
			counts[m[1]] = m[2]
		}
	}
	if counts["Total"] == "" {
		return nil, fmt.Errorf("the suite printed no counts:\n%s", b)
	}
	return counts, nil
}
