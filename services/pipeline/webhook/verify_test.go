package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"testing"
)

func TestVerifyEveryProvider(t *testing.T) {
	body := []byte(`{"ref":"refs/heads/main"}`)
	const secret = "k3y"
	std := func(id, ts string, key string) string {
		m := hmac.New(sha256.New, []byte(key))
		m.Write([]byte(id + "." + ts + "."))
		m.Write(body)
		return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
	}
	cases := []struct {
		name, provider string
		h              http.Header
		ok             bool
		delivery       string
	}{
		{"github", "github", http.Header{"X-Hub-Signature-256": {"sha256=" + Sign(secret, body)}, "X-Github-Delivery": {"g1"}}, true, "g1"},
		{"github wrong", "github", http.Header{"X-Hub-Signature-256": {"sha256=" + Sign("nope", body)}}, false, ""},
		{"github sha1 only", "github", http.Header{"X-Hub-Signature": {"sha1=abc"}}, false, ""},
		{"gitea", "gitea", http.Header{"X-Gitea-Signature": {Sign(secret, body)}, "X-Gitea-Delivery": {"t1"}}, true, "t1"},
		{"gitea missing", "gitea", http.Header{}, false, ""},
		{"gitlab token", "gitlab", http.Header{"X-Gitlab-Token": {secret}, "X-Gitlab-Event-Uuid": {"l1"}}, true, "l1"},
		{"gitlab wrong token", "gitlab", http.Header{"X-Gitlab-Token": {"k3"}}, false, ""},
		{"gitlab signed", "gitlab", http.Header{"Webhook-Id": {"w1"}, "Webhook-Timestamp": {"1700000000"}, "Webhook-Signature": {"v1,bad= " + std("w1", "1700000000", secret)}}, true, "w1"},
		{"gitlab signed, wrong key", "gitlab", http.Header{"Webhook-Id": {"w2"}, "Webhook-Timestamp": {"1"}, "Webhook-Signature": {std("w2", "1", "other")}, "X-Gitlab-Token": {secret}}, false, ""},
		{"gitlab signed, replayed timestamp changed", "gitlab", http.Header{"Webhook-Id": {"w3"}, "Webhook-Timestamp": {"2"}, "Webhook-Signature": {std("w3", "1", secret)}}, false, ""},
	}
	for _, c := range cases {
		d, err := Verify(c.provider, c.h, body, secret)
		if c.ok != (err == nil) {
			t.Errorf("%s: err = %v", c.name, err)
		}
		if err != nil && !errors.Is(err, ErrSignature) {
			t.Errorf("%s: error %v does not wrap ErrSignature", c.name, err)
		}
		if c.ok && d != c.delivery {
			t.Errorf("%s: delivery %q, want %q", c.name, d, c.delivery)
		}
	}
	if _, err := Verify("github", http.Header{"X-Hub-Signature-256": {"sha256=" + Sign("", body)}}, body, ""); err == nil {
		t.Error("an empty secret verified a delivery")
	}
}
