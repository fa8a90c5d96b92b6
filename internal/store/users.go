package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

const userCols = "id, name, role, created"

func scanUser(s scanner) (User, error) {
	var u User
	var created int64
	if err := s.Scan(&u.ID, &u.Name, &u.Role, &created); err != nil {
		return User{}, err
	}
	u.Created = fromMicros(created)
	return u, nil
}

// CreateUser implements Store.
func (db *DB) CreateUser(ctx context.Context, name string, role Role) (User, error) {
	if name == "" {
		return User{}, fmt.Errorf("create user: no name: %w", ErrInvalid)
	}
	if err := checkText("create user", name); err != nil {
		return User{}, err
	}
	if !role.Valid() {
		return User{}, fmt.Errorf("create user %s: role %q: want admin, deployer or viewer: %w", name, role, ErrInvalid)
	}
	u := User{ID: newID(), Name: name, Role: role, Created: db.now()}
	_, err := db.w.ExecContext(ctx, "INSERT INTO users ("+userCols+") VALUES ($1, $2, $3, $4)",
		u.ID, u.Name, string(u.Role), micros(u.Created))
	if isUnique(err) {
		return User{}, fmt.Errorf("create user %s: the name is taken: %w", name, ErrConflict)
	}
	if err != nil {
		return User{}, fmt.Errorf("create user %s: %w", name, err)
	}
	return u, nil
}

// User implements Store.
func (db *DB) User(ctx context.Context, id string) (User, error) {
	u, err := scanUser(db.r.QueryRowContext(ctx, "SELECT "+userCols+" FROM users WHERE id = $1", id))
	if err != nil {
		return User{}, notFound(err, "user %s", id)
	}
	return u, nil
}

// UserByName implements Store.
func (db *DB) UserByName(ctx context.Context, name string) (User, error) {
	u, err := scanUser(db.r.QueryRowContext(ctx, "SELECT "+userCols+" FROM users WHERE name = $1", name))
	if err != nil {
		return User{}, notFound(err, "user %s", name)
	}
	return u, nil
}

// ListUsers implements Store.
func (db *DB) ListUsers(ctx context.Context) ([]User, error) {
	us, err := queryAll(ctx, db.r, scanUser, "SELECT "+userCols+" FROM users ORDER BY name")
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	return us, nil
}

// SetUserRole implements Store.
func (db *DB) SetUserRole(ctx context.Context, id string, role Role) error {
	if !role.Valid() {
		return fmt.Errorf("set role of user %s: role %q: want admin, deployer or viewer: %w", id, role, ErrInvalid)
	}
	res, err := db.w.ExecContext(ctx, "UPDATE users SET role = $2 WHERE id = $1", id, string(role))
	return mustAffect(res, err, "set role of user %s", id)
}

// DeleteUser implements Store.
func (db *DB) DeleteUser(ctx context.Context, id string) error {
	res, err := db.w.ExecContext(ctx, "DELETE FROM users WHERE id = $1", id)
	return mustAffect(res, err, "delete user %s", id)
}

const tokenCols = "id, user_id, name, prefix, created, expires, last_used"

func scanToken(s scanner) (Token, error) {
	var t Token
	var created int64
	var expires, lastUsed sql.NullInt64
	if err := s.Scan(&t.ID, &t.UserID, &t.Name, &t.Prefix, &created, &expires, &lastUsed); err != nil {
		return Token{}, err
	}
	t.Created = fromMicros(created)
	t.Expires = fromNullMicros(expires)
	t.LastUsed = fromNullMicros(lastUsed)
	return t, nil
}

// CreateToken implements Store.
func (db *DB) CreateToken(ctx context.Context, userID, name, secret string, expires time.Time) (Token, error) {
	if err := checkSecret("create token", secret); err != nil {
		return Token{}, err
	}
	if err := checkText("create token", name); err != nil {
		return Token{}, err
	}
	t := Token{
		ID:      newID(),
		UserID:  userID,
		Name:    name,
		Prefix:  secretPrefix(secret),
		Created: db.now(),
	}
	if !expires.IsZero() {
		t.Expires = expires.UTC().Truncate(time.Microsecond)
	}
	_, err := db.w.ExecContext(ctx, "INSERT INTO tokens (id, user_id, name, prefix, hash, created, expires) VALUES ($1, $2, $3, $4, $5, $6, $7)",
		t.ID, t.UserID, t.Name, t.Prefix, hashSecret(secret), micros(t.Created), nullMicros(t.Expires))
	switch {
	case isForeignKey(err):
		return Token{}, fmt.Errorf("create token for user %s: no such user: %w", userID, ErrNotFound)
	case isUnique(err):
		return Token{}, fmt.Errorf("create token for user %s: the secret is in use: %w", userID, ErrConflict)
	case err != nil:
		return Token{}, fmt.Errorf("create token for user %s: %w", userID, err)
	}
	return t, nil
}

// TokenBySecret implements Store.
func (db *DB) TokenBySecret(ctx context.Context, secret string) (Token, error) {
	t, err := scanToken(db.r.QueryRowContext(ctx, "SELECT "+tokenCols+" FROM tokens WHERE hash = $1", hashSecret(secret)))
	if err != nil {
		return Token{}, notFound(err, "token %s…", secretPrefix(secret))
	}
	return t, nil
}

// TouchToken implements Store.
func (db *DB) TouchToken(ctx context.Context, id string) error {
	res, err := db.w.ExecContext(ctx, "UPDATE tokens SET last_used = $2 WHERE id = $1", id, micros(db.now()))
	return mustAffect(res, err, "touch token %s", id)
}

// ListTokens implements Store.
func (db *DB) ListTokens(ctx context.Context, userID string) ([]Token, error) {
	ts, err := queryAll(ctx, db.r, scanToken, "SELECT "+tokenCols+" FROM tokens WHERE user_id = $1 ORDER BY created, id", userID)
	if err != nil {
		return nil, fmt.Errorf("list tokens of user %s: %w", userID, err)
	}
	return ts, nil
}

// DeleteToken implements Store.
func (db *DB) DeleteToken(ctx context.Context, id string) error {
	res, err := db.w.ExecContext(ctx, "DELETE FROM tokens WHERE id = $1", id)
	return mustAffect(res, err, "delete token %s", id)
}
