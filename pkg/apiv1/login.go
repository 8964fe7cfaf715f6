package apiv1

import (
	"time"

	"github.com/ansflow/ansflow/pkg/auth"
)

// LoginRequest is the body of POST /api/v1/login.
type LoginRequest struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// TokenLoginRequest is the body of POST /api/v1/login/token: an API
// token, exchanged for a session cookie with the token's role and
// pipelines.
type TokenLoginRequest struct {
	Token string `json:"token"`
}

// Session answers a login and GET /api/v1/me: who the caller is and, for a
// session, the CSRF token that every state-changing request made with the
// session cookie must carry in the X-CSRF-Token header.
type Session struct {
	Identity *auth.Identity `json:"identity"`
	// CSRFToken is set when the caller is authenticated by a session
	// cookie.
	CSRFToken string `json:"csrf_token,omitempty"`
	// ExpiresAt is when the session ends, for a session.
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

// User is a user as the API shows it (never a password hash).
type User struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Role      auth.Role `json:"role"`
	Pipelines []string  `json:"pipelines,omitempty"`
	Disabled  bool      `json:"disabled,omitempty"`
	// Source is "password" for a user created by an admin, "oidc" for one
	// created by their first OpenID Connect login.
	Source    string    `json:"source"`
	Issuer    string    `json:"issuer,omitempty"`
	Subject   string    `json:"subject,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	// LastLoginAt is the last successful login, if any.
	LastLoginAt *time.Time `json:"last_login_at,omitempty"`
}

// CreateUserRequest is the body of POST /api/v1/users.
type CreateUserRequest struct {
	Name      string    `json:"name"`
	Role      auth.Role `json:"role"`
	Pipelines []string  `json:"pipelines,omitempty"`
	Password  string    `json:"password"`
	Disabled  bool      `json:"disabled,omitempty"`
}

// Sources of a user.
const (
	SourcePassword = "password"
	SourceOIDC     = "oidc"
)

// Methods answers GET /api/v1/login: how one may log in.
type Methods struct {
	Password bool `json:"password"`
	// Token is set when an API token may be exchanged for a session
	// (POST /api/v1/login/token).
	Token   bool   `json:"token"`
	OIDC    bool   `json:"oidc"`
	OIDCURL string `json:"oidc_login_url,omitempty"`
}
