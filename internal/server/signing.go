package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/signing"
	"github.com/berth-robotics/berth/internal/store"
)

// A fleet's signing keys: with at least one registered, the fleet takes
// only releases signed by one of them (package signing says what is
// signed). Devices verify the signatures again against the keys they
// pinned at provisioning; the server's check is the early, friendly one.

func signingKeyView(k store.FleetKey) serverapi.SigningKey {
	return serverapi.SigningKey{ID: k.ID, PublicKey: k.PublicKey, Created: k.Created, CreatedBy: k.CreatedBy}
}

func (s *Server) addSigningKey(w http.ResponseWriter, r *http.Request, p principal) error {
	var req serverapi.AddSigningKeyRequest
	if err := decode(w, r, &req, true); err != nil {
		return err
	}
	pub, err := signing.ParsePublicKey(req.PublicKey)
	if err != nil {
		return err
	}
	f, err := s.findFleet(r.Context(), r.PathValue("fleet"))
	if err != nil {
		return err
	}
	k, err := s.st.AddFleetKey(r.Context(), store.FleetKey{FleetID: f.ID, ID: pub.ID(), PublicKey: pub.String(), CreatedBy: p.actor()})
	if err != nil {
		return err
	}
	s.audit(r, p, "fleet.signing_key.add", "fleet/"+f.Name, map[string]any{"key_id": k.ID, "public_key": k.PublicKey})
	reply(w, http.StatusCreated, signingKeyView(k))
	return nil
}

func (s *Server) listSigningKeys(w http.ResponseWriter, r *http.Request, p principal) error {
	f, err := s.findFleet(r.Context(), r.PathValue("fleet"))
	if err != nil {
		return err
	}
	ks, err := s.st.FleetKeys(r.Context(), f.ID)
	if err != nil {
		return err
	}
	out := make([]serverapi.SigningKey, len(ks))
	for i, k := range ks {
		out[i] = signingKeyView(k)
	}
	reply(w, http.StatusOK, out)
	return nil
}

// removeSigningKey answers DELETE …/keys/{key}, the key named by its ID or
// its public key.
func (s *Server) removeSigningKey(w http.ResponseWriter, r *http.Request, p principal) error {
	f, err := s.findFleet(r.Context(), r.PathValue("fleet"))
	if err != nil {
		return err
	}
	id := r.PathValue("key")
	if pub, err := signing.ParsePublicKey(id); err == nil {
		id = pub.ID()
	}
	if err := s.st.RemoveFleetKey(r.Context(), f.ID, id); err != nil {
		if errors.Is(err, release.ErrNotFound) {
			return fmt.Errorf("fleet %s has no signing key %q (berth fleet keys list %s); nothing was removed: %w", f.Name, r.PathValue("key"), f.Name, release.ErrNotFound)
		}
		return err
	}
	s.audit(r, p, "fleet.signing_key.remove", "fleet/"+f.Name, map[string]any{"key_id": id})
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// fleetKeys returns a fleet's signing keys, parsed.
func (s *Server) fleetKeys(ctx context.Context, fleetID string) ([]signing.PublicKey, error) {
	ks, err := s.st.FleetKeys(ctx, fleetID)
	if err != nil {
		return nil, err
	}
	out := make([]signing.PublicKey, 0, len(ks))
	for _, k := range ks {
		pub, err := signing.ParsePublicKey(k.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("fleet %s: stored signing key %s: %w", fleetID, k.ID, err)
		}
		out = append(out, pub)
	}
	return out, nil
}

// checkSignature refuses a release for a fleet that requires signing unless
// it is signed by one of the fleet's keys. A signature on a release of a
// fleet without keys is kept unchecked: devices that pinned keys check it.
func (s *Server) checkSignature(ctx context.Context, f store.Fleet, releaseID string, req serverapi.CreateReleaseRequest) error {
	if (req.Signature == "") != (req.KeyID == "") {
		return fmt.Errorf("signature and key_id go together: %w", release.ErrInvalid)
	}
	keys, err := s.fleetKeys(ctx, f.ID)
	if err != nil || len(keys) == 0 {
		return err
	}
	if err := signing.VerifyAny(keys, f.Name, releaseID, req.KeyID, req.Signature); err != nil {
		return fmt.Errorf("fleet %s takes only releases signed by its keys (berth fleet keys list %s): %v; nothing was created: sign with berth release create --sign-key: %w",
			f.Name, f.Name, err, release.ErrUnauthorized)
	}
	return nil
}
