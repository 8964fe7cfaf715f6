package apiv1

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/secret"
)

// CreateTokenRequest is the body of POST /api/v1/tokens.
type CreateTokenRequest struct {
	Name      string   `json:"name,omitempty"`
	Role      string   `json:"role"`
	Pipelines []string `json:"pipelines,omitempty"`
	// ExpiresIn is a lifetime such as "30d" or "12h" ([ParseLifetime]);
	// empty means the token does not expire.
	ExpiresIn string `json:"expires_in,omitempty"`
}

// TokenInfo is an API token as the API shows it: never its secret or hash.
type TokenInfo struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	Role      auth.Role  `json:"role"`
	Pipelines []string   `json:"pipelines,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
	CreatedBy string     `json:"created_by"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	RevokedBy string     `json:"revoked_by,omitempty"`
	// State is "active", "expired" or "revoked" when answered.
	State string `json:"state"`
}

// CreatedToken answers POST /api/v1/tokens: the new token and, this once,
// its secret.
type CreatedToken struct {
	TokenInfo
	Secret string `json:"token"`
}

// ParseLifetime reads a token lifetime: a Go duration ("12h", "90m") or
// days ("30d").
func ParseLifetime(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseFloat(days, 64)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("lifetime %q: want a positive number of days, such as 30d", s)
		}
		return time.Duration(n * float64(24*time.Hour)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("lifetime %q: want a duration such as 30d, 12h or 90m", s)
	}
	return d, nil
}

// SetSecretRequest is the JSON body of PUT on a secret (Content-Type
// application/json); any other body is the value itself.
type SetSecretRequest struct {
	Value   string         `json:"value"`
	Filters secret.Filters `json:"filters"`
}

// SecretInfo is a secret as the API shows it: its metadata, never its
// value.
type SecretInfo = secret.Meta
