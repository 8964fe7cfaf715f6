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

// CreatedToken answers POST /api/v1/tokens: the stored token and, this
// once, its secret.
type CreatedToken struct {
	*auth.Token
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
	writeJSON(w, http.StatusCreated, CreatedToken{Token: t.Public(), Secret: secret})
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) {
	ts, err := s.tokens.List(r.Context())
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ts)
}

func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) {
	t, err := s.tokens.Revoke(r.Context(), r.PathValue("id"), actor(r))
	s.audit(r, "token.revoke", "token/"+r.PathValue("id"), err)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}
