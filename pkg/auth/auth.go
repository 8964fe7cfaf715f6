// Package auth is AnsFlow's access model: identities (API tokens, users,
// the in-process system), the roles viewer < operator < admin, grants
// limited to some pipelines, and the HTTP middleware that authenticates a
// request and authorizes it before a handler runs.
//
// What each role may do is documented in docs/security.md; the route table
// of the pipeline service's API states the role and pipeline scope of every
// route.
package auth

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"
)

// Role is what an identity may do. Roles are ordered: each allows what the
// one below it allows.
type Role string

// The roles, lowest first.
const (
	// RoleViewer reads pipelines, runs, logs, runners and the audit trail.
	RoleViewer Role = "viewer"
	// RoleOperator also triggers, cancels and re-runs runs and applies,
	// clones and deletes pipelines.
	RoleOperator Role = "operator"
	// RoleAdmin also manages the registry and cluster catalogues, runners,
	// tokens and users.
	RoleAdmin Role = "admin"
)

var roleRank = map[Role]int{RoleViewer: 1, RoleOperator: 2, RoleAdmin: 3}

// ParseRole returns the role named s.
func ParseRole(s string) (Role, error) {
	r := Role(strings.ToLower(strings.TrimSpace(s)))
	if _, ok := roleRank[r]; !ok {
		return "", fmt.Errorf("role %q: want viewer, operator or admin", s)
	}
	return r, nil
}

// Allows reports whether r includes need.
func (r Role) Allows(need Role) bool {
	have, ok := roleRank[r]
	return ok && have >= roleRank[need]
}

// Identity kinds.
const (
	KindToken  = "token"
	KindUser   = "user"
	KindSystem = "system"
)

// Identity is who made a request, as authenticated.
type Identity struct {
	// Kind is KindToken, KindUser or KindSystem.
	Kind string `json:"kind"`
	// ID is the token's or user's id.
	ID string `json:"id"`
	// Name is the token's name or the user's login.
	Name string `json:"name"`
	Role Role   `json:"role"`
	// Pipelines limits the grant to pipelines whose name matches one of
	// these globs (path.Match syntax); empty means every pipeline.
	Pipelines []string `json:"pipelines,omitempty"`
	// ExpiresAt is when the credential stops being valid (nil: never); a
	// token this identity creates may not outlive it.
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

// Actor is the identity as the audit trail records it:
// "token:ID (NAME)", "user:NAME" or "system".
func (id *Identity) Actor() string {
	if id == nil {
		return "anonymous"
	}
	switch id.Kind {
	case KindToken:
		if id.Name != "" {
			return fmt.Sprintf("token:%s (%s)", id.ID, id.Name)
		}
		return "token:" + id.ID
	case KindUser:
		return "user:" + id.Name
	default:
		return id.Kind
	}
}

// AllPipelines reports whether the grant covers every pipeline (a nil
// identity covers none).
func (id *Identity) AllPipelines() bool { return id != nil && len(id.Pipelines) == 0 }

// Grant describes the pipelines the grant covers, for error messages:
// "every pipeline" or "pipelines web-*,api".
func (id *Identity) Grant() string {
	switch {
	case id == nil:
		return "no pipeline"
	case id.AllPipelines():
		return "every pipeline"
	}
	return "pipelines " + strings.Join(id.Pipelines, ",")
}

// CoversPipeline reports whether the grant covers the pipeline named name.
func (id *Identity) CoversPipeline(name string) bool {
	if id == nil {
		return false
	}
	if id.AllPipelines() {
		return true
	}
	for _, g := range id.Pipelines {
		if ok, _ := path.Match(g, name); ok {
			return true
		}
	}
	return false
}

// Can reports whether id has role need on pipeline ("" for an action on no
// pipeline, which a grant limited to some pipelines does not cover unless
// need is RoleViewer and the action filters what it shows).
func (id *Identity) Can(need Role, pipeline string) bool {
	if id == nil || !id.Role.Allows(need) {
		return false
	}
	if pipeline == "" {
		return id.AllPipelines()
	}
	return id.CoversPipeline(pipeline)
}

// ValidatePipelineGlobs checks grant globs.
func ValidatePipelineGlobs(globs []string) error {
	for _, g := range globs {
		if strings.TrimSpace(g) == "" {
			return errors.New("pipelines: empty pattern")
		}
		if _, err := path.Match(g, ""); err != nil {
			return fmt.Errorf("pipelines: pattern %q: %w", g, err)
		}
	}
	return nil
}

// System is the identity of the in-process AnsFlow (`ansflow run`) and of
// the services' own actions (cron, webhooks with valid signatures).
var System = &Identity{Kind: KindSystem, ID: "system", Name: "system", Role: RoleAdmin}

type ctxKey struct{}

// WithIdentity returns ctx carrying id.
func WithIdentity(ctx context.Context, id *Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext returns the identity ctx carries, or nil.
func FromContext(ctx context.Context) *Identity {
	id, _ := ctx.Value(ctxKey{}).(*Identity)
	return id
}

// Errors an [Authenticator] returns.
var (
	// ErrNoCredentials means the request carries none of the credentials
	// the authenticator reads; the next authenticator is tried.
	ErrNoCredentials = errors.New("no credentials")
	// ErrUnauthenticated means credentials were given but are not valid
	// (unknown, expired or revoked): 401.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrForbidden means the credentials are valid but the request is not
	// allowed (e.g. a cookie request without its CSRF token): 403.
	ErrForbidden = errors.New("forbidden")
)
