package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// Authenticator finds who made a request. It returns [ErrNoCredentials]
// when the request carries none of the credentials it reads (the next
// authenticator of a [Guard] is tried), an error wrapping
// [ErrUnauthenticated] for credentials that are not valid, and one wrapping
// [ErrForbidden] for valid credentials used in a way that is not allowed.
// Other errors are failures to check (a store unavailable). Errors never
// contain the credentials.
type Authenticator interface {
	Authenticate(r *http.Request) (*Identity, error)
}

// AuthenticatorFunc adapts a function to [Authenticator].
type AuthenticatorFunc func(r *http.Request) (*Identity, error)

// Authenticate calls f(r).
func (f AuthenticatorFunc) Authenticate(r *http.Request) (*Identity, error) { return f(r) }

// TokenVerifier checks a bearer token; [TokenStore] is one.
type TokenVerifier interface {
	Verify(ctx context.Context, secret string) (*Token, error)
}

// Bearer authenticates `Authorization: Bearer TOKEN` with a
// [TokenVerifier].
type Bearer struct{ Tokens TokenVerifier }

// Authenticate implements [Authenticator].
func (b Bearer) Authenticate(r *http.Request) (*Identity, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return nil, ErrNoCredentials
	}
	scheme, secret, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(secret) == "" {
		return nil, fmt.Errorf("%w: want Authorization: Bearer TOKEN", ErrUnauthenticated)
	}
	t, err := b.Tokens.Verify(r.Context(), strings.TrimSpace(secret))
	if err != nil {
		return nil, err
	}
	return t.Identity(), nil
}

// Denial is a request the [Guard] refused.
type Denial struct {
	// Identity is who was refused; nil when authentication failed.
	Identity *Identity
	// Status is 401, 403 or 500 (the check itself failed).
	Status int
	// Reason says why, without any credential.
	Reason string
	// Route is the pattern of the route refused.
	Route Route
}

// Guard authenticates and authorizes the requests of a route table before
// its handlers run. Its fields are set before it serves and not changed
// afterwards.
type Guard struct {
	// Authenticators are tried in order; the first that finds credentials
	// decides.
	Authenticators []Authenticator
	// RunPipeline resolves a run id to the name of its pipeline, for
	// [ScopeRun] routes and grants limited to some pipelines.
	RunPipeline func(ctx context.Context, runID string) (string, error)
	// PipelineName returns the name grants match for a pipeline named s
	// (the stored form); nil means s itself.
	PipelineName func(s string) string
	// Denied, when set, is told of every refused request (for the audit
	// trail).
	Denied func(r *http.Request, d Denial)
}

// Mount registers every route on mux behind the guard.
func (g *Guard) Mount(mux *http.ServeMux, routes ...Route) {
	for _, rt := range routes {
		mux.Handle(rt.Pattern, g.Handler(rt))
	}
}

// Handler returns rt's handler behind the guard: for a route that is not
// [ScopePublic], a request without valid credentials is answered 401 with
// `WWW-Authenticate: Bearer`, one whose identity lacks the role or the
// pipeline 403; otherwise the handler runs with the identity in the
// request's context ([FromContext]).
func (g *Guard) Handler(rt Route) http.Handler {
	if rt.Scope == ScopePublic {
		return rt.Handler
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, status, reason := g.check(r, rt)
		if status != 0 {
			if g.Denied != nil {
				g.Denied(r, Denial{Identity: id, Status: status, Reason: reason, Route: rt})
			}
			if rt.Page && status == http.StatusUnauthorized && r.Header.Get("Authorization") == "" {
				http.Redirect(w, r, LoginPath+"?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			if status == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="ansflow"`)
			}
			if rt.Page {
				w.Header().Set("Content-Type", "text/plain; charset=utf-8")
				w.Header().Set("X-Content-Type-Options", "nosniff")
				w.WriteHeader(status)
				fmt.Fprintf(w, "%d %s: %s\n", status, http.StatusText(status), reason)
				return
			}
			writeError(w, status, reason)
			return
		}
		ctx := context.WithValue(WithIdentity(r.Context(), id), guardKey{}, &guarded{g: g, rt: rt})
		rt.Handler.ServeHTTP(w, r.WithContext(ctx))
	})
}

type guardKey struct{}

type guarded struct {
	g  *Guard
	rt Route
}

// Deny answers 403 with err's message for a handler that found, past the
// guard, that the identity may not do what the request asks (a pipeline
// named in the body, a filter outside the grant). The refusal is reported
// to the guard's Denied like the guard's own.
func Deny(w http.ResponseWriter, r *http.Request, err error) {
	if gd, ok := r.Context().Value(guardKey{}).(*guarded); ok && gd.g.Denied != nil {
		gd.g.Denied(r, Denial{Identity: FromContext(r.Context()), Status: http.StatusForbidden, Reason: err.Error(), Route: gd.rt})
	}
	writeError(w, http.StatusForbidden, err.Error())
}

// Identify runs the authenticators on r. It returns [ErrNoCredentials]
// when none found credentials.
func (g *Guard) Identify(r *http.Request) (*Identity, error) {
	for _, a := range g.Authenticators {
		id, err := a.Authenticate(r)
		if errors.Is(err, ErrNoCredentials) {
			continue
		}
		if err == nil && id == nil {
			return nil, fmt.Errorf("%w: no identity", ErrUnauthenticated)
		}
		return id, err
	}
	return nil, ErrNoCredentials
}

// check returns the identity and, when the request is refused, its status
// and reason.
func (g *Guard) check(r *http.Request, rt Route) (*Identity, int, string) {
	id, err := g.Identify(r)
	switch {
	case errors.Is(err, ErrNoCredentials):
		return nil, http.StatusUnauthorized, "authentication required: send Authorization: Bearer TOKEN"
	case errors.Is(err, ErrForbidden):
		return id, http.StatusForbidden, err.Error()
	case errors.Is(err, ErrUnauthenticated):
		return nil, http.StatusUnauthorized, err.Error()
	case err != nil:
		return nil, http.StatusInternalServerError, "check credentials: " + err.Error()
	}
	if !id.Role.Allows(rt.Role) {
		return id, http.StatusForbidden, fmt.Sprintf("%s needs role %s; %s has role %s", rt.Pattern, rt.Role, id.Actor(), id.Role)
	}
	if id.AllPipelines() {
		return id, 0, ""
	}
	limited := func(what string) (*Identity, int, string) {
		return id, http.StatusForbidden, fmt.Sprintf("%s: the grant of %s (%s) does not cover %s",
			rt.Pattern, id.Actor(), id.Grant(), what)
	}
	switch rt.Scope {
	case ScopeFiltered, ScopeAny:
		return id, 0, ""
	case ScopePipeline:
		name := r.PathValue("name")
		if name == "" || !id.CoversPipeline(g.canonical(name)) {
			return limited(fmt.Sprintf("pipeline %q", name))
		}
		return id, 0, ""
	case ScopeRun:
		runID := r.PathValue("id")
		if g.RunPipeline == nil || runID == "" {
			return limited("run " + runID)
		}
		p, err := g.RunPipeline(r.Context(), runID)
		if err != nil || !id.CoversPipeline(g.canonical(p)) {
			// A run that does not exist is refused like another
			// pipeline's: a limited grant learns nothing of other runs.
			return limited("run " + runID)
		}
		return id, 0, ""
	default: // ScopeGlobal
		return limited("every pipeline, which this route needs")
	}
}

func (g *Guard) canonical(name string) string {
	if g.PipelineName != nil {
		return g.PipelineName(name)
	}
	return name
}

// ErrorBody is the JSON of the guard's refusals, the shape of the API's
// errors.
type ErrorBody struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(ErrorBody{Error: msg})
}

// BearerTransport is an http.RoundTripper that sends Token as
// `Authorization: Bearer` on every request (none when Token is empty) over
// Base (http.DefaultTransport when nil).
type BearerTransport struct {
	Token string
	Base  http.RoundTripper
}

// RoundTrip implements http.RoundTripper.
func (t *BearerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	if t.Token == "" || req.Header.Get("Authorization") != "" {
		return base.RoundTrip(req)
	}
	req = req.Clone(req.Context())
	req.Header.Set("Authorization", "Bearer "+t.Token)
	return base.RoundTrip(req)
}
