package signing

import (
	"crypto/ed25519"
	"testing"
)

// FuzzVerify: keys and signatures come from the fleet server and from
// flags. Parsing and verifying never panic, and nothing verifies that the
// key did not sign: a signature made for one (fleet, release) verifies for
// another only if the signed messages are the same bytes.
func FuzzVerify(f *testing.F) {
	s := &Signer{priv: ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))}
	const fleet, rel = "robots", "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	good := s.Sign(fleet, rel)
	f.Add(s.Public().String(), fleet, rel, good)
	f.Add("ed25519:", "", "", "")
	f.Add("ed25519:AAAA", "robots\nrelease x", "y", good)
	f.Fuzz(func(t *testing.T, key, fl, r, sig string) {
		if k, err := ParsePublicKey(key); err == nil {
			_ = Verify(k, fl, r, sig)
			_ = k.ID()
		}
		if Verify(s.Public(), fl, r, sig) == nil && string(Message(fl, r)) != string(Message(fleet, rel)) {
			// Only the one signature made here exists; anything else
			// verifying would be a forgery.
			if sig != s.Sign(fl, r) {
				t.Fatalf("a signature verifies for (%q, %q) that the key did not make", fl, r)
			}
		}
	})
}
