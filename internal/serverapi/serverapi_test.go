package serverapi

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLean: the agent's fleet mode will import this package, so it must
// not bring the server, the store or SQL onto robots.
func TestLean(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"database/sql", "github.com/jackc/", "modernc.org/", "internal/server", "internal/store", "internal/cli", "github.com/spf13/"} {
			if strings.Contains(dep, banned) && dep != "github.com/berth-robotics/berth/internal/serverapi" {
				t.Errorf("serverapi links %s", dep)
			}
		}
	}
}

func TestParseFingerprint(t *testing.T) {
	hex := strings.Repeat("ab", 32)
	for _, in := range []string{hex, "sha256:" + hex, "SHA256:" + strings.ToUpper(hex), strings.TrimSuffix(strings.Repeat("AB:", 32), ":")} {
		if got, err := ParseFingerprint(in); err != nil || got != "sha256:"+hex {
			t.Errorf("ParseFingerprint(%q) = %q, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "sha256:", hex[:62], hex + "ab", "zz" + hex[2:]} {
		if _, err := ParseFingerprint(in); err == nil {
			t.Errorf("ParseFingerprint(%q): no error", in)
		}
	}
}
