package login

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/bus"
)

// tokenLogin exchanges secret for a session and keeps its CSRF token.
func (b *browser) tokenLogin(base, secret string) response {
	b.t.Helper()
	r := b.do(http.MethodPost, base+"/api/v1/login/token", apiv1.TokenLoginRequest{Token: secret})
	if r.StatusCode == http.StatusOK {
		var s apiv1.Session
		r.decode(b.t, &s)
		b.csrf = s.CSRFToken
	}
	return r
}

// newToken creates an API token in the service's token store.
func (e *env) newToken(t *testing.T, spec auth.TokenSpec) (string, *auth.Token) {
	t.Helper()
	secret, tok, err := e.svc.tokens.Create(context.Background(), spec, auth.System)
	if err != nil {
		t.Fatal(err)
	}
	return secret, tok
}

// TestTokenLoginStartsASessionOfTheTokensGrant logs in with an API token:
// the session has the token's role and pipelines, the same cookie and CSRF
// rules as a password session, ends with the token's expiry and at once
// when the token is revoked; an unknown, expired or revoked token gets the
// answer of a wrong password; every login is audited without the token.
func TestTokenLoginStartsASessionOfTheTokensGrant(t *testing.T) {
	js := startNATS(t)
	ctx := context.Background()
	if err := bus.EnsureStreams(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, js, Config{PasswordCost: 4, MaxFailures: 100, SessionLifetime: 12 * time.Hour})
	var mu sync.Mutex
	now := time.Now()
	e.svc.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	e.addUser(t, "root", auth.RoleAdmin, "password1")

	inAnHour := now.Add(time.Hour)
	secret, tok := e.newToken(t, auth.TokenSpec{Name: "ci-viewer", Role: auth.RoleViewer, Pipelines: []string{"web-*"}, ExpiresAt: &inAnHour})
	b := newBrowser(t)
	r := b.tokenLogin(e.srv.URL, secret)
	wantStatus(t, r, http.StatusOK)
	var s apiv1.Session
	r.decode(t, &s)
	if s.Identity.Kind != auth.KindToken || s.Identity.ID != tok.ID || s.Identity.Role != auth.RoleViewer ||
		len(s.Identity.Pipelines) != 1 || s.Identity.Pipelines[0] != "web-*" {
		t.Errorf("identity = %+v, want the token's", s.Identity)
	}
	if s.ExpiresAt == nil || !s.ExpiresAt.Equal(inAnHour.UTC()) || len(s.CSRFToken) < 40 {
		t.Errorf("session answer = %+v, want a CSRF token and the token's expiry as its end", s)
	}
	c := sessionCookieOf(r)
	if c == nil || !c.HttpOnly || c.SameSite != http.SameSiteLaxMode {
		t.Fatalf("cookie = %+v, want the HttpOnly, SameSite=Lax session cookie", c)
	}
	me := b.do(http.MethodGet, e.srv.URL+"/api/v1/me", nil)
	wantStatus(t, me, http.StatusOK)
	var got apiv1.Session
	me.decode(t, &got)
	if got.Identity.Kind != auth.KindToken || got.Identity.ID != tok.ID || got.CSRFToken != s.CSRFToken {
		t.Errorf("/me = %+v, want the token's identity with the login's CSRF token", got)
	}
	// The session is a viewer's, and needs the CSRF token like any other.
	wantStatus(t, b.do(http.MethodPost, e.srv.URL+"/test/change", nil), http.StatusForbidden)
	wantStatus(t, b.do(http.MethodPost, e.srv.URL+"/test/change", nil, CSRFHeader, b.csrf), http.StatusForbidden)
	for _, v := range bucketValues(t, e.js, auth.SessionsBucket) {
		if strings.Contains(v, secret) || strings.Contains(v, c.Value) {
			t.Errorf("the sessions bucket holds a secret: %s", v)
		}
	}

	// An operator token's session may change things, with the CSRF token.
	opSecret, op := e.newToken(t, auth.TokenSpec{Name: "deployer", Role: auth.RoleOperator})
	ob := newBrowser(t)
	wantStatus(t, ob.tokenLogin(e.srv.URL, opSecret), http.StatusOK)
	wantStatus(t, ob.do(http.MethodPost, e.srv.URL+"/test/change", nil), http.StatusForbidden)
	wantStatus(t, ob.do(http.MethodPost, e.srv.URL+"/test/change", nil, CSRFHeader, ob.csrf), http.StatusNoContent)
	// Revoking the token ends its session at once; logging out first
	// would have been fine too.
	if _, err := e.svc.tokens.Revoke(ctx, op.ID, "user:root"); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, ob.do(http.MethodGet, e.srv.URL+"/api/v1/me", nil), http.StatusUnauthorized)
	if _, err := e.svc.Authenticate(withCookie(jarCookie(t, ob, e.srv.URL))); !errorsIs(err, auth.ErrUnauthenticated) {
		t.Errorf("a revoked token's session authenticates: %v", err)
	}

	// A wrong password, an unknown, a revoked and (after the hour) an
	// expired token all get one answer, and no cookie.
	bad := newBrowser(t)
	wrong := bad.login(e.srv.URL, "root", "wrong-password")
	wantStatus(t, wrong, http.StatusUnauthorized)
	for what, tokenSecret := range map[string]string{
		"unknown": auth.TokenPrefix + strings.Repeat("x", 43), "revoked": opSecret, "too long": strings.Repeat("y", maxTokenLen+1),
	} {
		r := bad.tokenLogin(e.srv.URL, tokenSecret)
		if r.StatusCode != http.StatusUnauthorized || string(r.body) != string(wrong.body) || sessionCookieOf(r) != nil {
			t.Errorf("%s token: HTTP %d %s, want the wrong password's 401 %s and no cookie", what, r.StatusCode, r.body, wrong.body)
		}
	}
	advance(time.Hour)
	wantStatus(t, b.do(http.MethodGet, e.srv.URL+"/api/v1/me", nil), http.StatusUnauthorized)
	if r := bad.tokenLogin(e.srv.URL, secret); r.StatusCode != http.StatusUnauthorized || string(r.body) != string(wrong.body) {
		t.Errorf("expired token: HTTP %d %s, want the wrong password's answer", r.StatusCode, r.body)
	}
	for _, body := range []struct{ ctype, body string }{{"text/plain", `{"token":"x"}`}, {"application/json", `{}`}, {"application/json", `{"token":"x","role":"admin"}`}} {
		resp, err := http.Post(e.srv.URL+"/api/v1/login/token", body.ctype, strings.NewReader(body.body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 4 || resp.StatusCode == http.StatusUnauthorized {
			t.Errorf("token login with %s %s: HTTP %d, want a 4xx for the malformed request", body.ctype, body.body, resp.StatusCode)
		}
	}
	var methods apiv1.Methods
	mr := bad.do(http.MethodGet, e.srv.URL+"/api/v1/login", nil)
	mr.decode(t, &methods)
	if !methods.Token || !methods.Password {
		t.Errorf("GET /api/v1/login = %s, want password and token", mr.body)
	}

	want := []string{
		"token:" + tok.ID + " (ci-viewer) login.token token:" + tok.ID + " ok",
		"token:" + op.ID + " (deployer) login.token token:" + op.ID + " ok",
		"anonymous@127.0.0.1 login user:root denied: invalid username or password",
		"anonymous@127.0.0.1 login.token token denied: unauthenticated: ",
		"anonymous@127.0.0.1 login.token token denied: unauthenticated: ",
		"anonymous@127.0.0.1 login.token token denied: unauthenticated: ",
		"anonymous@127.0.0.1 login.token token denied: unauthenticated: token " + tok.ID + " is expired",
	}
	records := auditRecords(t, ctx, js, len(want), secret, opSecret)
	if len(records) != len(want) {
		t.Fatalf("audit records:\n%s\nwant:\n%s", strings.Join(records, "\n"), strings.Join(want, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(records[i], want[i]) {
			t.Errorf("audit record %d = %q, want %q…", i, records[i], want[i])
		}
	}
}

// TestTokenLoginCountsAgainstTheAddressThrottle: failed token logins count
// with failed password logins from the same address, and a blocked
// address may not log in with a good token either.
func TestTokenLoginCountsAgainstTheAddressThrottle(t *testing.T) {
	e := newEnv(t, startNATS(t), Config{PasswordCost: 4, MaxFailures: 3, FailureWindow: 15 * time.Minute})
	e.addUser(t, "ivan", auth.RoleViewer, "password1")
	secret, _ := e.newToken(t, auth.TokenSpec{Name: "good", Role: auth.RoleViewer})
	handlers := map[string]http.Handler{}
	for _, rt := range e.svc.Routes() {
		handlers[rt.Pattern] = rt.Handler
	}
	post := func(pattern, body, from string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodPost, strings.TrimPrefix(pattern, "POST "), strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.RemoteAddr = from + ":40000"
		w := httptest.NewRecorder()
		handlers[pattern].ServeHTTP(w, req)
		return w
	}
	const tokenRoute, passwordRoute = "POST /api/v1/login/token", "POST /api/v1/login"
	post(passwordRoute, `{"username":"ivan","password":"wrong"}`, "192.0.2.1")
	for i := 0; i < 2; i++ {
		if w := post(tokenRoute, `{"token":"ansf_not-a-token"}`, "192.0.2.1"); w.Code != http.StatusUnauthorized {
			t.Fatalf("bad token %d: HTTP %d", i+1, w.Code)
		}
	}
	for pattern, body := range map[string]string{tokenRoute: `{"token":"` + secret + `"}`, passwordRoute: `{"username":"ivan","password":"password1"}`} {
		if w := post(pattern, body, "192.0.2.1"); w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") == "" {
			t.Errorf("%s from the blocked address: HTTP %d, want 429 with Retry-After", pattern, w.Code)
		}
		if w := post(pattern, body, "192.0.2.2"); w.Code != http.StatusOK {
			t.Errorf("%s from another address: HTTP %d, want 200", pattern, w.Code)
		}
	}
}
