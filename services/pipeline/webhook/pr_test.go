package webhook_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/services/pipeline/pipelinetest"
	"github.com/ansflow/ansflow/services/pipeline/store"
	"github.com/ansflow/ansflow/services/pipeline/webhook"
)

const prYAML = `pipeline:
  name: prs
  triggers:
    - type: webhook
      provider: github
      secret: GH_HOOK
      events: [pull_request]
    - type: webhook
      provider: gitlab
      secret: GH_HOOK
      events: [merge_request]
      pull_request: {forks: run}
    - type: webhook
      provider: gitea
      secret: GH_HOOK
      events: [pull_request]
      pull_request: {forks: ignore}
  steps:
    - name: show
      type: docker_run
      command: "echo {{git_branch}}"
`

type prFixture struct {
	env *pipelinetest.Env
	url string
}

func setupPR(t *testing.T) *prFixture {
	t.Helper()
	env := pipelinetest.Start(t)
	env.Svc.Hooks.Secrets = webhook.SecretSourceFunc(func(_ context.Context, pipeline, name string) (string, error) {
		if pipeline == "prs" && name == "GH_HOOK" {
			return secret, nil
		}
		return "", errors.New("no such secret")
	})
	p, err := spec.Parse("prs.yaml", []byte(prYAML))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Svc.Store.PutPipeline(context.Background(), p, prYAML, "test"); err != nil {
		t.Fatal(err)
	}
	return &prFixture{env: env, url: env.Srv.URL}
}

func (f *prFixture) post(t *testing.T, provider string, body []byte, headers map[string]string) (int, apiv1.WebhookResponse) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, f.url+"/webhooks/"+provider+"/prs", bytes.NewReader(body))
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

func githubPR(action, head, base, sha string) []byte {
	b, _ := json.Marshal(map[string]any{
		"action":     action,
		"repository": map[string]any{"clone_url": "https://example.invalid/" + base + ".git"},
		"pull_request": map[string]any{"title": "change " + sha,
			"head": map[string]any{"ref": "feature", "sha": sha, "repo": map[string]any{"full_name": head}},
			"base": map[string]any{"ref": "main", "sha": "1111111111111111111111111111111111111111", "repo": map[string]any{"full_name": base}}},
	})
	return b
}

func gitlabMR(action string, source, target int, sha string) []byte {
	b, _ := json.Marshal(map[string]any{
		"project": map[string]any{"git_http_url": "https://example.invalid/team/app.git"},
		"object_attributes": map[string]any{"title": "mr", "action": action, "source_branch": "feature",
			"source_project_id": source, "target_project_id": target, "source": map[string]any{"path_with_namespace": "someone/app"},
			"last_commit": map[string]any{"id": sha}},
	})
	return b
}

func ghHeaders(body []byte, id string) map[string]string {
	return map[string]string{"X-GitHub-Event": "pull_request", "X-GitHub-Delivery": id, "X-Hub-Signature-256": "sha256=" + webhook.Sign(secret, body)}
}

func standard(body []byte, id string, at time.Time) map[string]string {
	return map[string]string{"X-Gitlab-Event": "Merge Request Hook", "Webhook-Id": id,
		"Webhook-Timestamp": strconv.FormatInt(at.Unix(), 10), "Webhook-Signature": webhook.SignStandard(secret, id, at, body)}
}

func TestPullRequestActionsAndForks(t *testing.T) {
	f := setupPR(t)
	sha := func(c byte) string { return strings.Repeat(string(c), 40) }
	cases := []struct {
		name     string
		provider string
		body     []byte
		headers  func([]byte) map[string]string
		code     int
		status   string
		reason   string // in the answer's reason
		fork     bool   // of the run, when accepted
	}{
		{"opened", "github", githubPR("opened", "team/app", "team/app", sha('a')), nil, 202, "accepted", "", false},
		{"synchronize", "github", githubPR("synchronize", "team/app", "team/app", sha('b')), nil, 202, "accepted", "", false},
		{"closed", "github", githubPR("closed", "team/app", "team/app", sha('c')), nil, 202, "ignored", `action "closed"`, false},
		{"labeled", "github", githubPR("labeled", "team/app", "team/app", sha('d')), nil, 202, "ignored", `action "labeled"`, false},
		{"from a fork", "github", githubPR("opened", "mallory/app", "team/app", sha('e')), nil, 202, "accepted", "", true},
		{"fork deleted", "github", githubPR("opened", "", "team/app", sha('f')), nil, 202, "accepted", "", true},
		{"gitea fork, forks: ignore", "gitea", githubPR("synchronized", "mallory/app", "team/app", sha('g')), func(b []byte) map[string]string {
			return map[string]string{"X-Gitea-Event": "pull_request", "X-Gitea-Delivery": "t1", "X-Gitea-Signature": webhook.Sign(secret, b)}
		}, 202, "ignored", `fork "mallory/app": the trigger's pull_request.forks is ignore`, false},
		{"gitlab fork, forks: run", "gitlab", gitlabMR("open", 7, 3, sha('1')), func(b []byte) map[string]string { return standard(b, "msg_1", time.Now()) }, 202, "accepted", "", true},
		{"gitlab update", "gitlab", gitlabMR("update", 3, 3, sha('2')), func(b []byte) map[string]string { return standard(b, "msg_2", time.Now()) }, 202, "accepted", "", false},
		{"gitlab merged", "gitlab", gitlabMR("merge", 3, 3, sha('3')), func(b []byte) map[string]string { return standard(b, "msg_3", time.Now()) }, 202, "ignored", `action "merged"`, false},
		{"gitlab stale timestamp", "gitlab", gitlabMR("open", 3, 3, sha('4')), func(b []byte) map[string]string { return standard(b, "msg_4", time.Now().Add(-time.Hour)) }, 401, "rejected", "tolerance", false},
	}
	for _, c := range cases {
		h := c.headers
		if h == nil {
			h = func(b []byte) map[string]string { return ghHeaders(b, c.name) }
		}
		code, resp := f.post(t, c.provider, c.body, h(c.body))
		if code != c.code || resp.Status != c.status || !strings.Contains(resp.Reason, c.reason) {
			t.Errorf("%s: %d %+v, want %d %s with reason %q", c.name, code, resp, c.code, c.status, c.reason)
			continue
		}
		if resp.Status != "accepted" {
			continue
		}
		r, err := f.env.Svc.Store.GetRun(context.Background(), resp.RunID)
		if err != nil {
			t.Errorf("%s: run: %v", c.name, err)
			continue
		}
		if r.Trigger.Event != "pull_request" || r.Trigger.Fork != c.fork {
			t.Errorf("%s: run trigger %+v, want a pull_request with fork=%v", c.name, r.Trigger, c.fork)
		}
		// github's default forks: approve holds the run; gitlab's forks: run does not
		if held := r.Approval != nil; held != (c.fork && c.provider == "github") {
			t.Errorf("%s: approval %+v", c.name, r.Approval)
		}
	}
	runs, err := f.env.Svc.Store.ListRuns(context.Background(), store.RunFilter{Pipeline: "prs"})
	if err != nil || len(runs) != 6 {
		t.Errorf("%d runs (%v), want 6", len(runs), err)
	}
	// a Standard Webhooks retry: same id, re-signed later, same run
	body := gitlabMR("open", 7, 3, sha('1'))
	if code, resp := f.post(t, "gitlab", body, standard(body, "msg_1", time.Now().Add(time.Second))); code != 200 || resp.Status != "duplicate" {
		t.Errorf("retry of msg_1: %d %+v, want duplicate", code, resp)
	}
}

func TestWebhookSecretsComeOnlyFromTheStoreOrPrefixedVariables(t *testing.T) {
	f := setupPR(t)
	body := githubPR("opened", "team/app", "team/app", strings.Repeat("9", 40))
	f.env.Svc.Hooks.Secrets = nil
	code, resp := f.post(t, "github", body, ghHeaders(body, "no-store"))
	if code != 401 || !strings.Contains(resp.Reason, "no secret store") {
		t.Errorf("without a secret store: %d %+v", code, resp)
	}
	// a pipeline stored before validation refused secret_env: HOME still
	// cannot use HOME, even if the variable holds what the caller signed with
	f.env.Svc.Hooks.Secret = func(string) string { return secret }
	p, err := spec.Parse("prs.yaml", []byte(prYAML))
	if err != nil {
		t.Fatal(err)
	}
	p.Triggers[0].Secret, p.Triggers[0].SecretEnv = "", "HOME"
	if _, err := f.env.Svc.Store.PutPipeline(context.Background(), p, prYAML+"# legacy\n", "test"); err != nil {
		t.Fatal(err)
	}
	code, resp = f.post(t, "github", body, ghHeaders(body, "home"))
	if code != 401 || !strings.Contains(resp.Reason, "ANSFLOW_WEBHOOK_*") {
		t.Errorf("secret_env HOME: %d %+v", code, resp)
	}
	if strings.Contains(resp.Reason, secret) {
		t.Error("the answer quotes the secret")
	}
}

// call sends an API request with token and decodes the run it answers.
func (f *prFixture) call(t *testing.T, method, path, token string) (int, store.Run) {
	t.Helper()
	req, _ := http.NewRequest(method, f.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r store.Run
	_ = json.NewDecoder(resp.Body).Decode(&r)
	return resp.StatusCode, r
}

func TestForkRunWaitsForAnOperatorsApproval(t *testing.T) {
	f := setupPR(t)
	body := githubPR("opened", "mallory/app", "team/app", strings.Repeat("e", 40))
	code, resp := f.post(t, "github", body, ghHeaders(body, "fork-1"))
	if code != 202 || resp.Status != "accepted" {
		t.Fatalf("fork delivery: %d %+v", code, resp)
	}
	viewer := f.env.Token(t, "viewer", "prs")
	operator := f.env.Token(t, "operator", "prs")
	otherOperator := f.env.Token(t, "operator", "web")
	path := "/api/v1/runs/" + resp.RunID

	code, r := f.call(t, http.MethodGet, path, viewer)
	if code != 200 || r.Status != "queued" || r.Waiting != "approval" || r.Steps[0].Status != "pending" {
		t.Fatalf("held run: %d status %s waiting %q step %s", code, r.Status, r.Waiting, r.Steps[0].Status)
	}
	if !strings.Contains(r.Approval.Reason, "mallory/app") {
		t.Errorf("approval reason %q", r.Approval.Reason)
	}
	for name, tok := range map[string]string{"viewer": viewer, "operator of another pipeline": otherOperator} {
		if code, _ := f.call(t, http.MethodPost, path+"/approve", tok); code != http.StatusForbidden {
			t.Errorf("%s approved: %d, want 403", name, code)
		}
	}
	code, r = f.call(t, http.MethodPost, path+"/approve", operator)
	if code != 200 || r.Approval == nil || r.Approval.ApprovedBy == "" {
		t.Fatalf("approve: %d %+v", code, r.Approval)
	}
	// 400 already approved, or 409 when the run has finished already
	if code, _ := f.call(t, http.MethodPost, path+"/approve", operator); code != http.StatusBadRequest && code != http.StatusConflict {
		t.Errorf("second approval: %d, want 400 or 409", code)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, r = f.call(t, http.MethodGet, path, viewer)
		if r.Status == "succeeded" {
			break
		}
		if time.Now().After(deadline) || r.Status == "failed" {
			t.Fatalf("approved run is %s (%s)", r.Status, r.Error)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// a run that needs no approval cannot be approved
	body = githubPR("opened", "team/app", "team/app", strings.Repeat("7", 40))
	_, resp = f.post(t, "github", body, ghHeaders(body, "same-repo"))
	if code, _ := f.call(t, http.MethodPost, "/api/v1/runs/"+resp.RunID+"/approve", operator); code != http.StatusBadRequest && code != http.StatusConflict {
		t.Errorf("approving a run that needs none: %d", code)
	}
}
