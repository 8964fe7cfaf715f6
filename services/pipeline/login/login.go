// Package login is human login to the pipeline service, for the web UI:
// users with bcrypt-hashed passwords, sessions in an HttpOnly, SameSite=Lax
// cookie with a CSRF token for every state-changing request, login
// throttling, and OpenID Connect login with a claim-to-role mapping.
//
// Users live in [auth.UsersBucket] and sessions in [auth.SessionsBucket],
// so every pipeline instance on the same NATS sees the same users and
// sessions; a session is checked against its user on every request, so a
// user deleted, disabled or given another role takes effect at once.
//
// The package plugs into the API's guard two ways: [Service.Routes] are its
// routes with the role each needs, and [Service.Authenticate] authenticates
// a request by its session cookie. docs/security.md describes the model.
package login

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"

	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/topology"
)

// Service serves login, logout, the user routes and OIDC login, and
// authenticates requests by their session cookie. It is safe for
// concurrent use.
type Service struct {
	cfg      Config
	log      *zap.Logger
	users    users
	sessions sessions
	throttle *throttle
	oidc     *oidcLogin // nil without OIDC
	pub      publisher
	// tokens verifies the API tokens of token logins and holds a token
	// session to its token (revoked or expired: the session ends).
	tokens *auth.TokenStore
	// dummyHash is compared against when the user is unknown, so that an
	// unknown name costs what a wrong password costs.
	dummyHash []byte
	now       func() time.Time
	// hashSlots bounds the bcrypt computations running at once, so that a
	// flood of logins queues instead of taking every core from the API.
	hashSlots chan struct{}
}

// New opens (creating if needed) the users and sessions buckets and
// returns the service. A session ends at its own expiry; the sessions
// bucket forgets it after topology.SessionsTTL at the latest. With OIDC configured it
// reads the client secret file; the provider is discovered at the first
// OIDC login, so that a provider down at start does not stop the service.
func New(ctx context.Context, cfg Config, js jetstream.JetStream, log *zap.Logger) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("login config: %w", err)
	}
	cfg.withDefaults()
	if log == nil {
		log = zap.NewNop()
	}
	ukv, err := bus.EnsureKeyValue(ctx, js, topology.MustBucket(auth.UsersBucket, cfg.Replicas))
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", auth.UsersBucket, err)
	}
	skv, err := bus.EnsureKeyValue(ctx, js, topology.MustBucket(auth.SessionsBucket, cfg.Replicas))
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", auth.SessionsBucket, err)
	}
	dummy, err := bcrypt.GenerateFromPassword([]byte(randomID(16)), cfg.PasswordCost)
	if err != nil {
		return nil, fmt.Errorf("hash password: %w", err)
	}
	s := &Service{cfg: cfg, log: log.With(zap.String("component", "login")), users: users{ukv}, sessions: sessions{skv},
		throttle: newThrottle(cfg.MaxFailures, cfg.FailureWindow), dummyHash: dummy, now: time.Now, pub: js,
		hashSlots: make(chan struct{}, max(2, runtime.GOMAXPROCS(0)))}
	tokens, err := auth.OpenTokenStore(ctx, js, cfg.Replicas)
	if err != nil {
		return nil, err
	}
	tokens.Now = func() time.Time { return s.now() }
	s.tokens = tokens
	if cfg.OIDC.Enabled() {
		secret, err := os.ReadFile(cfg.OIDC.ClientSecretFile)
		if err != nil {
			return nil, fmt.Errorf("read --oidc-client-secret-file: %w", err)
		}
		s.oidc = newOIDCLogin(cfg.OIDC, strings.TrimSpace(string(secret)))
	}
	return s, nil
}

// Authenticate authenticates r by its session cookie. It returns
// [auth.ErrNoCredentials] when r has no session cookie,
// [auth.ErrUnauthenticated] when the session is unknown, ended or its user
// is gone or disabled (for a token login: its token revoked or expired), and [auth.ErrForbidden] when r would change
// something (not GET, HEAD or OPTIONS) and lacks the session's CSRF token;
// other errors are the store's.
func (s *Service) Authenticate(r *http.Request) (*auth.Identity, error) {
	id := sessionID(r)
	if id == "" {
		return nil, auth.ErrNoCredentials
	}
	who, _, err := s.lookup(r.Context(), id)
	if err != nil {
		return nil, err
	}
	if !safeMethod(r.Method) && !csrfOK(r, id) {
		return nil, fmt.Errorf("%w: %s with a session cookie needs the %s header", auth.ErrForbidden, r.Method, CSRFHeader)
	}
	return who, nil
}

// lookup returns the identity of the live session id: its user's, or for
// a token login its token's, read again at every request.
func (s *Service) lookup(ctx context.Context, id string) (*auth.Identity, *session, error) {
	rec, err := s.sessions.get(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil, nil, auth.ErrUnauthenticated
	}
	if err != nil {
		return nil, nil, err
	}
	if !s.now().Before(rec.ExpiresAt) {
		// The bucket's TTL removes it soon; this one request must not pass.
		_ = s.sessions.delete(ctx, id)
		return nil, nil, fmt.Errorf("%w: session ended", auth.ErrUnauthenticated)
	}
	if rec.TokenID != "" {
		t, err := s.tokens.Get(ctx, rec.TokenID)
		if errors.Is(err, auth.ErrTokenNotFound) {
			return nil, nil, fmt.Errorf("%w: token gone", auth.ErrUnauthenticated)
		}
		if err != nil {
			return nil, nil, err
		}
		if st := t.State(s.now()); st != "active" {
			return nil, nil, fmt.Errorf("%w: token %s is %s", auth.ErrUnauthenticated, t.ID, st)
		}
		return t.Identity(), rec, nil
	}
	u, _, err := s.users.get(ctx, rec.User)
	if errors.Is(err, ErrNotFound) {
		return nil, nil, fmt.Errorf("%w: user gone", auth.ErrUnauthenticated)
	}
	if err != nil {
		return nil, nil, err
	}
	if u.ID != rec.UserID || u.Disabled {
		return nil, nil, fmt.Errorf("%w: user gone or disabled", auth.ErrUnauthenticated)
	}
	return u.identity(), rec, nil
}

// startSession stores a new session of u and sets its cookie on w. It
// returns the session id.
func (s *Service) startSession(ctx context.Context, w http.ResponseWriter, r *http.Request, u *user, method string) (string, *session, error) {
	now := s.now().UTC()
	return s.storeSession(ctx, w, r, &session{UserID: u.ID, User: u.Name, Method: method, CreatedAt: now, ExpiresAt: now.Add(s.cfg.SessionLifetime)})
}

// startTokenSession stores a new session of token t, ending with the
// session lifetime or the token's expiry, whichever comes first, and sets
// its cookie on w. It returns the session id.
func (s *Service) startTokenSession(ctx context.Context, w http.ResponseWriter, r *http.Request, t *auth.Token) (string, *session, error) {
	now := s.now().UTC()
	end := now.Add(s.cfg.SessionLifetime)
	if t.ExpiresAt != nil && t.ExpiresAt.Before(end) {
		end = t.ExpiresAt.UTC()
	}
	return s.storeSession(ctx, w, r, &session{TokenID: t.ID, User: t.Name, Method: methodToken, CreatedAt: now, ExpiresAt: end})
}

// storeSession stores rec under a new session id and sets its cookie on w.
func (s *Service) storeSession(ctx context.Context, w http.ResponseWriter, r *http.Request, rec *session) (string, *session, error) {
	// A cookie the browser already had is ended, never reused: a session id
	// planted before login (fixation) is worth nothing after it.
	if old := sessionID(r); old != "" {
		_ = s.sessions.delete(ctx, old)
	}
	id := newSessionID()
	if err := s.sessions.put(ctx, id, rec); err != nil {
		return "", nil, err
	}
	http.SetCookie(w, s.cookie(r, id, rec.ExpiresAt))
	return id, rec, nil
}

// cookie is the session cookie for id, ending at expires (a zero expires
// clears the cookie).
func (s *Service) cookie(r *http.Request, id string, expires time.Time) *http.Cookie {
	c := &http.Cookie{Name: SessionCookie, Value: id, Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode,
		Secure: s.cfg.SecureCookies || r.TLS != nil}
	if expires.IsZero() {
		c.MaxAge = -1
	} else {
		c.Expires = expires
		c.MaxAge = int(expires.Sub(s.now()).Seconds())
	}
	return c
}

// Routes are the service's routes for the API's guard to mount: login
// (password or API token), logout and OIDC login (public), GET /api/v1/me (any identity) and user
// administration (admin).
func (s *Service) Routes() []auth.Route {
	rs := []auth.Route{
		{Pattern: "GET /api/v1/login", Scope: auth.ScopePublic, Handler: http.HandlerFunc(s.handleMethods)},
		{Pattern: "POST /api/v1/login", Scope: auth.ScopePublic, Handler: http.HandlerFunc(s.handleLogin)},
		{Pattern: "POST /api/v1/login/token", Scope: auth.ScopePublic, Handler: http.HandlerFunc(s.handleTokenLogin)},
		{Pattern: "POST /api/v1/logout", Scope: auth.ScopePublic, Handler: http.HandlerFunc(s.handleLogout)},
		{Pattern: "GET /api/v1/me", Role: auth.RoleViewer, Scope: auth.ScopeFiltered, Handler: http.HandlerFunc(s.handleMe)},
		{Pattern: "GET /api/v1/users", Role: auth.RoleAdmin, Scope: auth.ScopeGlobal, Handler: http.HandlerFunc(s.handleListUsers)},
		{Pattern: "POST /api/v1/users", Role: auth.RoleAdmin, Scope: auth.ScopeGlobal, Handler: http.HandlerFunc(s.handleCreateUser)},
		{Pattern: "DELETE /api/v1/users/{name}", Role: auth.RoleAdmin, Scope: auth.ScopeGlobal, Handler: http.HandlerFunc(s.handleDeleteUser)},
	}
	if s.oidc != nil {
		rs = append(rs,
			auth.Route{Pattern: "GET /auth/oidc/login", Scope: auth.ScopePublic, Handler: http.HandlerFunc(s.handleOIDCLogin)},
			auth.Route{Pattern: "GET /auth/oidc/callback", Scope: auth.ScopePublic, Handler: http.HandlerFunc(s.handleOIDCCallback)},
		)
	}
	return rs
}
