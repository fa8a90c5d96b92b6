package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"time"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/store"
)

// audit records a change p made. details must hold no secret: tokens and
// keys appear by prefix, environment variables by name only. The change is
// made by then, so a failure to record it is logged, not returned.
func (s *Server) audit(r *http.Request, p principal, action, object string, details any) {
	s.auditAs(r.Context(), p.actor(), action, object, details)
}

func (s *Server) auditAs(ctx context.Context, actor, action, object string, details any) {
	var b json.RawMessage
	if details != nil {
		var err error
		if b, err = json.Marshal(details); err != nil {
			s.log.Error("audit details", "action", action, "error", err)
			b = nil
		}
	}
	// Recorded even if the client has gone meanwhile.
	_, err := s.st.AppendAudit(context.WithoutCancel(ctx), store.AuditEntry{Actor: actor, Action: action, Object: object, Details: b})
	if err != nil {
		s.log.Error("audit entry lost", "actor", actor, "action", action, "object", object, "error", err)
	}
}

func (s *Server) listAudit(w http.ResponseWriter, r *http.Request, p principal) error {
	q := r.URL.Query()
	f := store.AuditFilter{Actor: q.Get("actor"), Action: q.Get("action"), Object: q.Get("object")}
	var err error
	if f.Limit, err = queryInt(r, "limit", 100, 1000); err != nil {
		return err
	}
	if v := q.Get("before"); v != "" {
		if f.Before, err = strconv.ParseInt(v, 10, 64); err != nil || f.Before < 0 {
			return fmt.Errorf("query parameter before=%q: want an entry ID: %w", v, release.ErrInvalid)
		}
	}
	for name, t := range map[string]*time.Time{"since": &f.Since, "until": &f.Until} {
		if v := q.Get(name); v != "" {
			if *t, err = time.Parse(time.RFC3339Nano, v); err != nil {
				return fmt.Errorf("query parameter %s=%q: want an RFC 3339 time like 2026-11-01T12:00:00Z: %w", name, v, release.ErrInvalid)
			}
		}
	}
	es, err := s.st.ListAudit(r.Context(), f)
	if err != nil {
		return err
	}
	out := make([]serverapi.AuditEntry, len(es))
	for i, e := range es {
		out[i] = serverapi.AuditEntry{ID: e.ID, Time: e.Time, Actor: e.Actor, Action: e.Action, Object: e.Object, Details: e.Details}
	}
	reply(w, http.StatusOK, out)
	return nil
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,62}$`)

// validName reports whether s can name a user or a device.
func validName(s string) bool { return nameRE.MatchString(s) }
