package login

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/crypto/bcrypt"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
)

// authenticator is what the API's guard asks of an authenticator (the
// interface pkg/auth defines).
type authenticator interface {
	Authenticate(*http.Request) (*auth.Identity, error)
}

// mount serves routes the way the API's guard does, with authn as the only
// authenticator: public routes as they are; the others need an identity
// with the route's role (and every pipeline for a global route). Tests add
// "POST /test/change", an operator route that changes nothing, to check CSRF
// on a route that is not this package's.
func mount(routes []auth.Route, authn authenticator) *http.ServeMux {
	mux := http.NewServeMux()
	routes = append(routes, auth.Route{Pattern: "POST /test/change", Role: auth.RoleOperator, Scope: auth.ScopeFiltered,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })})
	for _, rt := range routes {
		if rt.Scope == auth.ScopePublic {
			mux.Handle(rt.Pattern, rt.Handler)
			continue
		}
		mux.Handle(rt.Pattern, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id, err := authn.Authenticate(r)
			switch {
			case errors.Is(err, auth.ErrNoCredentials), errors.Is(err, auth.ErrUnauthenticated):
				writeError(w, http.StatusUnauthorized, "unauthenticated")
				return
			case errors.Is(err, auth.ErrForbidden):
				writeError(w, http.StatusForbidden, "%v", err)
				return
			case err != nil:
				writeError(w, http.StatusServiceUnavailable, "%v", err)
				return
			}
			pipeline := ""
			if rt.Scope == auth.ScopeFiltered {
				pipeline = "*"
			}
			if !id.Role.Allows(rt.Role) || (pipeline == "" && !id.Can(rt.Role, "")) {
				writeError(w, http.StatusForbidden, "forbidden")
				return
			}
			rt.Handler.ServeHTTP(w, r.WithContext(auth.WithIdentity(r.Context(), id)))
		}))
	}
	return mux
}

// testConfig is a Config for tests: cheap bcrypt.
func testConfig() Config {
	return Config{PasswordCost: bcrypt.MinCost}
}

// env is a login service on a real JetStream server behind a real HTTP
// server.
type env struct {
	svc *Service
	srv *httptest.Server
	js  jetstream.JetStream
}

func newEnv(t *testing.T, js jetstream.JetStream, cfg Config) *env {
	t.Helper()
	svc, err := New(context.Background(), cfg, js, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	srv := httptest.NewServer(mount(svc.Routes(), svc))
	t.Cleanup(srv.Close)
	return &env{svc: svc, srv: srv, js: js}
}

func startNATS(t *testing.T) jetstream.JetStream {
	t.Helper()
	return natstest.Run(t).JS
}

// addUser stores a password user directly.
func (e *env) addUser(t *testing.T, name string, role auth.Role, password string, pipelines ...string) *user {
	t.Helper()
	h, err := hashPassword(password, bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	u := &user{ID: randomID(16), Name: name, Role: role, Pipelines: pipelines, PasswordHash: h, CreatedAt: time.Now().UTC()}
	if err := e.svc.users.create(context.Background(), u); err != nil {
		t.Fatal(err)
	}
	return u
}

// browser is an HTTP client with a cookie jar and the CSRF token of its
// last login.
type browser struct {
	t    *testing.T
	c    *http.Client
	csrf string
}

func newBrowser(t *testing.T) *browser {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &browser{t: t, c: &http.Client{Jar: jar, Timeout: 30 * time.Second}}
}

// response is a finished HTTP exchange.
type response struct {
	*http.Response
	body []byte
}

func (r response) decode(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

// do sends a request; body, unless nil, is JSON-encoded. headers are
// name, value pairs.
func (b *browser) do(method, url string, body any, headers ...string) response {
	b.t.Helper()
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			b.t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		b.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		b.t.Fatal(err)
	}
	return response{resp, raw}
}

// login logs in with a password and keeps the CSRF token.
func (b *browser) login(base, name, password string) response {
	b.t.Helper()
	r := b.do(http.MethodPost, base+"/api/v1/login", apiv1.LoginRequest{Username: name, Password: password})
	if r.StatusCode == http.StatusOK {
		var s apiv1.Session
		r.decode(b.t, &s)
		b.csrf = s.CSRFToken
	}
	return r
}

func wantStatus(t *testing.T, r response, want int) {
	t.Helper()
	if r.StatusCode != want {
		t.Fatalf("%s %s: HTTP %d %s, want %d", r.Request.Method, r.Request.URL.Path, r.StatusCode, r.body, want)
	}
}

// sessionCookie returns the ansflow_session cookie a response set.
func sessionCookieOf(r response) *http.Cookie {
	for _, c := range r.Cookies() {
		if c.Name == SessionCookie {
			return c
		}
	}
	return nil
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// jarCookie returns the session cookie the browser holds for base.
func jarCookie(t *testing.T, b *browser, base string) *http.Cookie {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range b.c.Jar.Cookies(u) {
		if c.Name == SessionCookie {
			return c
		}
	}
	t.Fatalf("no session cookie for %s", base)
	return nil
}

// withCookie is a GET request carrying c.
func withCookie(c *http.Cookie) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/api/v1/me", nil)
	r.AddCookie(&http.Cookie{Name: c.Name, Value: c.Value})
	return r
}

// errorsIs is errors.Is, with a nil target meaning no error.
func errorsIs(err, target error) bool {
	if target == nil {
		return err == nil
	}
	return errors.Is(err, target)
}

// bucketValues returns every live value of the bucket, as text.
func bucketValues(t *testing.T, js jetstream.JetStream, bucket string) []string {
	t.Helper()
	ctx := context.Background()
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		t.Fatal(err)
	}
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for k := range lister.Keys() {
		out = append(out, k)
		if e, err := kv.Get(ctx, k); err == nil {
			out = append(out, string(e.Value()))
		}
	}
	return out
}
