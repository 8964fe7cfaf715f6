package webhook

import (
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/ansflow/ansflow/pkg/spec"
)

// FuzzVerify feeds every provider's verification arbitrary headers and
// bodies: it must never panic, never accept a delivery not signed with the
// secret, and always key an accepted one.
func FuzzVerify(f *testing.F) {
	const secret = "fuzz-secret"
	now := time.Unix(1700000000, 0)
	body := []byte(`{"ref":"refs/heads/main","after":"abc"}`)
	ts := strconv.FormatInt(now.Unix(), 10)
	f.Add("github", "sha256="+Sign(secret, body), "", "", body)
	f.Add("gitea", Sign(secret, body), "", "", body)
	f.Add("gitlab", "", "", "", body)
	f.Add("gitlab", SignStandard(secret, "msg_1", now, body), "msg_1", ts, body)
	f.Add("gitlab", "v1,!!! v1,"+SignStandard(secret, "msg_1", now, body)[3:], "msg_1", ts, body)
	f.Add("github", "sha256=zz", "", "", []byte{})
	f.Add("bitbucket", "x", "y", "z", []byte("{"))
	f.Fuzz(func(t *testing.T, provider, sig, id, ts string, body []byte) {
		h := http.Header{}
		h.Set("X-Hub-Signature-256", sig)
		h.Set("X-Gitea-Signature", sig)
		h.Set("X-Gitlab-Token", sig)
		if id != "" || ts != "" {
			h.Set("Webhook-Signature", sig)
			h.Set("Webhook-Id", id)
			h.Set("Webhook-Timestamp", ts)
		}
		d, err := Verify(provider, h, body, secret, now)
		if err != nil {
			return
		}
		if d.Key == "" {
			t.Fatalf("accepted delivery without a key: %+v", d)
		}
		// an accepted delivery must be one the secret signed
		if _, err := Verify(provider, h, body, "other-"+secret, now); err == nil {
			t.Fatalf("%s delivery verifies under two secrets", provider)
		}
	})
}

// FuzzParse feeds the payload parser and the trigger rules arbitrary
// bodies for every event kind: no panic, and a pull request is always
// given an action.
func FuzzParse(f *testing.F) {
	f.Add("push", "", []byte(`{"ref":"refs/heads/main","after":"abc","commits":[{"id":"abc","added":["a"]}]}`))
	f.Add("push", "", []byte(`{"ref":"refs/tags/v1","after":"abc"}`))
	f.Add("pull_request", "", []byte(`{"action":"opened","pull_request":{"head":{"ref":"f","sha":"abc","repo":{"full_name":"a/b"}},"base":{"repo":{"full_name":"a/b"}}}}`))
	f.Add("pull_request", "", []byte(`{"action":"synchronized","pull_request":{"head":{"sha":"abc","repo":null}}}`))
	f.Add("", "Merge Request Hook", []byte(`{"object_attributes":{"action":"open","source_project_id":1,"target_project_id":2,"last_commit":{"id":"abc"}}}`))
	f.Add("", "Push Hook", []byte(`{"ref":"refs/heads/x","checkout_sha":"0000"}`))
	f.Add("pull_request", "", []byte(`{}`))
	f.Add("push", "", []byte(`[`))
	triggers := []*spec.Trigger{
		{Type: "webhook", Events: []string{"push", "tag", "pull_request"}, Branches: []string{"main", "release/**"}, Paths: []string{"src/**"}},
		{Type: "webhook", Events: []string{"pull_request"}, PullRequest: &spec.PullRequestRules{Actions: []string{"closed"}, Forks: spec.ForksRun}},
	}
	f.Fuzz(func(t *testing.T, githubEvent, gitlabEvent string, body []byte) {
		for _, provider := range []string{"github", "gitea", "gitlab"} {
			h := http.Header{}
			h.Set("X-GitHub-Event", githubEvent)
			h.Set("X-Gitea-Event", githubEvent)
			h.Set("X-Gitlab-Event", gitlabEvent)
			p, err := Parse(provider, h, body)
			if err != nil || p == nil {
				continue
			}
			if p.Commit == "" {
				t.Fatalf("%s: push without a commit: %+v", provider, p)
			}
			for _, tr := range triggers {
				ok, why := Match(tr, p)
				if !ok && why == "" {
					t.Fatalf("%s: refused without a reason: %+v", provider, p)
				}
			}
		}
	})
}
