package login

import (
	"context"
	"errors"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/auth"
)

// oidcEnv is a login service configured for a real OpenID provider on
// loopback, both behind real HTTP servers.
type oidcEnv struct {
	*env
	op *testProvider
}

func newOIDCEnv(t *testing.T) *oidcEnv {
	t.Helper()
	js := startNATS(t)
	// The service's address must be known to register its redirect URL.
	srv := httptest.NewUnstartedServer(nil)
	base := "http://" + srv.Listener.Addr().String()
	op := startProvider(t, "ansflow", "client-secret", base+"/auth/oidc/callback")
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte("client-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.OIDC = OIDCConfig{Issuer: op.Issuer, ClientID: "ansflow", ClientSecretFile: secretFile, RedirectURL: base + "/auth/oidc/callback",
		Roles:     map[string]auth.Role{"ansflow-admins": auth.RoleAdmin, "ci": auth.RoleOperator, "team-web": auth.RoleOperator, "staff": auth.RoleViewer},
		Pipelines: map[string][]string{"team-web": {"web-*"}}, AfterLogin: "/ui/"}
	svc, err := New(context.Background(), cfg, js, nil)
	if err != nil {
		t.Fatal(err)
	}
	mux := mount(svc.Routes(), svc)
	mux.HandleFunc("GET /ui/", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("the UI")) })
	srv.Config.Handler = mux
	srv.Start()
	t.Cleanup(srv.Close)
	return &oidcEnv{env: &env{svc: svc, srv: srv, js: js}, op: op}
}

var hiddenID = regexp.MustCompile(`name="id" value="([^"]+)"`)

// oidcLogin drives the authorization-code flow as a browser would: to
// /auth/oidc/login, redirected to the provider's login form, which it fills
// and posts, redirected back to the callback. It returns the last answer.
func (b *browser) oidcLogin(e *oidcEnv, name, password string) response {
	b.t.Helper()
	form := b.do(http.MethodGet, e.srv.URL+"/auth/oidc/login", nil)
	wantStatus(b.t, form, http.StatusOK)
	if !strings.HasPrefix(form.Request.URL.String(), e.op.URL) {
		b.t.Fatalf("login went to %s, want the provider's form", form.Request.URL)
	}
	m := hiddenID.FindSubmatch(form.body)
	if m == nil {
		b.t.Fatalf("no auth request id in the provider's form: %s", form.body)
	}
	q := url.Values{"id": {html.UnescapeString(string(m[1]))}, "username": {name}, "password": {password}}
	resp, err := b.c.PostForm(e.op.URL+"/login/username", q)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.t.Fatal(err)
	}
	return response{resp, body}
}

func (b *browser) me(e *oidcEnv) (apiv1.Session, int) {
	b.t.Helper()
	r := b.do(http.MethodGet, e.srv.URL+"/api/v1/me", nil)
	var s apiv1.Session
	if r.StatusCode == http.StatusOK {
		r.decode(b.t, &s)
	}
	return s, r.StatusCode
}

func TestOIDCLoginMapsClaimsToRoles(t *testing.T) {
	e := newOIDCEnv(t)
	e.op.users.add("olivia", "staff", "ansflow-admins")
	e.op.users.add("oscar", "team-web", "unrelated")
	e.op.users.add("otto", "ci", "team-web")

	for _, c := range []struct {
		user      string
		role      auth.Role
		pipelines string
	}{
		{"olivia", auth.RoleAdmin, ""},        // the highest mapped role wins
		{"oscar", auth.RoleOperator, "web-*"}, // a value with globs limits the grant
		{"otto", auth.RoleOperator, ""},       // an unlimited value of the same role lifts the limit
	} {
		b := newBrowser(t)
		r := b.oidcLogin(e, c.user, "verysecure")
		wantStatus(t, r, http.StatusOK)
		if r.Request.URL.Path != "/ui/" || string(r.body) != "the UI" {
			t.Errorf("%s: ended at %s (%s), want the UI", c.user, r.Request.URL, r.body)
		}
		s, code := b.me(e)
		if code != http.StatusOK {
			t.Fatalf("%s: /me HTTP %d after login", c.user, code)
		}
		if s.Identity.Kind != auth.KindUser || s.Identity.Name != c.user || s.Identity.Role != c.role || strings.Join(s.Identity.Pipelines, ",") != c.pipelines {
			t.Errorf("%s: identity %+v, want role %s on %q", c.user, s.Identity, c.role, c.pipelines)
		}
		if s.CSRFToken == "" {
			t.Errorf("%s: no CSRF token", c.user)
		}
		// The session cookie works like a password login's.
		wantStatus(t, b.do(http.MethodPost, e.srv.URL+"/test/change", nil, CSRFHeader, s.CSRFToken), http.StatusNoContent)
		wantStatus(t, b.do(http.MethodPost, e.srv.URL+"/test/change", nil), http.StatusForbidden)
	}

	u, _, err := e.svc.users.get(context.Background(), "olivia")
	if err != nil {
		t.Fatal(err)
	}
	if u.Issuer != e.op.Issuer || u.Subject != "id-olivia" || u.PasswordHash != "" || u.wire().Source != apiv1.SourceOIDC {
		t.Errorf("stored OIDC user = %+v", u)
	}
	// An OIDC user has no password to log in with.
	wantStatus(t, newBrowser(t).login(e.srv.URL, "olivia", "verysecure"), http.StatusUnauthorized)

	// The role comes from the claims at each login: olivia leaves the
	// admins, and her next login makes her a viewer.
	e.op.users.setGroups("olivia", "staff")
	b := newBrowser(t)
	wantStatus(t, b.oidcLogin(e, "olivia", "verysecure"), http.StatusOK)
	if s, _ := b.me(e); s.Identity.Role != auth.RoleViewer || s.Identity.ID != u.ID {
		t.Errorf("after losing the admin group: %+v, want the same user as viewer", s.Identity)
	}
}

func TestOIDCLoginWithoutAMappedClaimIsRefused(t *testing.T) {
	e := newOIDCEnv(t)
	e.op.users.add("mallory", "marketing")
	e.op.users.add("nemo") // no groups claim at all
	for _, name := range []string{"mallory", "nemo"} {
		b := newBrowser(t)
		r := b.oidcLogin(e, name, "verysecure")
		wantStatus(t, r, http.StatusForbidden)
		if _, code := b.me(e); code != http.StatusUnauthorized {
			t.Errorf("%s: /me HTTP %d after a refused login, want 401", name, code)
		}
		if _, _, err := e.svc.users.get(context.Background(), name); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: a refused login stored the user (%v)", name, err)
		}
	}
	if vals := bucketValues(t, e.js, auth.SessionsBucket); len(vals) != 0 {
		t.Errorf("refused logins left sessions: %v", vals)
	}
}

func TestOIDCLoginDoesNotTakeOverAPasswordUser(t *testing.T) {
	e := newOIDCEnv(t)
	e.addUser(t, "root", auth.RoleAdmin, "password1")
	e.op.users.add("root", "staff")
	b := newBrowser(t)
	wantStatus(t, b.oidcLogin(e, "root", "verysecure"), http.StatusForbidden)
	if _, code := b.me(e); code != http.StatusUnauthorized {
		t.Errorf("/me HTTP %d, want 401", code)
	}
}

func TestOIDCCallbackChecksTheState(t *testing.T) {
	e := newOIDCEnv(t)
	e.op.users.add("olivia", "ansflow-admins")
	noRedirect := func(b *browser) {
		b.c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	}

	// The login redirects to the provider with state, nonce and PKCE.
	b := newBrowser(t)
	noRedirect(b)
	r := b.do(http.MethodGet, e.srv.URL+"/auth/oidc/login", nil)
	wantStatus(t, r, http.StatusFound)
	to, err := url.Parse(r.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	q := to.Query()
	if !strings.HasPrefix(to.String(), e.op.URL) || q.Get("state") == "" || q.Get("nonce") == "" ||
		q.Get("code_challenge_method") != "S256" || len(q.Get("code_challenge")) != 43 || q.Get("client_id") != "ansflow" {
		t.Fatalf("redirect = %s", to)
	}
	var flowC *http.Cookie
	for _, c := range r.Cookies() {
		if c.Name == flowCookie {
			flowC = c
		}
	}
	if flowC == nil || !flowC.HttpOnly || flowC.SameSite != http.SameSiteLaxMode || flowC.Path != flowPath {
		t.Errorf("flow cookie = %+v", flowC)
	}

	cb := e.srv.URL + "/auth/oidc/callback?"
	// A forged state, a callback in a browser that started no login, a
	// garbled flow cookie, no code, and the provider's refusal.
	wantStatus(t, b.do(http.MethodGet, cb+url.Values{"state": {"forged"}, "code": {"x"}}.Encode(), nil), http.StatusBadRequest)
	wantStatus(t, newBrowser(t).do(http.MethodGet, cb+url.Values{"state": {q.Get("state")}, "code": {"x"}}.Encode(), nil), http.StatusBadRequest)
	wantStatus(t, b.do(http.MethodGet, cb+url.Values{"state": {q.Get("state")}, "code": {"x"}}.Encode(), nil,
		"Cookie", flowCookie+"=garbage"), http.StatusBadRequest)
	b2 := newBrowser(t)
	noRedirect(b2)
	r = b2.do(http.MethodGet, e.srv.URL+"/auth/oidc/login", nil)
	st := mustQuery(t, r.Header.Get("Location")).Get("state")
	wantStatus(t, b2.do(http.MethodGet, cb+url.Values{"state": {st}}.Encode(), nil), http.StatusBadRequest)
	wantStatus(t, b2.do(http.MethodGet, cb+url.Values{"error": {"access_denied"}}.Encode(), nil), http.StatusUnauthorized)

	// The right state with a made-up code: the provider refuses it.
	b3 := newBrowser(t)
	noRedirect(b3)
	r = b3.do(http.MethodGet, e.srv.URL+"/auth/oidc/login", nil)
	st = mustQuery(t, r.Header.Get("Location")).Get("state")
	wantStatus(t, b3.do(http.MethodGet, cb+url.Values{"state": {st}, "code": {"made-up"}}.Encode(), nil), http.StatusUnauthorized)

	// A state from another browser's login does not pass in this one,
	// even with that login's real code.
	victim, attacker := newBrowser(t), newBrowser(t)
	noRedirect(victim)
	wantStatus(t, victim.do(http.MethodGet, e.srv.URL+"/auth/oidc/login", nil), http.StatusFound)
	atk := attacker.oidcFlowUntilCallback(e, "olivia", "verysecure")
	r = victim.do(http.MethodGet, atk, nil)
	wantStatus(t, r, http.StatusBadRequest)
	if _, code := victim.me(e); code != http.StatusUnauthorized {
		t.Errorf("victim logged in with another browser's code: /me HTTP %d", code)
	}
	if vals := bucketValues(t, e.js, auth.SessionsBucket); len(vals) != 0 {
		t.Errorf("refused callbacks left sessions: %v", vals)
	}
}

// oidcFlowUntilCallback runs the flow up to the provider's redirect to the
// callback and returns that URL, code and state, without following it.
func (b *browser) oidcFlowUntilCallback(e *oidcEnv, name, password string) string {
	b.t.Helper()
	var callback string
	b.c.CheckRedirect = func(req *http.Request, _ []*http.Request) error {
		if req.URL.Path == "/auth/oidc/callback" {
			callback = req.URL.String()
			return http.ErrUseLastResponse
		}
		return nil
	}
	b.oidcLogin(e, name, password)
	if callback == "" {
		b.t.Fatal("the provider did not redirect to the callback")
	}
	return callback
}

func mustQuery(t *testing.T, s string) url.Values {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u.Query()
}

func TestOIDCProviderDownAtStart(t *testing.T) {
	// A port nothing listens on: the service starts all the same, and its
	// OIDC logins answer 503 until the provider is reachable.
	l := httptest.NewServer(http.NotFoundHandler())
	issuer := l.URL + "/"
	l.Close()
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte("s"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.OIDC = OIDCConfig{Issuer: issuer, ClientID: "c", ClientSecretFile: secretFile, RedirectURL: "http://127.0.0.1/auth/oidc/callback",
		Roles: map[string]auth.Role{"g": auth.RoleViewer}}
	e := newEnv(t, startNATS(t), cfg)
	b := newBrowser(t)
	wantStatus(t, b.do(http.MethodGet, e.srv.URL+"/auth/oidc/login", nil), http.StatusServiceUnavailable)
	r := b.do(http.MethodGet, e.srv.URL+"/api/v1/login", nil)
	var m apiv1.Methods
	r.decode(t, &m)
	if !m.OIDC || m.OIDCURL != "/auth/oidc/login" {
		t.Errorf("methods = %+v, want OIDC offered", m)
	}

	cfg.OIDC.ClientSecretFile = filepath.Join(t.TempDir(), "missing")
	if _, err := New(context.Background(), cfg, startNATS(t), nil); err == nil || !strings.Contains(err.Error(), "--oidc-client-secret-file") {
		t.Errorf("New with a missing secret file: %v", err)
	}
}
