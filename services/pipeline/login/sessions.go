package login

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Cookie and header names.
const (
	// SessionCookie holds the session id.
	SessionCookie = "ansflow_session"
	// CSRFHeader carries the session's CSRF token on state-changing
	// requests made with the session cookie.
	CSRFHeader = "X-CSRF-Token"
	// CSRFField is the form field that carries it for HTML forms.
	CSRFField = "csrf_token"
)

// Login methods a session records.
const (
	methodPassword = "password"
	methodOIDC     = "oidc"
	methodToken    = "token"
)

// session is a session as stored in [auth.SessionsBucket], under the hash
// of its id: the id itself (the cookie's value) is never stored. A token
// login's session has TokenID (and the token's name as User) instead of a
// user.
type session struct {
	UserID    string    `json:"user_id,omitempty"`
	User      string    `json:"user"`
	TokenID   string    `json:"token_id,omitempty"`
	Method    string    `json:"method"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// newSessionID returns a random session id: 256 bits, URL-safe.
func newSessionID() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// sessionKey is the bucket key of a session id: its SHA-256, so that
// reading the bucket yields no usable cookie.
func sessionKey(id string) string {
	h := sha256.Sum256([]byte(id))
	return "s." + hex.EncodeToString(h[:])
}

// csrfToken is the session's CSRF token, derived from its id, so it needs
// no storage, is the same on every instance, and cannot be computed
// without the cookie that a cross-site page cannot read.
func csrfToken(id string) string {
	m := hmac.New(sha256.New, []byte(id))
	m.Write([]byte("ansflow csrf v1"))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// sessions is the session store. It is safe for concurrent use.
type sessions struct{ kv jetstream.KeyValue }

func (s sessions) put(ctx context.Context, id string, rec *session) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode session: %w", err)
	}
	if _, err := s.kv.Create(ctx, sessionKey(id), b); err != nil {
		return fmt.Errorf("store session: %w", err)
	}
	return nil
}

// get returns the session with id; ErrNotFound if there is none (never
// was, logged out, or removed by the bucket's TTL).
func (s sessions) get(ctx context.Context, id string) (*session, error) {
	e, err := s.kv.Get(ctx, sessionKey(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("session: %w", ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read session: %w", err)
	}
	var rec session
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return nil, fmt.Errorf("decode session: %w", err)
	}
	return &rec, nil
}

func (s sessions) delete(ctx context.Context, id string) error {
	if err := s.kv.Purge(ctx, sessionKey(id)); err != nil {
		return fmt.Errorf("delete session: %w", err)
	}
	return nil
}

// sessionID returns the request's session cookie value, or "".
func sessionID(r *http.Request) string {
	c, err := r.Cookie(SessionCookie)
	if err != nil {
		return ""
	}
	return c.Value
}

// safeMethod reports whether m changes nothing, by HTTP's rules.
func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// csrfOK reports whether r carries the CSRF token of session id, in the
// header or, for a URL-encoded HTML form, in its csrf_token field.
func csrfOK(r *http.Request, id string) bool {
	got := r.Header.Get(CSRFHeader)
	if got == "" && isForm(r) {
		got = r.PostFormValue(CSRFField)
	}
	want := csrfToken(id)
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

func isForm(r *http.Request) bool {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return err == nil && mt == "application/x-www-form-urlencoded"
}

// CSRFToken returns the CSRF token of the session r's cookie names, or ""
// without one: a page of the web UI gives it to its scripts, which send it
// as the CSRFHeader of every state-changing request.
func CSRFToken(r *http.Request) string {
	id := sessionID(r)
	if id == "" {
		return ""
	}
	return csrfToken(id)
}
