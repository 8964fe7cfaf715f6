package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"
)

func TestVerifyEveryProvider(t *testing.T) {
	body := []byte(`{"ref":"refs/heads/main"}`)
	const secret = "k3y"
	now := time.Unix(1700000000, 0)
	ts := strconv.FormatInt(now.Unix(), 10)
	old := strconv.FormatInt(now.Add(-TimestampTolerance-time.Second).Unix(), 10)
	future := strconv.FormatInt(now.Add(TimestampTolerance+time.Second).Unix(), 10)
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
		{"gitlab signed", "gitlab", http.Header{"Webhook-Id": {"w1"}, "Webhook-Timestamp": {ts}, "Webhook-Signature": {"v1,bad= " + std("w1", ts, secret)}}, true, "w1"},
		{"gitlab signed, stale timestamp", "gitlab", http.Header{"Webhook-Id": {"w4"}, "Webhook-Timestamp": {old}, "Webhook-Signature": {std("w4", old, secret)}}, false, ""},
		{"gitlab signed, future timestamp", "gitlab", http.Header{"Webhook-Id": {"w5"}, "Webhook-Timestamp": {future}, "Webhook-Signature": {std("w5", future, secret)}}, false, ""},
		{"gitlab signed, no timestamp", "gitlab", http.Header{"Webhook-Id": {"w6"}, "Webhook-Signature": {std("w6", "", secret)}}, false, ""},
		{"gitlab signed, timestamp not a number", "gitlab", http.Header{"Webhook-Id": {"w7"}, "Webhook-Timestamp": {"soon"}, "Webhook-Signature": {std("w7", "soon", secret)}}, false, ""},
		{"gitlab signed, wrong key", "gitlab", http.Header{"Webhook-Id": {"w2"}, "Webhook-Timestamp": {"1"}, "Webhook-Signature": {std("w2", "1", "other")}, "X-Gitlab-Token": {secret}}, false, ""},
		{"gitlab signed, replayed timestamp changed", "gitlab", http.Header{"Webhook-Id": {"w3"}, "Webhook-Timestamp": {"2"}, "Webhook-Signature": {std("w3", "1", secret)}}, false, ""},
	}
	for _, c := range cases {
		d, err := Verify(c.provider, c.h, body, secret, now)
		if c.ok != (err == nil) {
			t.Errorf("%s: err = %v", c.name, err)
		}
		if err != nil && !errors.Is(err, ErrSignature) {
			t.Errorf("%s: error %v does not wrap ErrSignature", c.name, err)
		}
		if c.ok && (d.ID != c.delivery || d.Key == "") {
			t.Errorf("%s: delivery %+v, want id %q and a key", c.name, d, c.delivery)
		}
	}
	if _, err := Verify("github", http.Header{"X-Hub-Signature-256": {"sha256=" + Sign("", body)}}, body, "", now); err == nil {
		t.Error("an empty secret verified a delivery")
	}
}

// TestReplayKeyIgnoresUnsignedHeaders: the key that decides whether a
// delivery is new depends only on what the signature covers.
func TestReplayKeyIgnoresUnsignedHeaders(t *testing.T) {
	const secret = "k3y"
	now := time.Now()
	body := []byte(`{"ref":"refs/heads/main","after":"abc"}`)
	gh := func(id string, b []byte) http.Header {
		return http.Header{"X-Hub-Signature-256": {"sha256=" + Sign(secret, b)}, "X-Github-Delivery": {id}}
	}
	a, errA := Verify("github", gh("one", body), body, secret, now)
	b, errB := Verify("github", gh("two", body), body, secret, now)
	if errA != nil || errB != nil || a.Key != b.Key || a.ID == b.ID {
		t.Errorf("fresh delivery id changed the key: %+v %+v (%v %v)", a, b, errA, errB)
	}
	other := []byte(`{"ref":"refs/heads/main","after":"abd"}`)
	if c, _ := Verify("github", gh("one", other), other, secret, now); c.Key == a.Key {
		t.Error("two bodies share a key")
	}
	std := func(id string, at time.Time) http.Header {
		return http.Header{"Webhook-Id": {id}, "Webhook-Timestamp": {strconv.FormatInt(at.Unix(), 10)},
			"Webhook-Signature": {SignStandard(secret, id, at, body)}}
	}
	// a retry re-signs the same id under a new timestamp: same key
	x, errX := Verify("gitlab", std("msg_1", now), body, secret, now)
	y, errY := Verify("gitlab", std("msg_1", now.Add(-time.Minute)), body, secret, now)
	z, errZ := Verify("gitlab", std("msg_2", now), body, secret, now)
	if errX != nil || errY != nil || errZ != nil || x.Key != y.Key || x.Key == z.Key {
		t.Errorf("standard webhooks keys %q %q %q (%v %v %v)", x.Key, y.Key, z.Key, errX, errY, errZ)
	}
}
