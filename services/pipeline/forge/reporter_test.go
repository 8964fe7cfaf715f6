package forge_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/pkg/topology"
	"github.com/ansflow/ansflow/services/pipeline/forge"
	"github.com/ansflow/ansflow/services/pipeline/orchestrator"
	"github.com/ansflow/ansflow/services/pipeline/pipelinetest"
	"github.com/ansflow/ansflow/services/pipeline/service"
	"github.com/ansflow/ansflow/services/pipeline/store"
	"github.com/ansflow/ansflow/services/pipeline/webhook"
)

// forgeToken is the global forge token secret's value; it must never
// show in an event, a bucket or an answer.
const forgeToken = "tok-s3cret-forge-value"

type fixture struct {
	env *pipelinetest.Env
	rc  *recorder
}

// setup starts a real pipeline service (in-process JetStream, the store,
// the orchestrator, a scripted runner) with a secret store holding the
// global forge token, reporting to a recording forge.
func setup(t *testing.T, steps bool) *fixture {
	t.Helper()
	rc := newRecorder(t)
	key, _, err := secret.LoadOrCreateKey(filepath.Join(t.TempDir(), "secrets.key"))
	if err != nil {
		t.Fatal(err)
	}
	env := pipelinetest.StartWith(t, func(c *service.Config) {
		c.SecretsKey = key
		c.Forge = forge.Config{ExternalURL: "https://ci.example/", Steps: steps, Attempts: 3,
			Backoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, StepWait: 2 * time.Second}
	})
	if _, err := env.Svc.Secrets.Set(context.Background(), secret.Scope{}, forge.DefaultTokenSecret, []byte(forgeToken), secret.Filters{}, "test"); err != nil {
		t.Fatal(err)
	}
	return &fixture{env: env, rc: rc}
}

func (f *fixture) apply(t *testing.T, yaml string) {
	t.Helper()
	p, err := spec.Parse("p.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.env.Svc.Store.PutPipeline(context.Background(), p, yaml, "test"); err != nil {
		t.Fatal(err)
	}
}

// trigger starts a run of pipeline as a webhook delivery of provider does.
func (f *fixture) trigger(t *testing.T, pipeline, provider string) *store.Run {
	t.Helper()
	return f.triggerHeld(t, pipeline, provider, false)
}

// triggerHeld is trigger; with hold, the run waits for approval until
// [fixture.approve].
func (f *fixture) triggerHeld(t *testing.T, pipeline, provider string, hold bool) *store.Run {
	t.Helper()
	return f.start(t, pipeline, provider, sha, hold)
}

// start triggers a webhook run of commit.
func (f *fixture) start(t *testing.T, pipeline, provider, commit string, hold bool) *store.Run {
	t.Helper()
	var approval *apiv1.Approval
	if hold {
		approval = &apiv1.Approval{Reason: "held by the test"}
	}
	r, err := f.env.Svc.Orc.Trigger(context.Background(), orchestrator.TriggerRequest{Pipeline: pipeline, Approval: approval,
		Git: orchestrator.GitInfo{Commit: commit, Branch: "main", Untrusted: true},
		Trigger: apiv1.Trigger{Kind: "webhook", Provider: provider, Delivery: "d-" + provider, Event: "push",
			Repo: &apiv1.ForgeRepo{APIURL: f.rc.URL(), Owner: "octo", Name: "hello", ProjectID: 7}}})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (f *fixture) approve(t *testing.T, id string) {
	t.Helper()
	if _, err := f.env.Svc.Orc.Approve(context.Background(), id, "test"); err != nil {
		t.Fatal(err)
	}
}

// ordered fails unless each context's states never go back to pending
// after a final state, and end in a final state.
func ordered(t *testing.T, got map[string][]string) {
	t.Helper()
	for c, l := range got {
		final := false
		for _, s := range l {
			if s == "pending" && final {
				t.Errorf("%s posted %v: pending after a final state", c, l)
			}
			final = final || s != "pending"
		}
		if !final {
			t.Errorf("%s posted %v: no final state", c, l)
		}
	}
}

func (f *fixture) waitRun(t *testing.T, id string) *store.Run {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r, err := f.env.Svc.Store.GetRun(context.Background(), id)
		if err == nil && r.Terminal() {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("run %s did not finish: %v", id, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// states returns the states each context was posted, in order.
func states(calls []call) map[string][]string {
	out := map[string][]string{}
	for _, c := range calls {
		ctx, _ := c.Body["context"].(string)
		if ctx == "" {
			ctx, _ = c.Body["name"].(string) // GitLab
		}
		state, _ := c.Body["state"].(string)
		out[ctx] = append(out[ctx], state)
	}
	return out
}

// waitStates waits until the recorder's last state of each context is the
// one in want.
func (f *fixture) waitStates(t *testing.T, want map[string]string) map[string][]string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := states(f.rc.Calls())
		ok := true
		for c, s := range want {
			if l := got[c]; len(l) == 0 || l[len(l)-1] != s {
				ok = false
			}
		}
		if ok {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("statuses %v, want last states %v", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// drained waits until the forge status consumer has handled every event.
func (f *fixture) drained(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := f.env.NATS.JS.Consumer(context.Background(), event.StreamEvents, topology.DurableForgeStatus)
		if err == nil {
			if info, err := c.Info(context.Background()); err == nil && info.NumPending == 0 && info.NumAckPending == 0 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the forge status consumer did not drain")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// auditOutcomes returns the outcomes of the forge status audit records of
// run id, and fails if any message of the events stream or any entry of
// the status bucket holds the forge token.
func (f *fixture) auditOutcomes(t *testing.T, id string) []string {
	t.Helper()
	ctx := context.Background()
	js := f.env.NATS.JS
	s, err := js.Stream(ctx, event.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		if bytes.Contains(m.Data, []byte(forgeToken)) || strings.Contains(fmt.Sprint(m.Header), forgeToken) {
			t.Errorf("event %s holds the forge token", m.Subject)
		}
		if m.Subject != event.LifecycleSubject(event.TypeAPIAction, id) {
			continue
		}
		var a event.Action
		if err := json.Unmarshal(m.Data, &a); err != nil {
			t.Fatal(err)
		}
		if a.Actor == forge.Actor && strings.HasPrefix(a.Action, "forge.status.") && a.Target == "run/"+id {
			out = append(out, a.Outcome)
		}
	}
	kv, err := js.KeyValue(ctx, topology.BucketForgeStatus)
	if err != nil {
		t.Fatal(err)
	}
	keys, _ := kv.ListKeys(ctx)
	for k := range keys.Keys() {
		if e, err := kv.Get(ctx, k); err == nil && bytes.Contains(e.Value(), []byte(forgeToken)) {
			t.Errorf("status bucket entry %s holds the forge token", k)
		}
	}
	return out
}

const twoSteps = `pipeline:
  name: app
  steps:
    - name: build
      type: docker_run
      command: echo built
    - name: test
      type: docker_run
      command: %s
`

// A webhook run posts pending for the run and each step when created,
// then each step's end and the run's, each linking to the run's page; each
// call is an audit record without the token.
func TestWebhookRunPostsPendingThenItsOutcome(t *testing.T) {
	f := setup(t, true)
	f.apply(t, fmt.Sprintf(twoSteps, "echo ok"))
	r := f.triggerHeld(t, "app", "gitea", true)
	f.waitStates(t, map[string]string{"ansflow/app": "pending", "ansflow/app/build": "pending", "ansflow/app/test": "pending"})
	if d := f.rc.Calls()[0].Body["description"]; d != "Run #1 is waiting for approval" {
		t.Errorf("pending description %q", d)
	}
	f.approve(t, r.ID)
	if got := f.waitRun(t, r.ID); got.Status != event.StatusSucceeded {
		t.Fatalf("run %s", got.Status)
	}
	got := f.waitStates(t, map[string]string{"ansflow/app": "success", "ansflow/app/build": "success", "ansflow/app/test": "success"})
	for c, l := range got {
		if len(l) != 2 || l[0] != "pending" {
			t.Errorf("%s posted %v, want [pending success]", c, l)
		}
	}
	for _, c := range f.rc.Calls() {
		if c.Path != "/api/v1/repos/octo/hello/statuses/"+sha || c.Header.Get("Authorization") != "token "+forgeToken {
			t.Errorf("call %s %s with %q", c.Method, c.Path, c.Header.Get("Authorization"))
		}
		if c.Body["target_url"] != "https://ci.example/runs/"+r.ID {
			t.Errorf("target_url %v", c.Body["target_url"])
		}
	}
	f.drained(t)
	outcomes := f.auditOutcomes(t, r.ID)
	if len(outcomes) != len(f.rc.Calls()) {
		t.Errorf("%d audit records for %d calls: %q", len(outcomes), len(f.rc.Calls()), outcomes)
	}
	for _, o := range outcomes {
		if !strings.HasPrefix(o, "posted ") || !strings.Contains(o, "octo/hello@"+sha[:12]) {
			t.Errorf("audit outcome %q", o)
		}
	}
}

// A failing step fails the run's status; GitLab gets its own vocabulary,
// and the pipeline's token_secret names a pipeline-scoped token.
func TestFailedRunPostsFailureWithThePipelinesToken(t *testing.T) {
	f := setup(t, false)
	f.apply(t, fmt.Sprintf(twoSteps, "exit 3")+"  status: {steps: true, token_secret: gl_token}\n")
	if _, err := f.env.Svc.Secrets.Set(context.Background(), secret.Scope{Pipeline: "app"}, "gl_token", []byte("glpat-app"), secret.Filters{}, "test"); err != nil {
		t.Fatal(err)
	}
	r := f.trigger(t, "app", "gitlab")
	if got := f.waitRun(t, r.ID); got.Status != event.StatusFailed {
		t.Fatalf("run %s", got.Status)
	}
	ordered(t, f.waitStates(t, map[string]string{"ansflow/app": "failed", "ansflow/app/build": "success", "ansflow/app/test": "failed"}))
	for _, c := range f.rc.Calls() {
		if c.Path != "/api/v4/projects/7/statuses/"+sha || c.Header.Get("Private-Token") != "glpat-app" {
			t.Errorf("call %s %s with %q", c.Method, c.Path, c.Header.Get("Private-Token"))
		}
	}
}

// Calls answered 500 are retried with backoff until one succeeds.
func TestStatusCallsAreRetriedAfter500s(t *testing.T) {
	f := setup(t, false)
	f.rc.setFail(2, http.StatusInternalServerError)
	f.apply(t, fmt.Sprintf(twoSteps, "echo ok"))
	r := f.triggerHeld(t, "app", "github", true)
	f.waitStates(t, map[string]string{"ansflow/app": "pending"})
	f.approve(t, r.ID)
	f.waitRun(t, r.ID)
	got := f.waitStates(t, map[string]string{"ansflow/app": "success"})
	if want := []string{"pending", "pending", "pending", "success"}; !slices.Equal(got["ansflow/app"], want) {
		t.Errorf("posted %v, want %v (two 500s, then the pending, then success)", got["ansflow/app"], want)
	}
	f.drained(t)
	outcomes := f.auditOutcomes(t, r.ID)
	if len(outcomes) != 2 || !strings.Contains(outcomes[0], "(3 attempts)") || !strings.Contains(outcomes[1], "(1 attempt)") {
		t.Errorf("audit outcomes %q", outcomes)
	}
}

// A forge that fails every call never fails the run; each status's
// failure is audited once, after its bounded attempts.
func TestRunSucceedsWhenEveryStatusCallFails(t *testing.T) {
	f := setup(t, true)
	f.rc.setFail(-1, http.StatusBadGateway)
	f.apply(t, fmt.Sprintf(twoSteps, "echo ok"))
	r := f.triggerHeld(t, "app", "github", true)
	f.waitStates(t, map[string]string{"ansflow/app": "pending", "ansflow/app/build": "pending", "ansflow/app/test": "pending"})
	f.approve(t, r.ID)
	if got := f.waitRun(t, r.ID); got.Status != event.StatusSucceeded {
		t.Fatalf("run %s, want succeeded whatever the forge says", got.Status)
	}
	f.waitStates(t, map[string]string{"ansflow/app": "success", "ansflow/app/build": "success", "ansflow/app/test": "success"})
	f.drained(t)
	outcomes := f.auditOutcomes(t, r.ID)
	if len(outcomes) != 6 { // pending and success for the run and two steps
		t.Errorf("%d audit records, want 6: %q", len(outcomes), outcomes)
	}
	for _, o := range outcomes {
		if !strings.HasPrefix(o, "failed: ") || !strings.Contains(o, "502") || !strings.Contains(o, "(3 attempts)") {
			t.Errorf("audit outcome %q", o)
		}
	}
	if n := len(f.rc.Calls()); n != 18 {
		t.Errorf("%d calls, want 3 attempts for each of 6 statuses", n)
	}
}

// A duplicated run.created or step.completed after the run finished, or a
// report from a stale copy of the run, posts nothing: never pending after
// success.
func TestDuplicatedEventsDoNotPostOutOfOrder(t *testing.T) {
	f := setup(t, true)
	f.apply(t, fmt.Sprintf(twoSteps, "echo ok"))
	stale := f.trigger(t, "app", "github")
	done := f.waitRun(t, stale.ID)
	f.waitStates(t, map[string]string{"ansflow/app": "success", "ansflow/app/build": "success", "ansflow/app/test": "success"})
	f.drained(t)
	before := len(f.rc.Calls())

	ctx := context.Background()
	republish := func(typ string, data any, meta event.Meta) {
		t.Helper()
		e, err := event.New(orchestrator.Source, typ, meta, data)
		if err != nil {
			t.Fatal(err)
		}
		if err := bus.Publish(ctx, f.env.NATS.JS, event.LifecycleSubject(typ, stale.ID), e); err != nil {
			t.Fatal(err)
		}
	}
	republish(event.TypeRunCreated, event.RunCreated{RunID: stale.ID, Pipeline: "app", Trigger: "webhook"}, event.Meta{RunID: stale.ID})
	republish(event.TypeStepCompleted, event.StepCompleted{RunID: stale.ID, StepID: "build", Attempt: 1, Status: "succeeded"},
		event.Meta{RunID: stale.ID, StepID: "build", Attempt: 1})
	f.drained(t)
	f.env.Svc.Forge.Report(ctx, stale) // the run as it was when created: pending
	ordered(t, states(f.rc.Calls()))
	if after := f.rc.Calls(); len(after) != before {
		t.Errorf("%d more calls after duplicates: %v", len(after)-before, states(after[before:]))
	}
	if got := states(f.rc.Calls()); got["ansflow/app"][len(got["ansflow/app"])-1] != "success" {
		t.Errorf("last run status %v", got["ansflow/app"])
	}
	_ = done
}

// Runs not started by a forge webhook, and pipelines that turn statuses
// off, post nothing.
func TestOnlyWebhookRunsPostStatuses(t *testing.T) {
	f := setup(t, true)
	f.apply(t, fmt.Sprintf(twoSteps, "echo ok"))
	r, err := f.env.Svc.Orc.Trigger(context.Background(), orchestrator.TriggerRequest{Pipeline: "app",
		Git: orchestrator.GitInfo{Commit: sha}, Trigger: apiv1.Trigger{Kind: "cli"}})
	if err != nil {
		t.Fatal(err)
	}
	f.waitRun(t, r.ID)
	f.apply(t, strings.Replace(fmt.Sprintf(twoSteps, "echo ok"), "name: app", "name: quiet\n  status: {disabled: true}", 1))
	q := f.trigger(t, "quiet", "github")
	f.waitRun(t, q.ID)
	f.drained(t)
	if calls := f.rc.Calls(); len(calls) != 0 {
		t.Errorf("%d calls: %v", len(calls), states(calls))
	}
}

// A real signed GitHub push delivery through the webhook endpoint ends in
// statuses on the repository and commit its payload named.
func TestGitHubDeliveryEndsInCommitStatuses(t *testing.T) {
	f := setup(t, false)
	f.env.Svc.Hooks.Secret = func(string) string { return "hook-secret" }
	f.apply(t, `pipeline:
  name: hooked
  triggers:
    - type: webhook
      provider: github
      secret_env: ANSFLOW_WEBHOOK_TEST
  steps:
    - name: build
      type: docker_run
      command: echo built
`)
	body, _ := json.Marshal(map[string]any{"ref": "refs/heads/main", "after": sha,
		"repository": map[string]any{"clone_url": "https://github.com/octo/hello.git", "full_name": "octo/hello",
			"html_url": "https://github.com/octo/hello", "statuses_url": f.rc.URL() + "repos/octo/hello/statuses/{sha}"},
		"head_commit": map[string]any{"message": "change", "author": map[string]any{"name": "A"}}})
	req, _ := http.NewRequest(http.MethodPost, f.env.Srv.URL+"/webhooks/github/hooked", bytes.NewReader(body))
	req.Header.Set("X-GitHub-Event", "push")
	req.Header.Set("X-GitHub-Delivery", "delivery-1")
	req.Header.Set("X-Hub-Signature-256", "sha256="+webhook.Sign("hook-secret", body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var wr apiv1.WebhookResponse
	_ = json.NewDecoder(resp.Body).Decode(&wr)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || wr.RunID == "" {
		t.Fatalf("delivery answered %d %+v", resp.StatusCode, wr)
	}
	run := f.waitRun(t, wr.RunID)
	if r := run.Trigger.Repo; r == nil || r.Owner != "octo" || r.Name != "hello" || r.APIURL != f.rc.URL() {
		t.Fatalf("trigger repo %+v", run.Trigger.Repo)
	}
	// The run may be over before its run.created event is handled: then
	// success is the only status.
	ordered(t, f.waitStates(t, map[string]string{"ansflow/hooked": "success"}))
	for _, c := range f.rc.Calls() {
		if c.Path != "/repos/octo/hello/statuses/"+sha || c.Header.Get("Authorization") != "Bearer "+forgeToken {
			t.Errorf("call %s %s", c.Method, c.Path)
		}
	}
}

// Two pipeline service instances' reporters share the consumer: every run
// still ends with its final states last, whichever instance handled which
// event. (Across instances a pending call overtaken in flight by a later
// state's may land between two posts of that state; the last one is the
// final state, which is what this checks.)
func TestTwoInstancesShareTheStatuses(t *testing.T) {
	f := setup(t, true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	second, err := forge.New(ctx, forge.Config{ExternalURL: "https://ci.example/", Steps: true, Attempts: 3,
		Backoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}, f.env.NATS.JS, f.env.Svc.Store, f.env.Svc.Secrets, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = second.Run(ctx) }()
	f.apply(t, fmt.Sprintf(twoSteps, "echo ok"))
	const runs = 6
	var ids []string
	for i := range runs {
		commit := fmt.Sprintf("%040x", i+1)
		r := f.start(t, "app", "gitea", commit, false)
		ids = append(ids, r.ID)
	}
	for _, id := range ids {
		f.waitRun(t, id)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		byCommit := map[string][]call{}
		for _, c := range f.rc.Calls() {
			byCommit[c.Path] = append(byCommit[c.Path], c)
		}
		done := len(byCommit) == runs
		for _, calls := range byCommit {
			got := states(calls)
			for _, c := range []string{"ansflow/app", "ansflow/app/build", "ansflow/app/test"} {
				if l := got[c]; len(l) == 0 || l[len(l)-1] != "success" {
					done = false
				}
			}
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("statuses of %d commits: %v", len(byCommit), byCommit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
