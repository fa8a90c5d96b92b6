package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/store"
)

func userView(u store.User) serverapi.User {
	return serverapi.User{ID: u.ID, Name: u.Name, Role: string(u.Role), Created: u.Created}
}

func tokenView(t store.Token) serverapi.Token {
	return serverapi.Token{ID: t.ID, UserID: t.UserID, Name: t.Name, Prefix: t.Prefix, Created: t.Created, Expires: t.Expires, LastUsed: t.LastUsed}
}

func (s *Server) whoami(w http.ResponseWriter, r *http.Request, p principal) error {
	reply(w, http.StatusOK, serverapi.Whoami{User: userView(*p.user), Token: tokenView(*p.token)})
	return nil
}

// findUser finds a user by ID, or else by name.
func (s *Server) findUser(ctx context.Context, ref string) (store.User, error) {
	u, err := s.st.User(ctx, ref)
	if errors.Is(err, release.ErrNotFound) {
		u, err = s.st.UserByName(ctx, ref)
	}
	if errors.Is(err, release.ErrNotFound) {
		return store.User{}, fmt.Errorf("no user %q: %w", ref, release.ErrNotFound)
	}
	return u, err
}

func (s *Server) createUser(w http.ResponseWriter, r *http.Request, p principal) error {
	var req serverapi.CreateUserRequest
	if err := decode(w, r, &req, true); err != nil {
		return err
	}
	if !validName(req.Name) {
		return fmt.Errorf("user name %q: use 1 to 63 letters, digits, '.', '-', '_' or '@': %w", req.Name, release.ErrInvalid)
	}
	u, err := s.st.CreateUser(r.Context(), req.Name, store.Role(req.Role))
	if err != nil {
		return err
	}
	s.audit(r, p, "user.create", "user/"+u.Name, map[string]any{"role": u.Role})
	reply(w, http.StatusCreated, userView(u))
	return nil
}

func (s *Server) listUsers(w http.ResponseWriter, r *http.Request, p principal) error {
	us, err := s.st.ListUsers(r.Context())
	if err != nil {
		return err
	}
	out := make([]serverapi.User, len(us))
	for i, u := range us {
		out[i] = userView(u)
	}
	reply(w, http.StatusOK, out)
	return nil
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request, p principal) error {
	u, err := s.findUser(r.Context(), r.PathValue("user"))
	if err != nil {
		return err
	}
	ts, err := s.st.ListTokens(r.Context(), u.ID)
	if err != nil {
		return err
	}
	out := make([]serverapi.Token, len(ts))
	for i, t := range ts {
		out[i] = tokenView(t)
	}
	reply(w, http.StatusOK, out)
	return nil
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request, p principal) error {
	var req serverapi.CreateTokenRequest
	if err := decode(w, r, &req, true); err != nil {
		return err
	}
	if req.ExpiresIn < 0 {
		return fmt.Errorf("expires_in %s: want a positive duration: %w", req.ExpiresIn.D(), release.ErrInvalid)
	}
	if len(req.Name) > 128 {
		return fmt.Errorf("token name: longer than 128 characters: %w", release.ErrInvalid)
	}
	u, err := s.findUser(r.Context(), r.PathValue("user"))
	if err != nil {
		return err
	}
	var expires time.Time
	if req.ExpiresIn > 0 {
		expires = s.now().Add(req.ExpiresIn.D())
	}
	secret := store.NewSecret("bt")
	t, err := s.st.CreateToken(r.Context(), u.ID, req.Name, secret, expires)
	if err != nil {
		return err
	}
	s.audit(r, p, "token.create", "user/"+u.Name, map[string]any{"token": t.ID, "prefix": t.Prefix, "name": t.Name, "expires": t.Expires})
	reply(w, http.StatusCreated, serverapi.NewToken{Token: tokenView(t), Secret: secret})
	return nil
}

func (s *Server) deleteToken(w http.ResponseWriter, r *http.Request, p principal) error {
	u, err := s.findUser(r.Context(), r.PathValue("user"))
	if err != nil {
		return err
	}
	ts, err := s.st.ListTokens(r.Context(), u.ID)
	if err != nil {
		return err
	}
	id := r.PathValue("token")
	for _, t := range ts {
		if t.ID != id {
			continue
		}
		if err := s.st.DeleteToken(r.Context(), id); err != nil {
			return err
		}
		s.audit(r, p, "token.delete", "user/"+u.Name, map[string]any{"token": t.ID, "prefix": t.Prefix, "name": t.Name})
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	return fmt.Errorf("user %s has no token %q: %w", u.Name, id, release.ErrNotFound)
}
