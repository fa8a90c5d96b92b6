package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/berth-robotics/berth/internal/atomicfile"
	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/store"
)

// AdminTokenFile is where, in the data directory, the server writes a
// bootstrap admin token.
const AdminTokenFile = "admin.token"

// Bootstrap makes sure someone can administer the server. When no admin
// holds a token that has not expired — the first run, or every admin token
// was deleted — it creates one (and the user "admin", if there is no
// admin), writes its secret to DATA_DIR/admin.token (mode 0600) and returns
// that path. Otherwise it changes nothing and returns "".
//
// The secret is written before the token is stored: a crash between the
// two leaves a file with a token that does not work, and the next start
// writes a new one, never an admin without a token anyone knows.
func Bootstrap(ctx context.Context, st store.Store, dataDir string, now time.Time) (string, error) {
	us, err := st.ListUsers(ctx)
	if err != nil {
		return "", fmt.Errorf("bootstrap: %w", err)
	}
	var adminUser *store.User
	for _, u := range us {
		if u.Role != store.RoleAdmin {
			continue
		}
		ts, err := st.ListTokens(ctx, u.ID)
		if err != nil {
			return "", fmt.Errorf("bootstrap: %w", err)
		}
		for _, t := range ts {
			if !t.Expired(now) {
				return "", nil
			}
		}
		if adminUser == nil {
			adminUser = &u
		}
	}
	if adminUser == nil {
		u, err := st.CreateUser(ctx, "admin", store.RoleAdmin)
		if errors.Is(err, release.ErrConflict) {
			// Another replica starting at the same time, or a user
			// named admin without the role.
			if u, err = st.UserByName(ctx, "admin"); err == nil && u.Role != store.RoleAdmin {
				return "", fmt.Errorf("bootstrap: no admin holds a token, and the user named admin is a %s; give a user the admin role in the database, or delete the user admin", u.Role)
			}
		}
		if err != nil {
			return "", fmt.Errorf("bootstrap: %w", err)
		}
		adminUser = &u
	}
	secret := store.NewSecret("bt")
	path, err := filepath.Abs(filepath.Join(dataDir, AdminTokenFile))
	if err != nil {
		return "", fmt.Errorf("bootstrap: %w", err)
	}
	if err := atomicfile.Write(path, []byte(secret+"\n")); err != nil {
		return "", fmt.Errorf("bootstrap: %w", err)
	}
	t, err := st.CreateToken(ctx, adminUser.ID, "bootstrap", secret, time.Time{})
	if err != nil {
		os.Remove(path)
		return "", fmt.Errorf("bootstrap: %w", err)
	}
	_, err = st.AppendAudit(ctx, store.AuditEntry{Actor: "system", Action: "token.create", Object: "user/" + adminUser.Name,
		Details: fmt.Appendf(nil, `{"token":%q,"prefix":%q,"name":"bootstrap","file":%q}`, t.ID, t.Prefix, path)})
	if err != nil {
		return "", fmt.Errorf("bootstrap: %w", err)
	}
	return path, nil
}
