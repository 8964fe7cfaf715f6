package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/secret"
)

// WithSecrets serves the secrets routes from st; without it they answer
// 503.
func (s *Server) WithSecrets(st *secret.Store) *Server {
	s.secrets = st
	return s
}

var errNoSecretStore = errors.New("this pipeline service has no secret store (start it with --secrets-key-file)")

// secretScope is the scope a secrets route acts on: the global one, or
// the stored pipeline named in the path, which must exist.
func (s *Server) secretScope(r *http.Request) (secret.Scope, error) {
	name := r.PathValue("name")
	if name == "" {
		return secret.Scope{}, nil
	}
	rec, err := s.st.GetPipeline(r.Context(), name)
	if err != nil {
		return secret.Scope{}, err
	}
	return secret.Scope{Pipeline: rec.Name}, nil
}

func secretTarget(sc secret.Scope, name string) string {
	if sc.Pipeline == "" {
		return "secret/global/" + name
	}
	return "secret/pipeline/" + sc.Pipeline + "/" + name
}

func (s *Server) putSecret(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("secret")
	sc, err := s.secretScope(r)
	var meta secret.Meta
	if err == nil && s.secrets == nil {
		err = errNoSecretStore
	}
	var body []byte
	if err == nil {
		body, err = readBody(r, secret.MaxValueBytes*2+maxBody)
	}
	var req apiv1.SetSecretRequest
	if err == nil {
		if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == "application/json" {
			if jerr := json.Unmarshal(body, &req); jerr != nil {
				err = fmt.Errorf("%w: JSON body: want {\"value\": \"...\", \"filters\": {...}}", errBadRequest)
			}
		} else {
			req.Value = string(body)
		}
	}
	if err == nil {
		meta, err = s.secrets.Set(r.Context(), sc, name, []byte(req.Value), req.Filters, actor(r))
	}
	clear(body)
	s.audit(r, "secret.set", secretTarget(sc, name), err)
	if err != nil {
		s.fail(w, secretErr(err))
		return
	}
	writeJSON(w, http.StatusOK, apiv1.SecretInfo(meta))
}

func (s *Server) listSecrets(w http.ResponseWriter, r *http.Request) {
	sc, err := s.secretScope(r)
	if err == nil && s.secrets == nil {
		err = errNoSecretStore
	}
	var list []secret.Meta
	if err == nil {
		list, err = s.secrets.List(r.Context(), sc)
	}
	if err != nil {
		s.fail(w, secretErr(err))
		return
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) deleteSecret(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("secret")
	sc, err := s.secretScope(r)
	if err == nil && s.secrets == nil {
		err = errNoSecretStore
	}
	if err == nil {
		err = s.secrets.Delete(r.Context(), sc, name)
	}
	s.audit(r, "secret.delete", secretTarget(sc, name), err)
	if err != nil {
		s.fail(w, secretErr(err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// errSecretNotFound and errUnavailable let [Server.fail] answer 404 and 503.
var (
	errSecretNotFound = errors.New("not found")
	errUnavailable    = errors.New("unavailable")
)

// secretErr classifies the secret store's errors for [Server.fail].
func secretErr(err error) error {
	switch {
	case errors.Is(err, secret.ErrInvalid):
		return fmt.Errorf("%w: %w", errBadRequest, err)
	case errors.Is(err, secret.ErrNotFound):
		return fmt.Errorf("%w: %w", errSecretNotFound, err)
	case errors.Is(err, errNoSecretStore):
		return fmt.Errorf("%w: %w", errUnavailable, err)
	}
	return err
}
