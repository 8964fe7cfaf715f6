package login

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/crypto/bcrypt"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/auth"
)

// Errors of the user store.
var (
	// ErrNotFound means there is no such user.
	ErrNotFound = errors.New("not found")
	// ErrExists means a user of that name exists already.
	ErrExists = errors.New("already exists")
)

// Password limits. bcrypt reads at most 72 bytes; a longer password is
// refused rather than silently cut.
const (
	MinPasswordLen = 8
	MaxPasswordLen = 72
)

// user is a user as stored in [auth.UsersBucket], under the key of its
// name. Only the bcrypt hash of a password is stored.
type user struct {
	// ID is random and new for each user, so that the sessions of a
	// deleted user do not pass for a new user of the same name.
	ID           string     `json:"id"`
	Name         string     `json:"name"`
	Role         auth.Role  `json:"role"`
	Pipelines    []string   `json:"pipelines,omitempty"`
	PasswordHash string     `json:"password_hash,omitempty"`
	Disabled     bool       `json:"disabled,omitempty"`
	Issuer       string     `json:"issuer,omitempty"`
	Subject      string     `json:"subject,omitempty"`
	CreatedAt    time.Time  `json:"created_at"`
	LastLoginAt  *time.Time `json:"last_login_at,omitempty"`
}

func (u *user) identity() *auth.Identity {
	return &auth.Identity{Kind: auth.KindUser, ID: u.ID, Name: u.Name, Role: u.Role, Pipelines: u.Pipelines}
}

func (u *user) wire() apiv1.User {
	w := apiv1.User{ID: u.ID, Name: u.Name, Role: u.Role, Pipelines: u.Pipelines, Disabled: u.Disabled,
		Source: apiv1.SourcePassword, Issuer: u.Issuer, Subject: u.Subject, CreatedAt: u.CreatedAt, LastLoginAt: u.LastLoginAt}
	if u.Issuer != "" {
		w.Source = apiv1.SourceOIDC
	}
	return w
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._@+-]{0,127}$`)

// normalizeName returns the canonical (lower-case) form of a user name, or
// an error saying what a name may be.
func normalizeName(s string) (string, error) {
	n := strings.ToLower(strings.TrimSpace(s))
	if !nameRE.MatchString(n) {
		return "", fmt.Errorf("user name %q: want 1 to 128 of a-z 0-9 . _ @ + -, starting with a letter or digit", s)
	}
	return n, nil
}

// userKey is the bucket key of a (normalized) name: names may hold
// characters that keys may not.
func userKey(name string) string { return "u." + base64.RawURLEncoding.EncodeToString([]byte(name)) }

func checkPassword(p string) error {
	switch {
	case len(p) < MinPasswordLen:
		return fmt.Errorf("password: want at least %d characters", MinPasswordLen)
	case len(p) > MaxPasswordLen:
		return fmt.Errorf("password: want at most %d bytes", MaxPasswordLen)
	}
	return nil
}

func randomID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}

// users is the user store. It is safe for concurrent use.
type users struct{ kv jetstream.KeyValue }

// get returns the user named name (normalized). ErrNotFound if none.
func (s users) get(ctx context.Context, name string) (*user, uint64, error) {
	e, err := s.kv.Get(ctx, userKey(name))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, fmt.Errorf("user %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read user %q: %w", name, err)
	}
	var u user
	if err := json.Unmarshal(e.Value(), &u); err != nil {
		return nil, 0, fmt.Errorf("decode user %q: %w", name, err)
	}
	return &u, e.Revision(), nil
}

// create stores a new user. ErrExists if the name is taken.
func (s users) create(ctx context.Context, u *user) error {
	b, err := json.Marshal(u)
	if err != nil {
		return fmt.Errorf("encode user %q: %w", u.Name, err)
	}
	if _, err := s.kv.Create(ctx, userKey(u.Name), b); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("user %q: %w", u.Name, ErrExists)
		}
		return fmt.Errorf("store user %q: %w", u.Name, err)
	}
	return nil
}

// update replaces the user read at revision rev; it fails with
// jetstream.ErrKeyExists when the user changed since.
func (s users) update(ctx context.Context, u *user, rev uint64) error {
	b, err := json.Marshal(u)
	if err != nil {
		return fmt.Errorf("encode user %q: %w", u.Name, err)
	}
	if _, err := s.kv.Update(ctx, userKey(u.Name), b, rev); err != nil {
		return fmt.Errorf("update user %q: %w", u.Name, err)
	}
	return nil
}

// delete removes the user. ErrNotFound if none.
func (s users) delete(ctx context.Context, name string) error {
	if _, _, err := s.get(ctx, name); err != nil {
		return err
	}
	if err := s.kv.Delete(ctx, userKey(name)); err != nil {
		return fmt.Errorf("delete user %q: %w", name, err)
	}
	return nil
}

// list returns every user, sorted by name.
func (s users) list(ctx context.Context) ([]*user, error) {
	lister, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	defer func() { _ = lister.Stop() }()
	var out []*user
	for k := range lister.Keys() {
		raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(k, "u."))
		if err != nil || !strings.HasPrefix(k, "u.") {
			continue
		}
		u, _, err := s.get(ctx, string(raw))
		if errors.Is(err, ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	slices.SortFunc(out, func(a, b *user) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// hashPassword returns the bcrypt hash of p at cost.
func hashPassword(p string, cost int) (string, error) {
	h, err := bcrypt.GenerateFromPassword([]byte(p), cost)
	if err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	return string(h), nil
}
