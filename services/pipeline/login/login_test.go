package login

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/pkg/topology"
)

func TestPasswordLoginSetsASessionCookieAndAnswersTheIdentity(t *testing.T) {
	e := newEnv(t, startNATS(t), testConfig())
	alice := e.addUser(t, "alice", auth.RoleOperator, "correct horse", "web-*")
	b := newBrowser(t)

	r := b.login(e.srv.URL, "Alice", "correct horse")
	wantStatus(t, r, http.StatusOK)
	var s apiv1.Session
	r.decode(t, &s)
	if s.Identity.Kind != auth.KindUser || s.Identity.ID != alice.ID || s.Identity.Name != "alice" || s.Identity.Role != auth.RoleOperator ||
		len(s.Identity.Pipelines) != 1 || s.Identity.Pipelines[0] != "web-*" {
		t.Errorf("identity = %+v", s.Identity)
	}
	if len(s.CSRFToken) < 40 || s.ExpiresAt == nil {
		t.Errorf("session answer = %+v, want a CSRF token and an end", s)
	}
	c := sessionCookieOf(r)
	if c == nil {
		t.Fatal("no session cookie")
	}
	if !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Secure || c.Path != "/" || c.MaxAge <= 0 {
		t.Errorf("cookie = %+v, want HttpOnly, SameSite=Lax, not Secure over plain HTTP, Path=/, a Max-Age", c)
	}
	if r.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control = %q", r.Header.Get("Cache-Control"))
	}

	me := b.do(http.MethodGet, e.srv.URL+"/api/v1/me", nil)
	wantStatus(t, me, http.StatusOK)
	var got apiv1.Session
	me.decode(t, &got)
	if got.Identity.Name != "alice" || got.CSRFToken != s.CSRFToken {
		t.Errorf("/me = %+v, want alice with the login's CSRF token", got)
	}

	// Neither the cookie nor the password is anywhere in the buckets.
	for _, bucket := range []string{auth.SessionsBucket, auth.UsersBucket} {
		for _, v := range bucketValues(t, e.js, bucket) {
			if strings.Contains(v, c.Value) || strings.Contains(v, "correct horse") || strings.Contains(v, s.CSRFToken) {
				t.Errorf("bucket %s holds a secret: %s", bucket, v)
			}
		}
	}
}

func TestLoginFailuresLookTheSame(t *testing.T) {
	e := newEnv(t, startNATS(t), Config{PasswordCost: 4, MaxFailures: 100})
	e.addUser(t, "bob", auth.RoleViewer, "right password")
	e.addUser(t, "dora", auth.RoleViewer, "right password")
	u, rev, err := e.svc.users.get(context.Background(), "dora")
	if err != nil {
		t.Fatal(err)
	}
	u.Disabled = true
	if err := e.svc.users.update(context.Background(), u, rev); err != nil {
		t.Fatal(err)
	}
	// An unknown name costs one bcrypt comparison at the cost of a real
	// hash, as a wrong password does.
	if c, err := bcrypt.Cost(e.svc.dummyHash); err != nil || c != 4 {
		t.Errorf("dummy hash cost = %d, %v; want the configured 4", c, err)
	}
	b := newBrowser(t)
	var bodies []string
	for _, c := range []struct{ name, password string }{
		{"bob", "wrong password"}, {"nobody", "right password"}, {"dora", "right password"}, {"Not A Name!", "x"},
	} {
		r := b.login(e.srv.URL, c.name, c.password)
		wantStatus(t, r, http.StatusUnauthorized)
		if sessionCookieOf(r) != nil {
			t.Errorf("%s: a failed login set a session cookie", c.name)
		}
		bodies = append(bodies, string(r.body))
	}
	for _, body := range bodies[1:] {
		if body != bodies[0] {
			t.Errorf("failure answers differ: %q vs %q", body, bodies[0])
		}
	}
	for _, bad := range []struct {
		ctype, body string
		want        int
	}{
		{"text/plain", `{"username":"bob","password":"right password"}`, http.StatusUnsupportedMediaType},
		{"application/x-www-form-urlencoded", "username=bob&password=right+password", http.StatusUnsupportedMediaType},
		{"application/json", `{"username":"bob"}`, http.StatusBadRequest},
		{"application/json", `{"username":"bob","password":"x","extra":1}`, http.StatusBadRequest},
		{"application/json", `not json`, http.StatusBadRequest},
		{"application/json", `{"username":"` + strings.Repeat("a", maxBody) + `"}`, http.StatusRequestEntityTooLarge},
	} {
		resp, err := http.Post(e.srv.URL+"/api/v1/login", bad.ctype, strings.NewReader(bad.body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != bad.want {
			t.Errorf("login with %s %.40q: HTTP %d, want %d", bad.ctype, bad.body, resp.StatusCode, bad.want)
		}
	}
}

func TestCookieIsSecureOverTLSOrWhenConfigured(t *testing.T) {
	js := startNATS(t)
	svc, err := New(context.Background(), testConfig(), js, nil)
	if err != nil {
		t.Fatal(err)
	}
	tlsSrv := httptest.NewTLSServer(mount(svc.Routes(), svc))
	t.Cleanup(tlsSrv.Close)
	e := &env{svc: svc, srv: tlsSrv, js: js}
	e.addUser(t, "carol", auth.RoleViewer, "password1")
	b := newBrowser(t)
	b.c.Transport = tlsSrv.Client().Transport
	r := b.login(tlsSrv.URL, "carol", "password1")
	wantStatus(t, r, http.StatusOK)
	if c := sessionCookieOf(r); c == nil || !c.Secure || !c.HttpOnly {
		t.Errorf("cookie over TLS = %+v, want Secure and HttpOnly", c)
	}
	wantStatus(t, b.do(http.MethodGet, tlsSrv.URL+"/api/v1/me", nil), http.StatusOK)

	cfg := testConfig()
	cfg.SecureCookies = true
	behindProxy := newEnv(t, js, cfg)
	r = newBrowser(t).login(behindProxy.srv.URL, "carol", "password1")
	wantStatus(t, r, http.StatusOK)
	if c := sessionCookieOf(r); c == nil || !c.Secure {
		t.Errorf("cookie with SecureCookies = %+v, want Secure", c)
	}
}

func TestStateChangingRequestsWithTheCookieNeedTheCSRFToken(t *testing.T) {
	e := newEnv(t, startNATS(t), testConfig())
	e.addUser(t, "root", auth.RoleAdmin, "password1")
	b := newBrowser(t)
	wantStatus(t, b.login(e.srv.URL, "root", "password1"), http.StatusOK)
	newUser := apiv1.CreateUserRequest{Name: "eve", Role: auth.RoleViewer, Password: "password2"}

	// Reads need no token.
	wantStatus(t, b.do(http.MethodGet, e.srv.URL+"/api/v1/users", nil), http.StatusOK)
	// Changes do, in the header...
	wantStatus(t, b.do(http.MethodPost, e.srv.URL+"/api/v1/users", newUser), http.StatusForbidden)
	wantStatus(t, b.do(http.MethodPost, e.srv.URL+"/api/v1/users", newUser, CSRFHeader, "forged"), http.StatusForbidden)
	wantStatus(t, b.do(http.MethodPost, e.srv.URL+"/test/change", nil), http.StatusForbidden)
	wantStatus(t, b.do(http.MethodDelete, e.srv.URL+"/api/v1/users/root", nil), http.StatusForbidden)
	if _, _, err := e.svc.users.get(context.Background(), "eve"); err == nil {
		t.Fatal("a request without the CSRF token created a user")
	}
	wantStatus(t, b.do(http.MethodPost, e.srv.URL+"/api/v1/users", newUser, CSRFHeader, b.csrf), http.StatusCreated)
	wantStatus(t, b.do(http.MethodPost, e.srv.URL+"/test/change", nil, CSRFHeader, b.csrf), http.StatusNoContent)

	// ... or, for an HTML form, in its csrf_token field.
	form := func(token string) int {
		req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/test/change", strings.NewReader(url.Values{CSRFField: {token}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := b.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := form("forged"); got != http.StatusForbidden {
		t.Errorf("form with a forged token: HTTP %d, want 403", got)
	}
	if got := form(b.csrf); got != http.StatusNoContent {
		t.Errorf("form with the token: HTTP %d, want 204", got)
	}

	// Another session's token is not this session's.
	other := newBrowser(t)
	wantStatus(t, other.login(e.srv.URL, "eve", "password2"), http.StatusOK)
	wantStatus(t, b.do(http.MethodPost, e.srv.URL+"/test/change", nil, CSRFHeader, other.csrf), http.StatusForbidden)

	// Logout too.
	wantStatus(t, b.do(http.MethodPost, e.srv.URL+"/api/v1/logout", nil), http.StatusForbidden)
	wantStatus(t, b.do(http.MethodGet, e.srv.URL+"/api/v1/me", nil), http.StatusOK)
	r := b.do(http.MethodPost, e.srv.URL+"/api/v1/logout", nil, CSRFHeader, b.csrf)
	wantStatus(t, r, http.StatusNoContent)
	if c := sessionCookieOf(r); c == nil || c.MaxAge >= 0 {
		t.Errorf("logout cookie = %+v, want it cleared", c)
	}
	wantStatus(t, b.do(http.MethodGet, e.srv.URL+"/api/v1/me", nil), http.StatusUnauthorized)
}

func TestAuthenticateErrors(t *testing.T) {
	e := newEnv(t, startNATS(t), testConfig())
	e.addUser(t, "frank", auth.RoleViewer, "password1")
	r := newBrowser(t).login(e.srv.URL, "frank", "password1")
	wantStatus(t, r, http.StatusOK)
	cookie := sessionCookieOf(r)
	req := func(method string, c *http.Cookie, csrf string) *http.Request {
		q := httptest.NewRequest(method, "/x", nil)
		if c != nil {
			q.AddCookie(c)
		}
		if csrf != "" {
			q.Header.Set(CSRFHeader, csrf)
		}
		return q
	}
	for _, c := range []struct {
		name string
		req  *http.Request
		want error
	}{
		{"no cookie", req(http.MethodGet, nil, ""), auth.ErrNoCredentials},
		{"unknown session", req(http.MethodGet, &http.Cookie{Name: SessionCookie, Value: newSessionID()}, ""), auth.ErrUnauthenticated},
		{"POST without token", req(http.MethodPost, cookie, ""), auth.ErrForbidden},
		{"PUT with a wrong token", req(http.MethodPut, cookie, "x"), auth.ErrForbidden},
		{"GET", req(http.MethodGet, cookie, ""), nil},
		{"HEAD", req(http.MethodHead, cookie, ""), nil},
		{"DELETE with the token", req(http.MethodDelete, cookie, csrfToken(cookie.Value)), nil},
	} {
		id, err := e.svc.Authenticate(c.req)
		if !errorsIs(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
		if c.want == nil && (id == nil || id.Name != "frank") {
			t.Errorf("%s: identity = %+v", c.name, id)
		}
	}
}

func TestSessionsWorkAcrossInstances(t *testing.T) {
	ns := natstest.Run(t)
	a := newEnv(t, ns.JS, testConfig())
	// The second instance has its own connection, as another process would.
	_, js2 := ns.Connect(t)
	b := newEnv(t, js2, testConfig())
	a.addUser(t, "gina", auth.RoleOperator, "password1")
	br := newBrowser(t)
	wantStatus(t, br.login(a.srv.URL, "gina", "password1"), http.StatusOK)
	// The jar sends the cookie to both: same host, other port.
	wantStatus(t, br.do(http.MethodGet, b.srv.URL+"/api/v1/me", nil), http.StatusOK)
	wantStatus(t, br.do(http.MethodPost, b.srv.URL+"/test/change", nil, CSRFHeader, br.csrf), http.StatusNoContent)
	cookie := jarCookie(t, br, a.srv.URL)
	wantStatus(t, br.do(http.MethodPost, b.srv.URL+"/api/v1/logout", nil, CSRFHeader, br.csrf), http.StatusNoContent)
	// Logged out on b, the session is gone on a at once.
	if _, err := a.svc.Authenticate(withCookie(cookie)); !errorsIs(err, auth.ErrUnauthenticated) {
		t.Errorf("after logout on the other instance: %v, want ErrUnauthenticated", err)
	}
}

func TestSessionsEnd(t *testing.T) {
	js := startNATS(t)
	cfg := testConfig()
	cfg.SessionLifetime = 2 * time.Second
	e := newEnv(t, js, cfg)
	e.addUser(t, "hal", auth.RoleViewer, "password1")
	b := newBrowser(t)
	r := b.login(e.srv.URL, "hal", "password1")
	wantStatus(t, r, http.StatusOK)
	cookie := sessionCookieOf(r)
	if cookie.MaxAge > 2 || cookie.MaxAge < 1 {
		t.Errorf("cookie Max-Age = %d, want the session's 2s", cookie.MaxAge)
	}
	if _, err := e.svc.Authenticate(withCookie(cookie)); err != nil {
		t.Fatalf("fresh session: %v", err)
	}
	// Past its end the session is refused at once, on the service's clock...
	var mu sync.Mutex
	offset := time.Duration(0)
	e.svc.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return time.Now().Add(offset) }
	mu.Lock()
	offset = 3 * time.Second
	mu.Unlock()
	if _, err := e.svc.Authenticate(withCookie(cookie)); !errorsIs(err, auth.ErrUnauthenticated) {
		t.Errorf("ended session: %v, want ErrUnauthenticated", err)
	}
	// ... and the sessions bucket forgets it at the latest after its time
	// to live, which no session lifetime may exceed.
	kv, err := js.KeyValue(context.Background(), auth.SessionsBucket)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.TTL() != topology.SessionsTTL {
		t.Errorf("sessions bucket TTL %s, want %s", st.TTL(), topology.SessionsTTL)
	}
	long := testConfig()
	long.SessionLifetime = topology.SessionsTTL + time.Hour
	if err := long.Validate(); err == nil {
		t.Error("a session lifetime over the bucket's TTL was accepted")
	}
	wantStatus(t, b.do(http.MethodGet, e.srv.URL+"/api/v1/me", nil), http.StatusUnauthorized)
}

func TestLoginIsThrottledPerUserAndPerAddress(t *testing.T) {
	e := newEnv(t, startNATS(t), Config{PasswordCost: 4, MaxFailures: 3, FailureWindow: 15 * time.Minute})
	e.addUser(t, "ivan", auth.RoleViewer, "password1")
	e.addUser(t, "judy", auth.RoleViewer, "password1")
	var mu sync.Mutex
	now := time.Now()
	e.svc.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	var h http.Handler
	for _, rt := range e.svc.Routes() {
		if rt.Pattern == "POST /api/v1/login" {
			h = rt.Handler
		}
	}
	login := func(name, password, from string) *httptest.ResponseRecorder {
		body := `{"username":"` + name + `","password":"` + password + `"}`
		req := httptest.NewRequest(http.MethodPost, "/api/v1/login", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.RemoteAddr = from + ":40000"
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w
	}
	// Per user: three failures from three addresses block ivan everywhere,
	// even with the right password, and not judy.
	for i, from := range []string{"192.0.2.1", "192.0.2.2", "192.0.2.3"} {
		if w := login("ivan", "wrong", from); w.Code != http.StatusUnauthorized {
			t.Fatalf("failure %d: HTTP %d", i+1, w.Code)
		}
	}
	w := login("ivan", "password1", "192.0.2.9")
	if w.Code != http.StatusTooManyRequests {
		t.Fatalf("fourth try: HTTP %d, want 429", w.Code)
	}
	if ra, err := strconv.Atoi(w.Header().Get("Retry-After")); err != nil || ra < 899 || ra > 900 {
		t.Errorf("Retry-After = %q, want the 900 s until the first failure leaves the window", w.Header().Get("Retry-After"))
	}
	if w := login("judy", "password1", "192.0.2.9"); w.Code != http.StatusOK {
		t.Errorf("judy: HTTP %d, want 200", w.Code)
	}
	// The window slides: once the first failure is 15 minutes old, ivan
	// may try again, and a success forgets his failures.
	advance(15*time.Minute + time.Second)
	if w := login("ivan", "password1", "192.0.2.9"); w.Code != http.StatusOK {
		t.Errorf("after the window: HTTP %d, want 200", w.Code)
	}
	// Per address: failures for three names from one address block it
	// for every name.
	for _, name := range []string{"x1", "x2", "x3"} {
		login(name, "wrong", "198.51.100.7")
	}
	if w := login("judy", "password1", "198.51.100.7"); w.Code != http.StatusTooManyRequests {
		t.Errorf("blocked address: HTTP %d, want 429", w.Code)
	}
	if w := login("judy", "password1", "198.51.100.8"); w.Code != http.StatusOK {
		t.Errorf("other address: HTTP %d, want 200", w.Code)
	}
}

func TestUserAdministration(t *testing.T) {
	e := newEnv(t, startNATS(t), testConfig())
	e.addUser(t, "root", auth.RoleAdmin, "password1")
	e.addUser(t, "viewer", auth.RoleViewer, "password1")
	e.addUser(t, "limited", auth.RoleAdmin, "password1", "web-*")
	admin := newBrowser(t)
	wantStatus(t, admin.login(e.srv.URL, "root", "password1"), http.StatusOK)
	post := func(b *browser, body any) response {
		return b.do(http.MethodPost, e.srv.URL+"/api/v1/users", body, CSRFHeader, b.csrf)
	}

	r := post(admin, apiv1.CreateUserRequest{Name: "Kim", Role: auth.RoleOperator, Pipelines: []string{"api-*"}, Password: "s3cret-pass"})
	wantStatus(t, r, http.StatusCreated)
	var kim apiv1.User
	r.decode(t, &kim)
	if kim.Name != "kim" || kim.Role != auth.RoleOperator || kim.Source != apiv1.SourcePassword || kim.ID == "" {
		t.Errorf("created = %+v", kim)
	}
	if strings.Contains(string(r.body), "s3cret-pass") || strings.Contains(string(r.body), "hash") {
		t.Errorf("answer mentions the password: %s", r.body)
	}
	for _, bad := range []struct {
		body any
		want int
	}{
		{apiv1.CreateUserRequest{Name: "kim", Role: auth.RoleViewer, Password: "password9"}, http.StatusConflict},
		{apiv1.CreateUserRequest{Name: "bad name", Role: auth.RoleViewer, Password: "password9"}, http.StatusBadRequest},
		{apiv1.CreateUserRequest{Name: "lee", Role: "root", Password: "password9"}, http.StatusBadRequest},
		{apiv1.CreateUserRequest{Name: "lee", Role: auth.RoleViewer, Password: "short"}, http.StatusBadRequest},
		{apiv1.CreateUserRequest{Name: "lee", Role: auth.RoleViewer, Password: strings.Repeat("p", 73)}, http.StatusBadRequest},
		{apiv1.CreateUserRequest{Name: "lee", Role: auth.RoleViewer, Password: "password9", Pipelines: []string{"["}}, http.StatusBadRequest},
		{map[string]any{"name": "lee", "role": "viewer", "password": "password9", "admin": true}, http.StatusBadRequest},
	} {
		wantStatus(t, post(admin, bad.body), bad.want)
	}

	// Only an admin of every pipeline manages users.
	for _, name := range []string{"viewer", "limited"} {
		b := newBrowser(t)
		wantStatus(t, b.login(e.srv.URL, name, "password1"), http.StatusOK)
		wantStatus(t, b.do(http.MethodGet, e.srv.URL+"/api/v1/users", nil), http.StatusForbidden)
		wantStatus(t, post(b, apiv1.CreateUserRequest{Name: "lee", Role: auth.RoleAdmin, Password: "password9"}), http.StatusForbidden)
	}
	wantStatus(t, newBrowser(t).do(http.MethodGet, e.srv.URL+"/api/v1/users", nil), http.StatusUnauthorized)

	r = admin.do(http.MethodGet, e.srv.URL+"/api/v1/users", nil)
	wantStatus(t, r, http.StatusOK)
	var list []apiv1.User
	r.decode(t, &list)
	var names []string
	for _, u := range list {
		names = append(names, u.Name)
	}
	if strings.Join(names, ",") != "kim,limited,root,viewer" {
		t.Errorf("users = %v", names)
	}
	if strings.Contains(string(r.body), "$2a$") || strings.Contains(string(r.body), "password_hash") {
		t.Errorf("list shows hashes: %s", r.body)
	}

	// A deleted user's sessions end at once, and a new user of the same
	// name does not inherit them.
	kimB := newBrowser(t)
	wantStatus(t, kimB.login(e.srv.URL, "kim", "s3cret-pass"), http.StatusOK)
	wantStatus(t, kimB.do(http.MethodGet, e.srv.URL+"/api/v1/me", nil), http.StatusOK)
	wantStatus(t, admin.do(http.MethodDelete, e.srv.URL+"/api/v1/users/Kim", nil, CSRFHeader, admin.csrf), http.StatusNoContent)
	wantStatus(t, kimB.do(http.MethodGet, e.srv.URL+"/api/v1/me", nil), http.StatusUnauthorized)
	wantStatus(t, post(admin, apiv1.CreateUserRequest{Name: "kim", Role: auth.RoleAdmin, Password: "another-pass"}), http.StatusCreated)
	wantStatus(t, kimB.do(http.MethodGet, e.srv.URL+"/api/v1/me", nil), http.StatusUnauthorized)
	wantStatus(t, admin.do(http.MethodDelete, e.srv.URL+"/api/v1/users/nobody", nil, CSRFHeader, admin.csrf), http.StatusNotFound)
	wantStatus(t, admin.do(http.MethodDelete, e.srv.URL+"/api/v1/users/"+url.PathEscape("no name"), nil, CSRFHeader, admin.csrf), http.StatusBadRequest)
}

func TestLoginMethods(t *testing.T) {
	e := newEnv(t, startNATS(t), testConfig())
	r := newBrowser(t).do(http.MethodGet, e.srv.URL+"/api/v1/login", nil)
	wantStatus(t, r, http.StatusOK)
	var m apiv1.Methods
	r.decode(t, &m)
	if !m.Password || m.OIDC {
		t.Errorf("methods = %+v, want password only", m)
	}
	for _, rt := range e.svc.Routes() {
		if strings.Contains(rt.Pattern, "/auth/oidc/") {
			t.Errorf("OIDC route %s without OIDC configured", rt.Pattern)
		}
	}
}
