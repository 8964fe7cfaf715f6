package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/auth"
)

func tokenInfo(t *auth.Token, now time.Time) apiv1.TokenInfo {
	return apiv1.TokenInfo{ID: t.ID, Name: t.Name, Role: t.Role, Pipelines: t.Pipelines, CreatedAt: t.CreatedAt, CreatedBy: t.CreatedBy,
		ExpiresAt: t.ExpiresAt, RevokedAt: t.RevokedAt, RevokedBy: t.RevokedBy, State: t.State(now)}
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	var req apiv1.CreateTokenRequest
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
		if d, err = apiv1.ParseLifetime(req.ExpiresIn); err != nil {
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
	writeJSON(w, http.StatusCreated, apiv1.CreatedToken{TokenInfo: tokenInfo(t, time.Now()), Secret: secret})
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) {
	ts, err := s.tokens.List(r.Context())
	if err != nil {
		s.fail(w, err)
		return
	}
	now := time.Now()
	out := make([]apiv1.TokenInfo, 0, len(ts))
	for _, t := range ts {
		out = append(out, tokenInfo(t, now))
	}
	writePage(s, w, r, out, func(t apiv1.TokenInfo) string { return newestFirst(t.CreatedAt, t.ID) })
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
