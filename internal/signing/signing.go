// Package signing signs fleet releases with ed25519 and verifies them.
//
// What is signed is the canonical byte string Message(fleet, releaseID):
//
//	berth-release-signature-v1\n
//	fleet <fleet name>\n
//	release <release ID>\n
//
// The release ID is the digest of the release's app, version and spec
// (release.Seal), so the signature covers all three; the fleet binds it to
// one fleet. A public key is written "ed25519:" and the standard base64 of
// its 32 bytes; its key ID is the first 16 hex digits of the SHA-256 of those
// bytes. A private key file is PEM, type "BERTH ED25519 PRIVATE KEY",
// holding the 32-byte seed. Standard library only: berthd links it.
package signing

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/berth-robotics/berth/internal/release"
)

// pemType is the PEM block type of a private key file.
const pemType = "BERTH ED25519 PRIVATE KEY"

const keyPrefix = "ed25519:"

// ErrBadSignature says a signature does not verify.
var ErrBadSignature = errors.New("signature does not verify")

// PublicKey is an ed25519 public key.
type PublicKey ed25519.PublicKey

// String is the key's text form, "ed25519:<base64>".
func (k PublicKey) String() string { return keyPrefix + base64.StdEncoding.EncodeToString(k) }

// ID is the key's ID: 16 hex digits of the SHA-256 of its bytes.
func (k PublicKey) ID() string {
	sum := sha256.Sum256(k)
	return hex.EncodeToString(sum[:8])
}

// ParsePublicKey reads a key's text form.
func ParsePublicKey(s string) (PublicKey, error) {
	s = strings.TrimSpace(s)
	rest, ok := strings.CutPrefix(s, keyPrefix)
	b, err := base64.StdEncoding.DecodeString(rest)
	if !ok || err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("public key %q: want ed25519: and the base64 of 32 bytes (berth keys generate prints one): %w", s, release.ErrInvalid)
	}
	return PublicKey(b), nil
}

// Message is the canonical byte string a release signature covers.
func Message(fleet, releaseID string) []byte {
	return []byte("berth-release-signature-v1\nfleet " + fleet + "\nrelease " + releaseID + "\n")
}

// Signer signs releases with a private key.
type Signer struct {
	priv ed25519.PrivateKey
}

// Public returns the signer's public key.
func (s *Signer) Public() PublicKey { return PublicKey(s.priv.Public().(ed25519.PublicKey)) }

// Sign signs a release of a fleet; the signature is standard base64.
func (s *Signer) Sign(fleet, releaseID string) string {
	return base64.StdEncoding.EncodeToString(ed25519.Sign(s.priv, Message(fleet, releaseID)))
}

// Verify checks a signature (standard base64) of a release of a fleet.
func Verify(k PublicKey, fleet, releaseID, sig string) error {
	b, err := base64.StdEncoding.DecodeString(sig)
	if err != nil || len(b) != ed25519.SignatureSize || !ed25519.Verify(ed25519.PublicKey(k), Message(fleet, releaseID), b) {
		return ErrBadSignature
	}
	return nil
}

// VerifyAny checks a signature made with the key keyID against keys: nil if
// one of them has that ID and the signature verifies with it.
func VerifyAny(keys []PublicKey, fleet, releaseID, keyID, sig string) error {
	if sig == "" {
		return fmt.Errorf("release %s is not signed", release.ShortID(releaseID))
	}
	for _, k := range keys {
		if k.ID() == keyID {
			if err := Verify(k, fleet, releaseID, sig); err != nil {
				return fmt.Errorf("release %s: the signature by key %s does not verify", release.ShortID(releaseID), keyID)
			}
			return nil
		}
	}
	return fmt.Errorf("release %s is signed by key %q, which is not trusted", release.ShortID(releaseID), keyID)
}

// Generate makes a new key pair.
func Generate() (*Signer, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return &Signer{priv: priv}, nil
}

// EncodePrivate is the private key file's content.
func (s *Signer) EncodePrivate() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: s.priv.Seed()})
}

// DecodePrivate reads a private key file's content.
func DecodePrivate(b []byte) (*Signer, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != pemType || len(blk.Bytes) != ed25519.SeedSize {
		return nil, fmt.Errorf("not a berth signing key (want a PEM %q block of %d bytes; berth keys generate writes one): %w", pemType, ed25519.SeedSize, release.ErrInvalid)
	}
	return &Signer{priv: ed25519.NewKeyFromSeed(blk.Bytes)}, nil
}

// LoadPrivate reads a private key file.
func LoadPrivate(path string) (*Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read signing key: %w", err)
	}
	s, err := DecodePrivate(b)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	return s, nil
}
