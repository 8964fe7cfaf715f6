package login

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"golang.org/x/oauth2"

	"github.com/ansflow/ansflow/pkg/auth"
)

// flowCookie carries an OIDC login in progress from /auth/oidc/login to
// /auth/oidc/callback: a random key from which state, nonce and the PKCE
// verifier are derived, and when it was made. Nothing of the flow is kept
// on the server, so the callback may reach any instance.
const (
	flowCookie   = "ansflow_oidc_flow"
	flowPath     = "/auth/oidc"
	flowLifetime = 10 * time.Minute
)

// oidcLogin is the OpenID Connect relying party. The provider is
// discovered at the first login and kept once discovery succeeds.
type oidcLogin struct {
	cfg    OIDCConfig
	secret string
	client *http.Client

	mu       sync.Mutex
	provider *oidc.Provider
	oauth    *oauth2.Config
	verifier *oidc.IDTokenVerifier
}

func newOIDCLogin(cfg OIDCConfig, secret string) *oidcLogin {
	return &oidcLogin{cfg: cfg, secret: secret, client: &http.Client{Timeout: 15 * time.Second}}
}

// ctx is ctx with the relying party's HTTP client, for go-oidc and oauth2.
func (o *oidcLogin) ctx(ctx context.Context) context.Context {
	return oidc.ClientContext(context.WithValue(ctx, oauth2.HTTPClient, o.client), o.client)
}

// discover returns the oauth2 config and ID token verifier, discovering the
// provider on first use.
func (o *oidcLogin) discover(ctx context.Context) (*oauth2.Config, *oidc.IDTokenVerifier, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.provider == nil {
		p, err := oidc.NewProvider(o.ctx(ctx), o.cfg.Issuer)
		if err != nil {
			return nil, nil, fmt.Errorf("discover OpenID provider %s: %w", o.cfg.Issuer, err)
		}
		o.provider = p
		o.oauth = &oauth2.Config{ClientID: o.cfg.ClientID, ClientSecret: o.secret, Endpoint: p.Endpoint(),
			RedirectURL: o.cfg.RedirectURL, Scopes: append([]string{oidc.ScopeOpenID}, o.cfg.Scopes...)}
		// The verifier checks the signature against the provider's keys,
		// the issuer, the audience (our client id) and expiry.
		o.verifier = p.VerifierContext(oidc.ClientContext(context.Background(), o.client), &oidc.Config{ClientID: o.cfg.ClientID})
	}
	return o.oauth, o.verifier, nil
}

// flow is one login in progress, derived from its cookie.
type flow struct {
	key     []byte
	created time.Time
}

func (f flow) derive(what string) string {
	m := hmac.New(sha256.New, f.key)
	m.Write([]byte(what + "|" + strconv.FormatInt(f.created.Unix(), 10)))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (f flow) state() string    { return f.derive("state") }
func (f flow) nonce() string    { return f.derive("nonce") }
func (f flow) verifier() string { return f.derive("pkce") } // 43 characters, as RFC 7636 wants

func (f flow) cookieValue() string {
	return strconv.FormatInt(f.created.Unix(), 10) + "." + base64.RawURLEncoding.EncodeToString(f.key)
}

func parseFlow(v string) (flow, error) {
	ts, key, ok := strings.Cut(v, ".")
	if !ok {
		return flow{}, errors.New("malformed login cookie")
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return flow{}, errors.New("malformed login cookie")
	}
	k, err := base64.RawURLEncoding.DecodeString(key)
	if err != nil || len(k) != 32 {
		return flow{}, errors.New("malformed login cookie")
	}
	return flow{key: k, created: time.Unix(sec, 0)}, nil
}

func (s *Service) flowCookie(r *http.Request, value string, maxAge int) *http.Cookie {
	return &http.Cookie{Name: flowCookie, Value: value, Path: flowPath, MaxAge: maxAge, HttpOnly: true,
		SameSite: http.SameSiteLaxMode, Secure: s.cfg.SecureCookies || r.TLS != nil}
}

// handleOIDCLogin starts a login: it sets the flow cookie and sends the
// browser to the provider with state, nonce and a PKCE challenge.
func (s *Service) handleOIDCLogin(w http.ResponseWriter, r *http.Request) {
	oc, _, err := s.oidc.discover(r.Context())
	if err != nil {
		s.log.Warn("oidc login", zap.Error(err))
		writeError(w, http.StatusServiceUnavailable, "OpenID provider unavailable")
		return
	}
	f := flow{key: make([]byte, 32), created: s.now()}
	_, _ = rand.Read(f.key)
	http.SetCookie(w, s.flowCookie(r, f.cookieValue(), int(flowLifetime/time.Second)))
	u := oc.AuthCodeURL(f.state(), oidc.Nonce(f.nonce()), oauth2.S256ChallengeOption(f.verifier()))
	http.Redirect(w, r, u, http.StatusFound)
}

// handleOIDCCallback finishes a login: it checks the state against the flow
// cookie, exchanges the code (with the PKCE verifier), verifies the ID token
// and its nonce, maps the role claim and starts a session. A login whose
// claim maps to no role is refused (403) and leaves no user and no session.
func (s *Service) handleOIDCCallback(w http.ResponseWriter, r *http.Request) {
	// The flow cookie is good for one callback, whatever its outcome.
	http.SetCookie(w, s.flowCookie(r, "", -1))
	q := r.URL.Query()
	if e := q.Get("error"); e != "" {
		writeError(w, http.StatusUnauthorized, "the OpenID provider refused the login: %s", e)
		return
	}
	c, err := r.Cookie(flowCookie)
	if err != nil {
		writeError(w, http.StatusBadRequest, "no login in progress in this browser: start at /auth/oidc/login")
		return
	}
	f, err := parseFlow(c.Value)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if age := s.now().Sub(f.created); age > flowLifetime || age < -time.Minute {
		writeError(w, http.StatusBadRequest, "login took too long: start again")
		return
	}
	if st := q.Get("state"); subtle.ConstantTimeCompare([]byte(st), []byte(f.state())) != 1 {
		writeError(w, http.StatusBadRequest, "state does not match this browser's login")
		return
	}
	code := q.Get("code")
	if code == "" {
		writeError(w, http.StatusBadRequest, "no authorization code")
		return
	}
	oc, verifier, err := s.oidc.discover(r.Context())
	if err != nil {
		s.log.Warn("oidc callback", zap.Error(err))
		writeError(w, http.StatusServiceUnavailable, "OpenID provider unavailable")
		return
	}
	ctx := s.oidc.ctx(r.Context())
	tok, err := oc.Exchange(ctx, code, oauth2.VerifierOption(f.verifier()))
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) {
			writeError(w, http.StatusUnauthorized, "the OpenID provider refused the code")
			return
		}
		s.log.Warn("oidc code exchange", zap.Error(err))
		writeError(w, http.StatusBadGateway, "OpenID provider unavailable")
		return
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		writeError(w, http.StatusBadGateway, "the OpenID provider sent no ID token")
		return
	}
	idt, err := verifier.Verify(ctx, raw)
	if err != nil {
		s.log.Info("oidc: ID token refused", zap.Error(err))
		writeError(w, http.StatusUnauthorized, "ID token not valid")
		return
	}
	if subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(f.nonce())) != 1 {
		writeError(w, http.StatusUnauthorized, "ID token nonce does not match")
		return
	}
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		writeError(w, http.StatusBadGateway, "decode ID token claims: %v", err)
		return
	}
	values := claimValues(claims, s.cfg.OIDC.RoleClaim)
	if values == nil {
		// Some providers put groups in the userinfo answer only.
		if ui, err := s.oidc.provider.UserInfo(ctx, oauth2.StaticTokenSource(tok)); err == nil {
			var uc map[string]any
			if ui.Claims(&uc) == nil && ui.Subject == idt.Subject {
				values = claimValues(uc, s.cfg.OIDC.RoleClaim)
			}
		}
	}
	role, globs, ok := mapClaim(values, s.cfg.OIDC.Roles, s.cfg.OIDC.Pipelines)
	if !ok {
		s.log.Info("oidc login refused: no mapped claim", zap.String("subject", idt.Subject), zap.String("claim", s.cfg.OIDC.RoleClaim))
		s.audit(r, "", actionLoginOIDC, "oidc:"+idt.Subject, "denied: no mapped claim")
		writeError(w, http.StatusForbidden, "your account has no AnsFlow role (claim %q maps to none)", s.cfg.OIDC.RoleClaim)
		return
	}
	name := firstString(claims, s.cfg.OIDC.UsernameClaim, "email", "sub")
	name, err = normalizeName(name)
	if err != nil {
		writeError(w, http.StatusForbidden, "%v", err)
		return
	}
	u, err := s.upsertOIDCUser(r.Context(), name, idt.Issuer, idt.Subject, role, globs)
	if err != nil {
		var refused refusal
		if errors.As(err, &refused) {
			s.log.Info("oidc login refused", zap.String("user", name), zap.Error(err))
			s.audit(r, "", actionLoginOIDC, "user:"+name, "denied: "+err.Error())
			writeError(w, http.StatusForbidden, "%v", err)
			return
		}
		s.log.Error("oidc login: store user", zap.Error(err))
		writeError(w, http.StatusServiceUnavailable, "user store unavailable")
		return
	}
	if _, _, err := s.startSession(r.Context(), w, r, u, methodOIDC); err != nil {
		s.log.Error("oidc login: start session", zap.Error(err))
		writeError(w, http.StatusServiceUnavailable, "session store unavailable")
		return
	}
	s.log.Info("login", zap.String("user", u.Name), zap.String("method", methodOIDC), zap.String("role", string(role)))
	s.audit(r, u.identity().Actor(), actionLoginOIDC, "user:"+u.Name, "ok: "+string(role))
	http.Redirect(w, r, s.cfg.OIDC.AfterLogin, http.StatusSeeOther)
}

// refusal is a login refused for the account's sake (403), not the store's.
type refusal struct{ msg string }

func (r refusal) Error() string { return r.msg }

// upsertOIDCUser creates the user of (issuer, subject) at its first login
// and sets its role and pipelines from this login's claims. A name held by
// a password user or by another OIDC account is refused: a provider's
// preferred_username must not take over someone else's account.
func (s *Service) upsertOIDCUser(ctx context.Context, name, issuer, subject string, role auth.Role, globs []string) (*user, error) {
	for range 5 {
		now := s.now().UTC()
		u, rev, err := s.users.get(ctx, name)
		if errors.Is(err, ErrNotFound) {
			u = &user{ID: randomID(16), Name: name, Role: role, Pipelines: globs, Issuer: issuer, Subject: subject, CreatedAt: now, LastLoginAt: &now}
			err := s.users.create(ctx, u)
			if errors.Is(err, ErrExists) {
				continue
			}
			return u, err
		}
		if err != nil {
			return nil, err
		}
		if u.Issuer != issuer || u.Subject != subject {
			return nil, refusal{fmt.Sprintf("user name %q belongs to another account", name)}
		}
		if u.Disabled {
			return nil, refusal{fmt.Sprintf("user %q is disabled", name)}
		}
		u.Role, u.Pipelines, u.LastLoginAt = role, globs, &now
		err = s.users.update(ctx, u, rev)
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue
		}
		return u, err
	}
	return nil, fmt.Errorf("store user %q: too many concurrent updates", name)
}

func firstString(claims map[string]any, names ...string) string {
	for _, n := range names {
		if v, ok := claims[n].(string); ok && v != "" {
			return v
		}
	}
	return ""
}
