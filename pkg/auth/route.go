package auth

import (
	"fmt"
	"net/http"

	"github.com/ansflow/ansflow/pkg/topology"
)

// Buckets of the access model in JetStream key-value storage (defined in
// the catalogue, package topology). The NATS provisioner creates them; only
// the pipeline service writes them.
const (
	// TokensBucket holds API tokens by id (hashes only, never a token).
	TokensBucket = topology.BucketTokens
	// UsersBucket holds human users (password hashes only).
	UsersBucket = topology.BucketUsers
	// SessionsBucket holds login sessions (hashes of session ids only).
	SessionsBucket = topology.BucketSessions
)

// Scope says which pipeline a route acts on, for grants limited to some
// pipelines.
type Scope int

// Scopes.
const (
	// ScopeGlobal acts on no single pipeline: only a grant on every
	// pipeline covers it.
	ScopeGlobal Scope = iota
	// ScopePipeline acts on the pipeline named by the {name} path value.
	ScopePipeline
	// ScopeRun acts on the pipeline of the run named by the {id} path
	// value.
	ScopeRun
	// ScopeFiltered is a listing that shows only what the grant covers;
	// the handler filters by the request's identity.
	ScopeFiltered
	// ScopePublic needs no identity: the route authenticates by other
	// means (webhook signatures, the login form) or reveals nothing.
	ScopePublic
	// ScopeAny lets every grant with the role call the route: it acts on
	// no stored pipeline (validate, source upload), or its handler checks
	// the pipeline its body names with [Identity.Can] (apply, a clone's
	// new name, a token's grant).
	ScopeAny
)

// String names the scope as docs/security.md does.
func (s Scope) String() string {
	switch s {
	case ScopeGlobal:
		return "global"
	case ScopePipeline:
		return "pipeline"
	case ScopeRun:
		return "run"
	case ScopeFiltered:
		return "filtered"
	case ScopePublic:
		return "public"
	case ScopeAny:
		return "any"
	}
	return fmt.Sprintf("scope(%d)", int(s))
}

// Route is one route of an HTTP API and who may call it.
type Route struct {
	// Pattern is an http.ServeMux pattern with its method,
	// e.g. "GET /api/v1/pipelines/{name}".
	Pattern string
	// Role is the least role that may call the route (ignored for
	// ScopePublic).
	Role    Role
	Scope   Scope
	Handler http.Handler
	// Page marks an HTML page of the web UI: a browser request without
	// any credentials is sent to the login page ([LoginPath], with the
	// page to come back to) instead of a 401, and a refusal is a short
	// text answer instead of a JSON one. A request with a bearer token is
	// answered as on any other route.
	Page bool
}

// LoginPath is the web UI's login page, where a page redirects a browser
// that is not logged in.
const LoginPath = "/login"
