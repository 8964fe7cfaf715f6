package webhook_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/services/pipeline/pipelinetest"
	"github.com/ansflow/ansflow/services/pipeline/service"
	"github.com/ansflow/ansflow/services/pipeline/store"
	"github.com/ansflow/ansflow/services/pipeline/webhook"
)

const pipelineYAML = `pipeline:
  name: web
  triggers:
    - type: webhook
      provider: github
      secret_env: ANSFLOW_WEBHOOK_WEB
      events: [push]
      branches: ["main", "release/*"]
      paths: ["src/**"]
    - type: webhook
      provider: gitlab
      secret_env: ANSFLOW_WEBHOOK_WEB
    - type: webhook
      provider: gitea
      secret_env: ANSFLOW_WEBHOOK_WEB
    - type: cron
      schedule: "*/5 * * * *"
      branch: main
  steps:
    - name: show
      type: docker_run
      command: "echo {{git_branch}}"
`

const secret = "s3cret-hook-key"

type fixture struct {
	svc *service.Service
	srv *httptest.Server
}

func setup(t testing.TB) *fixture {
	t.Helper()
	env := pipelinetest.Start(t)
	env.Svc.Hooks.Secret = func(name string) string {
		if name == "ANSFLOW_WEBHOOK_WEB" {
			return secret
		}
		return ""
	}
	p, err := spec.Parse("web.yaml", []byte(pipelineYAML))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Svc.Store.PutPipeline(context.Background(), p, pipelineYAML, "test"); err != nil {
		t.Fatal(err)
	}
	return &fixture{svc: env.Svc, srv: env.Srv}
}

func pushBody(branch, message string, changed ...string) []byte {
	b, _ := json.Marshal(map[string]any{
		"ref": "refs/heads/" + branch, "after": "0123456789abcdef0123456789abcdef01234567",
		"repository":  map[string]any{"clone_url": "file:///nonexistent/repo.git"},
		"head_commit": map[string]any{"message": message, "author": map[string]any{"name": "Mallory"}},
		"commits":     []any{map[string]any{"id": "0123456789abcdef0123456789abcdef01234567", "modified": changed}},
	})
	return b
}

func (f *fixture) post(t *testing.T, provider string, body []byte, headers map[string]string) (int, apiv1.WebhookResponse) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/webhooks/"+provider+"/web", bytes.NewReader(body))
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r apiv1.WebhookResponse
	_ = json.NewDecoder(resp.Body).Decode(&r)
	return resp.StatusCode, r
}

// bodyKey is the replay key of a body signed over as a whole.
func bodyKey(body []byte) string {
	sum := sha256.Sum256(body)
	return "sha256-" + hex.EncodeToString(sum[:16])
}

func github(body []byte, delivery string) map[string]string {
	return map[string]string{"X-GitHub-Event": "push", "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": "sha256=" + webhook.Sign(secret, body)}
}

func (f *fixture) runs(t *testing.T) []*store.Run {
	t.Helper()
	runs, err := f.svc.Store.ListRuns(context.Background(), store.RunFilter{Pipeline: "web"})
	if err != nil {
		t.Fatal(err)
	}
	return runs
}

func TestGitHubPushTriggersOnceWithUntrustedVariables(t *testing.T) {
	f := setup(t)
	branch := `zzz";echo${IFS}"hello";#`
	// the trigger only allows main and release/*: use release/<evil>
	body := pushBody("release/"+branch, "$(touch /tmp/pwned)", "src/app.go")
	code, resp := f.post(t, "github", body, github(body, "d-1"))
	if code != http.StatusAccepted || resp.Status != "accepted" {
		t.Fatalf("delivery: %d %+v", code, resp)
	}
	// the answer names the run, which exists by the time it is sent
	runs := f.runs(t)
	if len(runs) != 1 {
		t.Fatalf("%d runs, want 1", len(runs))
	}
	r := runs[0]
	if resp.RunID != r.ID || resp.RunURL != "/api/v1/runs/"+r.ID || resp.RunID != webhook.RunID("github", "web", bodyKey(body)) {
		t.Errorf("answer names run %q at %q, want %q", resp.RunID, resp.RunURL, r.ID)
	}
	for _, k := range []string{"git_branch", "git_message", "git_author", "git_commit", "git_repo_url"} {
		if !r.Vars[k].Untrusted {
			t.Errorf("%s not marked untrusted", k)
		}
	}
	if r.Vars["git_branch"].Value != "release/"+branch || r.Vars["git_message"].Value != "$(touch /tmp/pwned)" || r.Trigger.Kind != "webhook" || r.BuildNumber != 1 {
		t.Errorf("run vars/trigger = %+v %+v", r.Vars, r.Trigger)
	}
	// replay: same delivery id, nothing new; nor under a fresh delivery id
	for _, id := range []string{"d-1", "d-1-fresh"} {
		code, resp = f.post(t, "github", body, github(body, id))
		if code != http.StatusOK || resp.Status != "duplicate" || resp.RunID != r.ID || resp.RunURL != "/api/v1/runs/"+r.ID {
			t.Errorf("replay as %s: %d %+v, want duplicate naming run %s", id, code, resp, r.ID)
		}
	}
	if n := len(f.runs(t)); n != 1 {
		t.Errorf("replay triggered: %d runs", n)
	}
	// the step's command got the value as an environment reference
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		got, _ := f.svc.Store.GetRun(context.Background(), r.ID)
		if got.Terminal() {
			if out := got.Steps[0].Logs.Stdout; out != "\"${ANSFLOW_GIT_BRANCH}\"\n" {
				t.Errorf("command saw %q", out)
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Error("run did not finish")
}

func TestBadSignaturesAreRejected(t *testing.T) {
	f := setup(t)
	body := pushBody("main", "hi", "src/a.go")
	cases := map[string]map[string]string{
		"unsigned":      {"X-GitHub-Event": "push", "X-GitHub-Delivery": "x1"},
		"wrong secret":  {"X-GitHub-Event": "push", "X-GitHub-Delivery": "x2", "X-Hub-Signature-256": "sha256=" + webhook.Sign("guess", body)},
		"not hex":       {"X-GitHub-Event": "push", "X-GitHub-Delivery": "x3", "X-Hub-Signature-256": "sha256=zz"},
		"tampered body": github(pushBody("main", "other", "src/a.go"), "x4"),
	}
	for name, h := range cases {
		if code, resp := f.post(t, "github", body, h); code != http.StatusUnauthorized || resp.Status != "rejected" {
			t.Errorf("%s: %d %+v", name, code, resp)
		}
	}
	if code, _ := f.post(t, "gitlab", body, map[string]string{"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "nope"}); code != http.StatusUnauthorized {
		t.Errorf("gitlab bad token: %d", code)
	}
	big := bytes.Repeat([]byte("x"), webhook.MaxBody+10)
	if code, _ := f.post(t, "github", big, github(big, "big")); code != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized body: %d", code)
	}
	if n := len(f.runs(t)); n != 0 {
		t.Errorf("rejected deliveries triggered %d runs", n)
	}
}

func TestTriggerRulesAndOtherProviders(t *testing.T) {
	f := setup(t)
	for name, body := range map[string][]byte{
		"branch not listed": pushBody("feature/x", "m", "src/a.go"),
		"path not matched":  pushBody("main", "m", "docs/readme.md"),
	} {
		code, resp := f.post(t, "github", body, github(body, name))
		if code != http.StatusAccepted || resp.Status != "ignored" || resp.Reason == "" {
			t.Errorf("%s: %d %+v", name, code, resp)
		}
	}
	body := pushBody("main", "from gitlab")
	if code, resp := f.post(t, "gitlab", body, map[string]string{"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": secret, "X-Gitlab-Event-UUID": "g-1"}); code != http.StatusAccepted || resp.Status != "accepted" {
		t.Errorf("gitlab: %d %+v", code, resp)
	}
	body = pushBody("main", "from gitea")
	if code, resp := f.post(t, "gitea", body, map[string]string{"X-Gitea-Event": "push", "X-Gitea-Delivery": "t-1", "X-Gitea-Signature": webhook.Sign(secret, body)}); code != http.StatusAccepted || resp.Status != "accepted" {
		t.Errorf("gitea: %d %+v", code, resp)
	}
	runs := f.runs(t)
	if len(runs) != 2 {
		t.Fatalf("%d runs, want 2", len(runs))
	}
	if runs[0].BuildNumber+runs[1].BuildNumber != 3 {
		t.Errorf("build numbers %d, %d: want 1 and 2", runs[0].BuildNumber, runs[1].BuildNumber)
	}
	if !strings.HasPrefix(runs[0].Trigger.Actor, runs[0].Trigger.Provider+" delivery ") {
		t.Errorf("actor = %q", runs[0].Trigger.Actor)
	}
}
