// Package webhook receives Git provider webhooks (GitHub, GitLab, Gitea):
// it verifies each delivery's signature with the pipeline's secret in
// constant time, checks a signed timestamp where the provider sends one,
// matches the pipeline's trigger rules (events, branches, paths, pull
// request actions and forks), and turns the payload into a run whose Git
// variables are marked untrusted. The run's id is derived from the signed
// content of the delivery, so a replayed delivery finds the run it started
// instead of starting another, whatever unsigned delivery id it carries.
package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// ErrSignature is wrapped by every verification failure.
var ErrSignature = errors.New("signature verification failed")

// TimestampTolerance is how far a signed Standard Webhooks timestamp
// (webhook-timestamp) may be from the receiver's clock, either way.
const TimestampTolerance = 5 * time.Minute

// Delivery names one verified delivery.
type Delivery struct {
	// ID is the provider's delivery id header (X-GitHub-Delivery,
	// X-Gitea-Delivery, X-Gitlab-Event-UUID or webhook-id), for people and
	// the audit trail. Only webhook-id is covered by a signature: the
	// others must never decide whether a delivery is new.
	ID string
	// Key identifies the delivery by what its signature covers: the
	// SHA-256 of the body for HMAC-of-body providers and GitLab tokens, the
	// signed webhook-id for Standard Webhooks (whose retries carry the same
	// id under a fresh timestamp). A replay of a captured delivery has the
	// same Key whatever headers an attacker changes.
	Key string
}

// Verify checks a delivery's signature headers for provider against secret
// at time now and returns the delivery's names. Every failure wraps
// [ErrSignature]; the returned Delivery carries the unsigned ID even then,
// for the audit trail.
func Verify(provider string, h http.Header, body []byte, secret string, now time.Time) (Delivery, error) {
	var d Delivery
	if secret == "" {
		return d, fmt.Errorf("%w: the pipeline has no secret configured", ErrSignature)
	}
	bodyKey := func() string {
		sum := sha256.Sum256(body)
		return "sha256-" + hex.EncodeToString(sum[:16])
	}
	switch provider {
	case "github":
		d.ID = h.Get("X-GitHub-Delivery")
		sig := h.Get("X-Hub-Signature-256")
		if !strings.HasPrefix(sig, "sha256=") {
			return d, fmt.Errorf("%w: missing X-Hub-Signature-256", ErrSignature)
		}
		if !equalHex(sig[len("sha256="):], mac(secret, body)) {
			return d, fmt.Errorf("%w: X-Hub-Signature-256 does not match", ErrSignature)
		}
		d.Key = bodyKey()
	case "gitea":
		d.ID = h.Get("X-Gitea-Delivery")
		sig := h.Get("X-Gitea-Signature")
		if sig == "" {
			return d, fmt.Errorf("%w: missing X-Gitea-Signature", ErrSignature)
		}
		if !equalHex(sig, mac(secret, body)) {
			return d, fmt.Errorf("%w: X-Gitea-Signature does not match", ErrSignature)
		}
		d.Key = bodyKey()
	case "gitlab":
		d.ID = h.Get("X-Gitlab-Event-UUID")
		if d.ID == "" {
			d.ID = h.Get("Webhook-Id")
		}
		if sig := h.Get("Webhook-Signature"); sig != "" {
			return verifyStandard(h, body, secret, sig, now)
		}
		tok := h.Get("X-Gitlab-Token")
		if tok == "" {
			return d, fmt.Errorf("%w: missing X-Gitlab-Token", ErrSignature)
		}
		if subtle.ConstantTimeCompare([]byte(tok), []byte(secret)) != 1 {
			return d, fmt.Errorf("%w: X-Gitlab-Token does not match", ErrSignature)
		}
		d.Key = bodyKey()
	default:
		return d, fmt.Errorf("%w: unknown provider %q", ErrSignature, provider)
	}
	return d, nil
}

// verifyStandard checks a Standard Webhooks signature
// ("v1,<base64 HMAC-SHA256 of id.timestamp.body>", several separated by
// spaces during key rotation) and its timestamp.
func verifyStandard(h http.Header, body []byte, secret, sig string, now time.Time) (Delivery, error) {
	id, ts := h.Get("Webhook-Id"), h.Get("Webhook-Timestamp")
	d := Delivery{ID: id}
	if id == "" || ts == "" {
		return d, fmt.Errorf("%w: webhook-signature without webhook-id and webhook-timestamp", ErrSignature)
	}
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(id + "." + ts + "."))
	m.Write(body)
	want := m.Sum(nil)
	ok := false
	for _, part := range strings.Fields(sig) {
		if v, found := strings.CutPrefix(part, "v1,"); found {
			got, err := base64.StdEncoding.DecodeString(v)
			if err == nil && hmac.Equal(got, want) {
				ok = true
			}
		}
	}
	if !ok {
		return d, fmt.Errorf("%w: webhook-signature does not match", ErrSignature)
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return d, fmt.Errorf("%w: webhook-timestamp %q is not a number of seconds", ErrSignature, ts)
	}
	if skew := now.Sub(time.Unix(sec, 0)); skew > TimestampTolerance || skew < -TimestampTolerance {
		return d, fmt.Errorf("%w: webhook-timestamp is %s away from now, over the %s tolerance", ErrSignature, skew.Round(time.Second), TimestampTolerance)
	}
	sum := sha256.Sum256([]byte("webhook-id\n" + id))
	d.Key = "swh-" + hex.EncodeToString(sum[:16])
	return d, nil
}

func mac(secret string, body []byte) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return m.Sum(nil)
}

func equalHex(got string, want []byte) bool {
	b, err := hex.DecodeString(strings.TrimSpace(got))
	return err == nil && hmac.Equal(b, want)
}

// Sign returns the GitHub/Gitea style hex HMAC-SHA256 of body (for tests
// and clients).
func Sign(secret string, body []byte) string { return hex.EncodeToString(mac(secret, body)) }

// SignStandard returns a Standard Webhooks webhook-signature value for id,
// timestamp ts and body (for tests and clients).
func SignStandard(secret, id string, ts time.Time, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(id + "." + strconv.FormatInt(ts.Unix(), 10) + "."))
	m.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}
