package auth_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
)

func TestGuardAuthenticatesThenAuthorizes(t *testing.T) {
	ns := natstest.Run(t)
	ctx := context.Background()
	tokens, err := auth.OpenTokenStore(ctx, ns.JS, 1)
	if err != nil {
		t.Fatal(err)
	}
	mk := func(role auth.Role, pipelines ...string) string {
		s, _, err := tokens.Create(ctx, auth.TokenSpec{Role: role, Pipelines: pipelines}, auth.System)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	viewer, webOp, admin := mk(auth.RoleViewer), mk(auth.RoleOperator, "web-*"), mk(auth.RoleAdmin)
	// A cookie authenticator as the session helper will add: a cookie
	// without its CSRF header is refused by the authenticator itself.
	cookie := auth.AuthenticatorFunc(func(r *http.Request) (*auth.Identity, error) {
		if _, err := r.Cookie("session"); err != nil {
			return nil, auth.ErrNoCredentials
		}
		if r.Header.Get("X-CSRF-Token") == "" {
			return nil, fmt.Errorf("%w: missing CSRF token", auth.ErrForbidden)
		}
		return &auth.Identity{Kind: auth.KindUser, ID: "u1", Name: "ann", Role: auth.RoleViewer}, nil
	})
	var mu sync.Mutex
	var denials []auth.Denial
	g := &auth.Guard{
		Authenticators: []auth.Authenticator{auth.Bearer{Tokens: tokens}, cookie},
		RunPipeline: func(_ context.Context, id string) (string, error) {
			if id == "r1" {
				return "Web-Front", nil
			}
			return "", errors.New("no such run")
		},
		PipelineName: strings.ToLower,
		Denied: func(_ *http.Request, d auth.Denial) {
			mu.Lock()
			denials = append(denials, d)
			mu.Unlock()
		},
	}
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(auth.FromContext(r.Context()))
	})
	mux := http.NewServeMux()
	g.Mount(mux,
		auth.Route{Pattern: "GET /p/{name}", Role: auth.RoleViewer, Scope: auth.ScopePipeline, Handler: echo},
		auth.Route{Pattern: "POST /p/{name}", Role: auth.RoleOperator, Scope: auth.ScopePipeline, Handler: echo},
		auth.Route{Pattern: "GET /r/{id}", Role: auth.RoleViewer, Scope: auth.ScopeRun, Handler: echo},
		auth.Route{Pattern: "GET /global", Role: auth.RoleViewer, Scope: auth.ScopeGlobal, Handler: echo},
		auth.Route{Pattern: "GET /list", Role: auth.RoleViewer, Scope: auth.ScopeFiltered, Handler: echo},
		auth.Route{Pattern: "GET /public", Scope: auth.ScopePublic, Handler: echo},
	)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	for _, c := range []struct {
		method, path, auth string
		cookie, csrf       bool
		want               int
		actor              string
	}{
		{"GET", "/p/web-front", "", false, false, 401, ""},
		{"GET", "/p/web-front", "Bearer ansf_unknown-token-of-enough-length-xx", false, false, 401, ""},
		{"GET", "/p/web-front", "Basic dXNlcjpwdw==", false, false, 401, ""},
		{"GET", "/p/web-front", "Bearer " + viewer, false, false, 200, "token:" + auth.TokenID(viewer) + " (viewer)"},
		{"POST", "/p/web-front", "Bearer " + viewer, false, false, 403, ""},
		{"POST", "/p/web-front", "Bearer " + webOp, false, false, 200, "token:" + auth.TokenID(webOp) + " (operator)"},
		{"POST", "/p/Web-Front", "Bearer " + webOp, false, false, 200, ""},
		{"POST", "/p/mobile", "Bearer " + webOp, false, false, 403, ""},
		{"GET", "/r/r1", "Bearer " + webOp, false, false, 200, ""},
		{"GET", "/r/r2", "Bearer " + webOp, false, false, 403, ""},
		{"GET", "/r/r2", "Bearer " + admin, false, false, 200, ""}, // every pipeline: the handler answers 404
		{"GET", "/global", "Bearer " + webOp, false, false, 403, ""},
		{"GET", "/global", "Bearer " + viewer, false, false, 200, ""},
		{"GET", "/list", "Bearer " + webOp, false, false, 200, ""},
		{"GET", "/public", "", false, false, 200, ""},
		{"GET", "/global", "", true, false, 403, ""},
		{"GET", "/global", "", true, true, 200, "user:ann"},
	} {
		req, _ := http.NewRequest(c.method, srv.URL+c.path, nil)
		if c.auth != "" {
			req.Header.Set("Authorization", c.auth)
		}
		if c.cookie {
			req.AddCookie(&http.Cookie{Name: "session", Value: "s"})
		}
		if c.csrf {
			req.Header.Set("X-CSRF-Token", "t")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var id auth.Identity
		var eb auth.ErrorBody
		if resp.StatusCode == 200 {
			_ = json.NewDecoder(resp.Body).Decode(&id)
		} else {
			_ = json.NewDecoder(resp.Body).Decode(&eb)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("%s %s (%.20s): %d %q, want %d", c.method, c.path, c.auth, resp.StatusCode, eb.Error, c.want)
			continue
		}
		if c.want == 401 && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s %s: 401 without WWW-Authenticate: Bearer", c.method, c.path)
		}
		if c.want != 200 && eb.Error == "" {
			t.Errorf("%s %s: %d without a JSON error", c.method, c.path, c.want)
		}
		if c.actor != "" && id.Actor() != c.actor {
			t.Errorf("%s %s: handler saw %q, want %q", c.method, c.path, id.Actor(), c.actor)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(denials) != 8 {
		t.Errorf("%d denials reported, want 8", len(denials))
	}
	for _, d := range denials {
		for _, secret := range []string{viewer, webOp, admin} {
			if strings.Contains(d.Reason, secret) {
				t.Errorf("denial reason holds a token: %q", d.Reason)
			}
		}
	}
}
