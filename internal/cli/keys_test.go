package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-robotics/berth/internal/signing"
)

// TestSigningCLI: keys generate, fleet keys add/list/remove, and release
// create --sign-key against `berth server`: a fleet with a key refuses
// unsigned and wrongly signed releases and takes signed ones.
func TestSigningCLI(t *testing.T) {
	cliEnv(t)
	t.Setenv("BERTH_SIGN_KEY", "")
	url, dir, _ := startServer(t)
	must(t, "login", "--server", url, "--token", strings.TrimSpace(readFileT(t, filepath.Join(dir, "admin.token"))))
	must(t, "fleet", "create", "lab")

	keys := t.TempDir()
	good, other := filepath.Join(keys, "good"), filepath.Join(keys, "other")
	out := must(t, "keys", "generate", "--out", good)
	pub, err := signing.ParsePublicKey(strings.SplitN(out, "\n", 2)[0])
	if err != nil || !strings.Contains(out, filepath.Join(good, "berth-release.key")) {
		t.Fatalf("keys generate: %v\n%s", err, out)
	}
	if fi, err := os.Stat(filepath.Join(good, "berth-release.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("private key: %v, %v; want mode 0600", fi, err)
	}
	if _, errOut, code := berth(t, "keys", "generate", "--out", good); code == 0 || !strings.Contains(errOut, "exists") {
		t.Errorf("generate over a key: exit %d, %s", code, errOut)
	}
	must(t, "keys", "generate", "--out", other)

	if out := must(t, "fleet", "keys", "list", "lab"); !strings.Contains(out, "no signing keys") {
		t.Errorf("fleet keys list, none:\n%s", out)
	}
	if out := must(t, "fleet", "keys", "add", "lab", filepath.Join(good, "berth-release.pub")); !strings.Contains(out, pub.ID()) {
		t.Errorf("fleet keys add:\n%s", out)
	}
	if out := must(t, "fleet", "keys", "list", "lab"); !strings.Contains(out, pub.String()) {
		t.Errorf("fleet keys list:\n%s", out)
	}

	compose := filepath.Join(t.TempDir(), "compose.yaml")
	os.WriteFile(compose, []byte("services:\n  web:\n    image: web:1\n"), 0o644)
	create := func(extra ...string) (string, string, int) {
		return berth(t, append([]string{"release", "create", "--no-upload", "-f", compose, "--fleet", "lab", "--app", "hello", "--version", "v1"}, extra...)...)
	}
	if _, errOut, code := create(); code == 0 || !strings.Contains(errOut, "not signed") || !strings.Contains(errOut, "--sign-key") {
		t.Errorf("unsigned: exit %d, %s", code, errOut)
	}
	if _, errOut, code := create("--sign-key", filepath.Join(other, "berth-release.key")); code == 0 || !strings.Contains(errOut, "not trusted") {
		t.Errorf("signed by another key: exit %d, %s", code, errOut)
	}
	if out, errOut, code := create("--sign-key", filepath.Join(good, "berth-release.key")); code != 0 || !strings.Contains(out, "signed by key "+pub.ID()) {
		t.Errorf("signed: exit %d, %s%s", code, out, errOut)
	}
	t.Setenv("BERTH_SIGN_KEY", filepath.Join(good, "berth-release.key"))
	if out, errOut, code := berth(t, "release", "create", "--no-upload", "-f", compose, "--fleet", "lab", "--app", "hello", "--version", "v2"); code != 0 || !strings.Contains(out, "signed by key") {
		t.Errorf("signed through BERTH_SIGN_KEY: exit %d, %s%s", code, out, errOut)
	}
	t.Setenv("BERTH_SIGN_KEY", "")

	must(t, "fleet", "keys", "remove", "lab", pub.ID())
	if _, errOut, code := berth(t, "fleet", "keys", "remove", "lab", pub.ID()); code == 0 || !strings.Contains(errOut, "no signing key") {
		t.Errorf("remove again: exit %d, %s", code, errOut)
	}
	if out, errOut, code := create("--version", "v3"); code != 0 {
		t.Errorf("unsigned, no keys left: exit %d, %s%s", code, out, errOut)
	}
}
