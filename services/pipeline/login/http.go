package login

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/auth"
)

// maxBody bounds the JSON bodies these routes read.
const maxBody = 64 << 10

// errLoginFailed is the one answer to a wrong password, an unknown user, a
// disabled user and a user without a password alike.
const errLoginFailed = "invalid username or password"

type errorBody struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, format string, args ...any) {
	writeJSON(w, code, errorBody{Error: fmt.Sprintf(format, args...)})
}

// decodeJSON reads r's JSON body into v, answering the client's mistakes
// itself (415, 413, 400); it reports whether v was filled. A JSON content
// type is required: a cross-site HTML form cannot send one, so a login
// cannot be forged from another site (login CSRF).
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		writeError(w, http.StatusUnsupportedMediaType, "want Content-Type: application/json")
		return false
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, "body over %d bytes", maxBody)
			return false
		}
		writeError(w, http.StatusBadRequest, "decode body: %v", err)
		return false
	}
	return true
}

// clientIP is the address login throttling counts by: the peer's. A
// forwarding header is not trusted, since any client can set it.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func (s *Service) handleLogin(w http.ResponseWriter, r *http.Request) {
	var req apiv1.LoginRequest
	if !decodeJSON(w, r, &req) {
		return
	}
	if req.Username == "" || req.Password == "" {
		writeError(w, http.StatusBadRequest, "username and password are required")
		return
	}
	name, nameErr := normalizeName(req.Username)
	if nameErr != nil {
		// Throttled all the same, though never a user; cut, so that a
		// long made-up name costs no memory.
		name = req.Username[:min(len(req.Username), 128)]
	}
	now := s.now()
	userKey, ipKey := "user:"+name, "ip:"+clientIP(r)
	if wait := max(s.throttle.blocked(now, userKey), s.throttle.blocked(now, ipKey)); wait > 0 {
		s.audit(r, "", actionLogin, "user:"+name, "denied: throttled")
		w.Header().Set("Retry-After", strconv.Itoa(int((wait+time.Second-1)/time.Second)))
		writeError(w, http.StatusTooManyRequests, "too many failed logins; retry in %s", wait.Round(time.Second))
		return
	}
	var u *user
	var rev uint64
	if nameErr == nil {
		var err error
		u, rev, err = s.users.get(r.Context(), name)
		if err != nil && !errors.Is(err, ErrNotFound) {
			s.log.Error("login: read user", zap.Error(err))
			writeError(w, http.StatusServiceUnavailable, "user store unavailable")
			return
		}
	}
	// One bcrypt comparison whatever the case, so that the answer's timing
	// does not tell an unknown name from a wrong password.
	hash := s.dummyHash
	if u != nil && u.PasswordHash != "" {
		hash = []byte(u.PasswordHash)
	}
	select {
	case s.hashSlots <- struct{}{}:
	case <-r.Context().Done():
		return
	}
	match := bcrypt.CompareHashAndPassword(hash, []byte(req.Password)) == nil
	<-s.hashSlots
	if !match || u == nil || u.PasswordHash == "" || u.Disabled {
		s.throttle.fail(now, userKey)
		s.throttle.fail(now, ipKey)
		s.log.Info("login failed", zap.String("user", name), zap.String("client", clientIP(r)))
		s.audit(r, "", actionLogin, "user:"+name, "denied: "+errLoginFailed)
		writeError(w, http.StatusUnauthorized, errLoginFailed)
		return
	}
	s.throttle.reset(userKey)
	s.touchLogin(r, u, rev)
	id, rec, err := s.startSession(r.Context(), w, r, u, methodPassword)
	if err != nil {
		s.log.Error("login: start session", zap.Error(err))
		writeError(w, http.StatusServiceUnavailable, "session store unavailable")
		return
	}
	s.log.Info("login", zap.String("user", u.Name), zap.String("method", methodPassword))
	s.audit(r, u.identity().Actor(), actionLogin, "user:"+u.Name, "ok")
	writeJSON(w, http.StatusOK, apiv1.Session{Identity: u.identity(), CSRFToken: csrfToken(id), ExpiresAt: &rec.ExpiresAt})
}

// maxTokenLen bounds the token a token login looks up: an API token is
// far shorter, and a longer one is refused like an unknown one.
const maxTokenLen = 512

// handleTokenLogin exchanges an API token for a session of the token's
// role and pipelines. Any token that does not verify (unknown, expired,
// revoked) gets the answer of a wrong password and counts against the
// client address's failures.
func (s *Service) handleTokenLogin(w http.ResponseWriter, r *http.Request) {
	var req apiv1.TokenLoginRequest
	if !decodeJSON(w, r, &req) {
		return
	}
	if req.Token == "" {
		writeError(w, http.StatusBadRequest, "token is required")
		return
	}
	now := s.now()
	ipKey := "ip:" + clientIP(r)
	if wait := s.throttle.blocked(now, ipKey); wait > 0 {
		s.audit(r, "", actionLoginToken, "token", "denied: throttled")
		w.Header().Set("Retry-After", strconv.Itoa(int((wait+time.Second-1)/time.Second)))
		writeError(w, http.StatusTooManyRequests, "too many failed logins; retry in %s", wait.Round(time.Second))
		return
	}
	var t *auth.Token
	err := fmt.Errorf("%w: token over %d bytes", auth.ErrUnauthenticated, maxTokenLen)
	if len(req.Token) <= maxTokenLen {
		t, err = s.tokens.Verify(r.Context(), req.Token)
	}
	if errors.Is(err, auth.ErrUnauthenticated) {
		s.throttle.fail(now, ipKey)
		s.log.Info("token login failed", zap.String("client", clientIP(r)), zap.Error(err))
		// Verify's error names a known token's id, never the secret.
		s.audit(r, "", actionLoginToken, "token", "denied: "+err.Error())
		writeError(w, http.StatusUnauthorized, errLoginFailed)
		return
	}
	if err != nil {
		s.log.Error("token login: read token", zap.Error(err))
		writeError(w, http.StatusServiceUnavailable, "token store unavailable")
		return
	}
	id, rec, err := s.startTokenSession(r.Context(), w, r, t)
	if err != nil {
		s.log.Error("token login: start session", zap.Error(err))
		writeError(w, http.StatusServiceUnavailable, "session store unavailable")
		return
	}
	who := t.Identity()
	s.log.Info("login", zap.String("token", t.ID), zap.String("method", methodToken))
	s.audit(r, who.Actor(), actionLoginToken, "token:"+t.ID, "ok")
	writeJSON(w, http.StatusOK, apiv1.Session{Identity: who, CSRFToken: csrfToken(id), ExpiresAt: &rec.ExpiresAt})
}

// touchLogin records u's login time; losing a race with another write
// loses only the time.
func (s *Service) touchLogin(r *http.Request, u *user, rev uint64) {
	now := s.now().UTC()
	u.LastLoginAt = &now
	if err := s.users.update(r.Context(), u, rev); err != nil {
		s.log.Debug("login: record login time", zap.Error(err))
	}
}

func (s *Service) handleLogout(w http.ResponseWriter, r *http.Request) {
	id := sessionID(r)
	if id == "" {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if !csrfOK(r, id) {
		writeError(w, http.StatusForbidden, "logout with a session cookie needs the %s header", CSRFHeader)
		return
	}
	actor := ""
	if who, _, err := s.lookup(r.Context(), id); err == nil {
		actor = who.Actor()
	}
	if err := s.sessions.delete(r.Context(), id); err != nil {
		s.log.Error("logout", zap.Error(err))
		writeError(w, http.StatusServiceUnavailable, "session store unavailable")
		return
	}
	if actor != "" {
		s.audit(r, actor, actionLogout, actor, "ok")
	}
	http.SetCookie(w, s.cookie(r, "", time.Time{}))
	w.WriteHeader(http.StatusNoContent)
}

func (s *Service) handleMethods(w http.ResponseWriter, _ *http.Request) {
	m := apiv1.Methods{Password: true, Token: true, OIDC: s.oidc != nil}
	if m.OIDC {
		m.OIDCURL = "/auth/oidc/login"
	}
	writeJSON(w, http.StatusOK, m)
}

func (s *Service) handleMe(w http.ResponseWriter, r *http.Request) {
	id := auth.FromContext(r.Context())
	if id == nil {
		writeError(w, http.StatusUnauthorized, "not authenticated")
		return
	}
	out := apiv1.Session{Identity: id}
	if sid := sessionID(r); sid != "" {
		if who, rec, err := s.lookup(r.Context(), sid); err == nil && who.Kind == id.Kind && who.ID == id.ID {
			out.CSRFToken = csrfToken(sid)
			out.ExpiresAt = &rec.ExpiresAt
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Service) handleListUsers(w http.ResponseWriter, r *http.Request) {
	us, err := s.users.list(r.Context())
	if err != nil {
		s.log.Error("list users", zap.Error(err))
		writeError(w, http.StatusServiceUnavailable, "user store unavailable")
		return
	}
	out := make([]apiv1.User, 0, len(us))
	for _, u := range us {
		out = append(out, u.wire())
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Service) handleCreateUser(w http.ResponseWriter, r *http.Request) {
	var req apiv1.CreateUserRequest
	if !decodeJSON(w, r, &req) {
		return
	}
	name, err := normalizeName(req.Name)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	role, err := auth.ParseRole(string(req.Role))
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if err := auth.ValidatePipelineGlobs(req.Pipelines); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if err := checkPassword(req.Password); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	hash, err := hashPassword(req.Password, s.cfg.PasswordCost)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	u := &user{ID: randomID(16), Name: name, Role: role, Pipelines: req.Pipelines, PasswordHash: hash,
		Disabled: req.Disabled, CreatedAt: s.now().UTC()}
	switch err := s.users.create(r.Context(), u); {
	case errors.Is(err, ErrExists):
		writeError(w, http.StatusConflict, "user %q already exists", name)
		return
	case err != nil:
		s.log.Error("create user", zap.Error(err))
		writeError(w, http.StatusServiceUnavailable, "user store unavailable")
		return
	}
	s.log.Info("user created", zap.String("user", name), zap.String("role", string(role)), zap.String("by", actorOf(r)))
	s.audit(r, actorOf(r), actionUserCreate, "user:"+name, "ok")
	writeJSON(w, http.StatusCreated, u.wire())
}

func (s *Service) handleDeleteUser(w http.ResponseWriter, r *http.Request) {
	name, err := normalizeName(r.PathValue("name"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	switch err := s.users.delete(r.Context(), name); {
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, "user %q not found", name)
		return
	case err != nil:
		s.log.Error("delete user", zap.Error(err))
		writeError(w, http.StatusServiceUnavailable, "user store unavailable")
		return
	}
	s.log.Info("user deleted", zap.String("user", name), zap.String("by", actorOf(r)))
	s.audit(r, actorOf(r), actionUserDelete, "user:"+name, "ok")
	w.WriteHeader(http.StatusNoContent)
}
