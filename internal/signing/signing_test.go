package signing

import (
	"strings"
	"testing"
)

func TestMessage(t *testing.T) {
	got := string(Message("robots", "sha256:ab"))
	want := "berth-release-signature-v1\nfleet robots\nrelease sha256:ab\n"
	if got != want {
		t.Fatalf("Message = %q, want %q", got, want)
	}
}

func TestSignVerify(t *testing.T) {
	s, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	other, _ := Generate()
	s2, err := DecodePrivate(s.EncodePrivate())
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ParsePublicKey(s2.Public().String())
	if err != nil {
		t.Fatal(err)
	}
	sig := s.Sign("robots", "sha256:ab")
	tests := []struct {
		name, fleet, id, keyID, sig string
		keys                        []PublicKey
		want                        string // "" for valid
	}{
		{"good", "robots", "sha256:ab", pub.ID(), sig, []PublicKey{pub}, ""},
		{"good-among-several", "robots", "sha256:ab", pub.ID(), sig, []PublicKey{other.Public(), pub}, ""},
		{"unsigned", "robots", "sha256:ab", "", "", []PublicKey{pub}, "not signed"},
		{"other-fleet", "drones", "sha256:ab", pub.ID(), sig, []PublicKey{pub}, "does not verify"},
		{"other-release", "robots", "sha256:cd", pub.ID(), sig, []PublicKey{pub}, "does not verify"},
		{"untrusted-key", "robots", "sha256:ab", pub.ID(), sig, []PublicKey{other.Public()}, "not trusted"},
		{"forged-key-id", "robots", "sha256:ab", other.Public().ID(), other.Sign("robots", "sha256:ab")[:10] + sig[10:], []PublicKey{other.Public()}, "does not verify"},
		{"garbage", "robots", "sha256:ab", pub.ID(), "!!", []PublicKey{pub}, "does not verify"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := VerifyAny(tt.keys, tt.fleet, tt.id, tt.keyID, tt.sig)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("VerifyAny: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("VerifyAny = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestParsePublicKey(t *testing.T) {
	for _, s := range []string{"", "ed25519:", "ssh-ed25519 AAAA", "ed25519:AAAA", "rsa:" + strings.Repeat("A", 44)} {
		if _, err := ParsePublicKey(s); err == nil {
			t.Errorf("ParsePublicKey(%q) = nil error", s)
		}
	}
	if _, err := DecodePrivate([]byte("nope")); err == nil {
		t.Error("DecodePrivate(garbage) = nil error")
	}
}
