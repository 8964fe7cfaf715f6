package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ansflow/ansflow/pkg/auth"
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

func tokenInfo(t *auth.Token, now time.Time) TokenInfo {
	return TokenInfo{ID: t.ID, Name: t.Name, Role: t.Role, Pipelines: t.Pipelines, CreatedAt: t.CreatedAt, CreatedBy: t.CreatedBy,
		ExpiresAt: t.ExpiresAt, RevokedAt: t.RevokedAt, RevokedBy: t.RevokedBy, State: t.State(now)}
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

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	var req CreateTokenRequest
	var spec auth.TokenSpec
	b, err := readBody(r, maxBody)
	if err == nil {
		if jerr := json.Unmarshal(b, &req); jerr != nil {
			err = fmt.Errorf("%w: JSON body: %v", errBadRequest, jerr)
		}
	}
	if err == nil {
		spec = auth.TokenSpec{Name: req.Name, Pipelines: req.Pipelines}
		if spec.Role, err = auth.ParseRole(req.Role); err != nil {
			err = fmt.Errorf("%w: %v", errBadRequest, err)
		}
	}
	if err == nil && req.ExpiresIn != "" {
		var d time.Duration
		if d, err = ParseLifetime(req.ExpiresIn); err != nil {
			err = fmt.Errorf("%w: expires_in: %v", errBadRequest, err)
		} else {
			at := time.Now().Add(d).UTC().Truncate(time.Second)
			spec.ExpiresAt = &at
		}
	}
	var secret string
	var t *auth.Token
	if err == nil {
		secret, t, err = s.tokens.Create(r.Context(), spec, auth.FromContext(r.Context()))
	}
	target := "token/"
	if t != nil {
		target += t.ID
	}
	s.audit(r, "token.create", target, err)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, CreatedToken{TokenInfo: tokenInfo(t, time.Now()), Secret: secret})
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) {
	ts, err := s.tokens.List(r.Context())
	if err != nil {
		s.fail(w, err)
		return
	}
	now := time.Now()
	out := make([]TokenInfo, 0, len(ts))
	for _, t := range ts {
		out = append(out, tokenInfo(t, now))
	}
	writePage(s, w, r, out, func(t TokenInfo) string { return newestFirst(t.CreatedAt, t.ID) })
}

func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) {
	t, err := s.tokens.Revoke(r.Context(), r.PathValue("id"), actor(r))
	s.audit(r, "token.revoke", "token/"+r.PathValue("id"), err)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, tokenInfo(t, time.Now()))
}
