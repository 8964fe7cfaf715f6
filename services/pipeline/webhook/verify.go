// Package webhook receives Git provider webhooks (GitHub, GitLab, Gitea):
// it verifies each delivery's signature with the pipeline's secret in
// constant time, matches the pipeline's trigger rules, and turns the
// payload into a run whose Git variables are marked untrusted. The run's id
// is derived from the delivery, so a replayed delivery finds the run it
// started instead of starting another.
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
	"strings"
)

// ErrSignature is wrapped by every verification failure.
var ErrSignature = errors.New("signature verification failed")

// Verify checks a delivery's signature headers for provider against secret
// and returns the provider's delivery id.
func Verify(provider string, h http.Header, body []byte, secret string) (delivery string, err error) {
	if secret == "" {
		return "", fmt.Errorf("%w: the pipeline has no secret configured", ErrSignature)
	}
	switch provider {
	case "github":
		delivery = h.Get("X-GitHub-Delivery")
		sig := h.Get("X-Hub-Signature-256")
		if !strings.HasPrefix(sig, "sha256=") {
			return delivery, fmt.Errorf("%w: missing X-Hub-Signature-256", ErrSignature)
		}
		if !equalHex(sig[len("sha256="):], mac(secret, body)) {
			return delivery, fmt.Errorf("%w: X-Hub-Signature-256 does not match", ErrSignature)
		}
	case "gitea":
		delivery = h.Get("X-Gitea-Delivery")
		sig := h.Get("X-Gitea-Signature")
		if sig == "" {
			return delivery, fmt.Errorf("%w: missing X-Gitea-Signature", ErrSignature)
		}
		if !equalHex(sig, mac(secret, body)) {
			return delivery, fmt.Errorf("%w: X-Gitea-Signature does not match", ErrSignature)
		}
	case "gitlab":
		delivery = h.Get("X-Gitlab-Event-UUID")
		if delivery == "" {
			delivery = h.Get("Webhook-Id")
		}
		if sig := h.Get("Webhook-Signature"); sig != "" {
			// Standard Webhooks: "v1,<base64 HMAC-SHA256 of id.timestamp.body>"
			id, ts := h.Get("Webhook-Id"), h.Get("Webhook-Timestamp")
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
				return delivery, fmt.Errorf("%w: webhook-signature does not match", ErrSignature)
			}
			return delivery, nil
		}
		tok := h.Get("X-Gitlab-Token")
		if tok == "" {
			return delivery, fmt.Errorf("%w: missing X-Gitlab-Token", ErrSignature)
		}
		if subtle.ConstantTimeCompare([]byte(tok), []byte(secret)) != 1 {
			return delivery, fmt.Errorf("%w: X-Gitlab-Token does not match", ErrSignature)
		}
	default:
		return "", fmt.Errorf("unknown provider %q", provider)
	}
	return delivery, nil
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
