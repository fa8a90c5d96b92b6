package server_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/signing"
)

// signed is req signed by s for fleet.
func signed(s *signing.Signer, fleet string, req serverapi.CreateReleaseRequest) serverapi.CreateReleaseRequest {
	req.KeyID = s.Public().ID()
	req.Signature = s.Sign(fleet, req.Release().ID)
	return req
}

// TestSignedReleases: a fleet with a signing key refuses unsigned and
// wrongly signed releases and takes signed ones; devices get the signature
// in their target and the keys at registration.
func TestSignedReleases(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		e := newEnv(t, b, envOptions{})
		lab := e.fleet("lab")
		e.fleet("field")
		deployer := e.client(e.user("dan", serverapi.RoleDeployer))
		key, _ := signing.Generate()
		other, _ := signing.Generate()

		// Only admins manage keys; bad keys are refused.
		if _, err := deployer.AddSigningKey(ctx, "lab", key.Public().String()); status(err) != http.StatusForbidden {
			t.Errorf("a deployer adds a key: %v, want 403", err)
		}
		if _, err := e.admin.AddSigningKey(ctx, "lab", "ssh-ed25519 AAAA"); status(err) != http.StatusBadRequest {
			t.Errorf("a malformed key: %v, want 400", err)
		}
		// Before any key: unsigned releases go.
		req := serverapi.CreateReleaseRequest{App: "app", Version: "v1", Spec: spec("web:v1", "db:1")}
		if _, _, err := deployer.CreateRelease(ctx, "lab", req); err != nil {
			t.Fatalf("unsigned, no keys: %v", err)
		}
		k, err := e.admin.AddSigningKey(ctx, "lab", key.Public().String())
		if err != nil || k.ID != key.Public().ID() || k.CreatedBy != "user:admin" {
			t.Fatalf("add key: %+v, %v", k, err)
		}
		if _, err := e.admin.AddSigningKey(ctx, "lab", key.Public().String()); status(err) != http.StatusConflict {
			t.Errorf("the same key twice: %v, want 409", err)
		}
		ks, err := deployer.SigningKeys(ctx, "lab")
		if err != nil || len(ks) != 1 || ks[0].PublicKey != key.Public().String() {
			t.Errorf("keys: %+v, %v", ks, err)
		}

		audits := e.auditCount()
		v2 := serverapi.CreateReleaseRequest{App: "app", Version: "v2", Spec: spec("web:v2", "db:1"),
			Images: map[string]string{"web:v2": "sha256:" + strings.Repeat("ab", 32)}, Content: serverapi.ContentExternal}
		for _, tc := range []struct {
			name string
			req  serverapi.CreateReleaseRequest
		}{
			{"unsigned", v2},
			{"untrusted-key", signed(other, "lab", v2)},
			{"signed-for-another-fleet", signed(key, "field", v2)},
			{"signed-another-release", func() serverapi.CreateReleaseRequest {
				r := signed(key, "lab", v2)
				r.Version = "v3"
				return r
			}()},
			{"key-id-without-signature", func() serverapi.CreateReleaseRequest {
				r := v2
				r.KeyID = key.Public().ID()
				return r
			}()},
		} {
			if _, _, err := deployer.CreateRelease(ctx, "lab", tc.req); status(err) != http.StatusForbidden && status(err) != http.StatusBadRequest {
				t.Errorf("%s: %v, want refused", tc.name, err)
			}
		}
		if e.auditCount() != audits {
			t.Error("refused releases were audited")
		}
		if rs, _ := e.admin.Releases(ctx, "lab", "", 0); len(rs) != 1 {
			t.Errorf("releases after the refusals: %d, want 1", len(rs))
		}

		good, created, err := deployer.CreateRelease(ctx, "lab", signed(key, "lab", v2))
		if err != nil || !created || good.KeyID != key.Public().ID() || good.Signature == "" {
			t.Fatalf("signed: %+v, %v, %v", good, created, err)
		}
		if err := signing.Verify(key.Public(), "lab", good.ID, good.Signature); err != nil {
			t.Errorf("the stored signature: %v", err)
		}
		// Another fleet without keys takes it unsigned.
		if _, _, err := deployer.CreateRelease(ctx, "field", v2); err != nil {
			t.Errorf("unsigned in a fleet without keys: %v", err)
		}

		// Devices get the keys at registration, and the signature with
		// their target.
		dev, dcl, _ := e.device(lab.ProvisioningKey, "robot-1")
		reg, err := e.client("").Register(ctx, serverapi.RegisterRequest{ProvisioningKey: lab.ProvisioningKey, Name: "robot-2"})
		if err != nil || len(reg.TrustedKeys) != 1 || reg.TrustedKeys[0] != key.Public().String() {
			t.Errorf("registration: keys %v, %v", reg.TrustedKeys, err)
		}
		if _, err := deployer.Assign(ctx, "lab", good.ID, serverapi.AssignRequest{Devices: []string{dev.ID}}); err != nil {
			t.Fatal(err)
		}
		tg, _, err := dcl.Target(ctx, 0, 0)
		if err != nil || tg.Fleet != "lab" || tg.Signatures["app"].Signature != good.Signature || tg.Signatures["app"].KeyID != good.KeyID {
			t.Errorf("target: %+v, %v", tg, err)
		}
		dr, err := dcl.DeviceRelease(ctx, good.ID)
		if err != nil || dr.Signature != good.Signature {
			t.Errorf("device release: %+v, %v", dr, err)
		}

		// Removing the last key: unsigned releases go again.
		if err := deployer.RemoveSigningKey(ctx, "lab", k.ID); status(err) != http.StatusForbidden {
			t.Errorf("a deployer removes a key: %v, want 403", err)
		}
		if err := e.admin.RemoveSigningKey(ctx, "lab", key.Public().String()); err != nil {
			t.Fatalf("remove by public key: %v", err)
		}
		if err := e.admin.RemoveSigningKey(ctx, "lab", k.ID); status(err) != http.StatusNotFound {
			t.Errorf("remove again: %v, want 404", err)
		}
		if _, _, err := deployer.CreateRelease(ctx, "lab", serverapi.CreateReleaseRequest{App: "app", Version: "v4", Spec: spec("web:v4", "db:1")}); err != nil {
			t.Errorf("unsigned after the last key went: %v", err)
		}
	})
}
