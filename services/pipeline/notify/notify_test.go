package notify_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/pkg/topology"
	. "github.com/ansflow/ansflow/services/pipeline/notify"
	"github.com/ansflow/ansflow/services/pipeline/notify/notifytest"
	"github.com/ansflow/ansflow/services/pipeline/orchestrator"
	"github.com/ansflow/ansflow/services/pipeline/pipelinetest"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// Secret values of the tests; none may show in a log line or an audit
// event.
const (
	hookSecret   = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	wrongSecret  = "whsec_c2VjcmV0LW9mLWFub3RoZXItcmVjZWl2ZXI="
	slackToken   = "T000/B000/XXXXslacktokenXXXX"
	smtpPassword = "smtp-pass-Kq7-do-not-leak"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// receiver is a real HTTP receiver of generic webhooks: it verifies the
// Standard Webhooks signature with its secret, answers 401 to a wrong
// one, and answers with the codes of fail first (then 200).
type receiver struct {
	srv    *httptest.Server
	secret string
	mu     sync.Mutex
	fail   []int
	got    []received
	denied int
}

type received struct {
	path    string
	id      string
	at      time.Time
	payload Payload
}

func newReceiver(t *testing.T, secret string) *receiver {
	rc := &receiver{secret: secret}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		defer rc.mu.Unlock()
		if err := Verify(rc.secret, r.Header, body, time.Now(), 5*time.Minute); err != nil {
			rc.denied++
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		if len(rc.fail) > 0 {
			code := rc.fail[0]
			rc.fail = rc.fail[1:]
			rc.got = append(rc.got, received{path: r.URL.Path, id: r.Header.Get(HeaderID), at: time.Now()})
			w.WriteHeader(code)
			return
		}
		var p Payload
		if err := json.Unmarshal(body, &p); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rc.got = append(rc.got, received{path: r.URL.Path, id: r.Header.Get(HeaderID), at: time.Now(), payload: p})
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) received() []received {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]received(nil), rc.got...)
}

func (rc *receiver) paths(build int) []string {
	var out []string
	for _, g := range rc.received() {
		if g.payload.Data.BuildNumber == build {
			out = append(out, g.path)
		}
	}
	return out
}

// slackReceiver records Slack-compatible webhook bodies at /services/<token>.
type slackReceiver struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []Slack
}

func newSlack(t *testing.T) *slackReceiver {
	s := &slackReceiver{}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/services/"+slackToken || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "no such hook", http.StatusNotFound)
			return
		}
		var m Slack
		if err := json.NewDecoder(r.Body).Decode(&m); err != nil || m.Text == "" {
			http.Error(w, "invalid_payload", http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.got = append(s.got, m)
		s.mu.Unlock()
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *slackReceiver) received() []Slack {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Slack(nil), s.got...)
}

// env is a real pipeline service (orchestrator, store, scripted runner),
// a secret store and a notifier under test.
type env struct {
	*pipelinetest.Env
	n       *Notifier
	secrets *secret.Store
	logs    *observer.ObservedLogs
	log     *zap.Logger
	mu      sync.Mutex
	audit   []event.Action
}

func start(t *testing.T, cfg Config) *env {
	t.Helper()
	e := &env{Env: pipelinetest.Start(t)}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e.init(t)
	e.n = e.notifier(t, ctx, cfg)
	return e
}

// init opens the secret store and records the notifier's audit events
// and logs.
func (e *env) init(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	kv, err := bus.EnsureKeyValue(ctx, e.NATS.JS, topology.MustBucket(topology.BucketSecrets, 1))
	if err != nil {
		t.Fatal(err)
	}
	key, err := secret.ParseKey([]byte(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))))
	if err != nil {
		t.Fatal(err)
	}
	e.secrets = secret.NewStore(kv, key)
	nc, _ := e.NATS.Connect(t)
	sub, err := nc.Subscribe(AuditSubject, func(m *nats.Msg) {
		ev, err := event.FromMsg(m)
		if err != nil {
			return
		}
		var a event.Action
		if event.DecodeData(ev, &a) == nil && a.Actor == Actor {
			e.mu.Lock()
			e.audit = append(e.audit, a)
			e.mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	core, logs := observer.New(zap.DebugLevel)
	e.logs, e.log = logs, zap.New(core)
}

// notifier starts a notifier (an instance of the pipeline service's)
// until ctx ends.
func (e *env) notifier(t *testing.T, ctx context.Context, cfg Config) *Notifier {
	t.Helper()
	if cfg.Backoff == 0 {
		cfg.Backoff = 50 * time.Millisecond
	}
	if cfg.ExternalURL == "" {
		cfg.ExternalURL = "https://ci.example.com/"
	}
	if cfg.AllowedHosts == "" {
		cfg.AllowedHosts = "loopback" // the receivers are httptest servers
	}
	n, err := New(ctx, cfg, e.NATS.JS, e.Svc.Store, SecretsFunc(func(ctx context.Context, pipeline, name string) (string, error) {
		_, v, err := e.secrets.Resolve(ctx, pipeline, name)
		return string(v), err
	}), e.log)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = n.Run(ctx) }()
	return n
}

func (e *env) setSecret(t *testing.T, pipeline, name, value string) {
	t.Helper()
	if _, err := e.secrets.Set(context.Background(), secret.Scope{Pipeline: pipeline}, name, []byte(value), secret.Filters{}, "test"); err != nil {
		t.Fatal(err)
	}
}

func (e *env) apply(t *testing.T, yaml string) {
	t.Helper()
	p, err := spec.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Svc.Store.PutPipeline(context.Background(), p, yaml, "test"); err != nil {
		t.Fatal(err)
	}
}

// run triggers a run of pipeline with script on branch and waits until
// it is over.
func (e *env) run(t *testing.T, pipeline, script, branch string) *store.Run {
	t.Helper()
	ctx := context.Background()
	var vars map[string]string
	if script != "" {
		vars = map[string]string{"script": script}
	}
	r, err := e.Svc.Orc.Trigger(ctx, orchestrator.TriggerRequest{Pipeline: pipeline, Vars: vars,
		Git: orchestrator.GitInfo{Branch: branch, Commit: "0123456789abcdef0123456789abcdef01234567"}})
	if err != nil {
		t.Fatal(err)
	}
	var done *store.Run
	waitFor(t, "run "+r.ID+" to finish", 15*time.Second, func() bool {
		got, err := e.Svc.Store.GetRun(ctx, r.ID)
		if err == nil && got.Terminal() {
			done = got
		}
		return done != nil
	})
	return done
}

func (e *env) audited() []event.Action {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]event.Action(nil), e.audit...)
}

// noSecrets fails when a log line or an audit event holds a secret value.
func (e *env) noSecrets(t *testing.T) {
	t.Helper()
	for _, s := range []string{hookSecret, strings.TrimPrefix(hookSecret, SecretPrefix), wrongSecret, slackToken, smtpPassword} {
		for _, l := range e.logs.All() {
			line := l.Message
			for _, f := range l.Context {
				line += fmt.Sprintf(" %v %s %v", f.Interface, f.String, f.Integer)
			}
			if strings.Contains(line, s) {
				t.Errorf("log line holds a secret: %s", line)
			}
		}
		for _, a := range e.audited() {
			if b, _ := json.Marshal(a); bytes.Contains(b, []byte(s)) {
				t.Errorf("audit event holds a secret: %s", b)
			}
		}
	}
}

const rulesPipeline = `pipeline:
  name: web
  variables:
    script: ""
  steps:
    - name: test
      type: docker_run
      docker_image: alpine
      command: "{{script}}"
  notify:
    - when: [failure]
      targets:
        - type: webhook
          url: %[1]s/failure
          secret: HOOK
        - type: email
          to: [dev@example.com, ops@example.com]
    - when: [recovery]
      targets:
        - type: webhook
          url: %[1]s/recovery
          secret: HOOK
    - when: [change]
      targets:
        - type: webhook
          url: %[1]s/change
          secret: HOOK
        - type: slack
          url_secret: SLACK_URL
    - when: [success]
      targets:
        - type: webhook
          url: %[1]s/success
          secret: HOOK
    - when: [always]
      targets:
        - type: webhook
          url: %[1]s/always
          secret: HOOK
        - type: webhook
          url: %[1]s/wrong-secret
          secret: OTHER_HOOK
`

// TestRulesOnASequenceOfRuns runs a pipeline on the real orchestrator
// (success, failure, failure, success on main, then success on another
// branch) and checks which rules fired for each run, what the signed
// webhooks, the Slack messages and the emails carried, that a webhook
// signed with another secret is refused by the receiver, and that no
// secret reached a log line or the audit trail.
func TestRulesOnASequenceOfRuns(t *testing.T) {
	ms := notifytest.StartMail(t, "ansflow", smtpPassword, true)
	e := start(t, Config{SMTP: SMTPConfig{Addr: ms.Addr, From: "AnsFlow <ci@example.com>", Username: "ansflow",
		PasswordSecret: "SMTP_PASSWORD", TLS: &tls.Config{RootCAs: ms.Roots}}})
	rc := newReceiver(t, hookSecret)
	sl := newSlack(t)
	e.setSecret(t, "web", "HOOK", hookSecret)
	e.setSecret(t, "web", "OTHER_HOOK", wrongSecret)
	e.setSecret(t, "web", "SLACK_URL", sl.srv.URL+"/services/"+slackToken)
	e.setSecret(t, "", "SMTP_PASSWORD", smtpPassword)
	e.apply(t, fmt.Sprintf(rulesPipeline, rc.srv.URL))

	seq := []struct {
		script, branch string
		want           []string
		deliveries     int // targets of the rules that fire
	}{
		{"echo ok", "main", []string{"/success", "/always"}, 3},
		{"echo compiling; warn boom: undefined x; exit 3", "main", []string{"/failure", "/change", "/always"}, 6},
		{"exit 1", "main", []string{"/failure", "/always"}, 4},
		{"echo fixed", "main", []string{"/recovery", "/change", "/success", "/always"}, 6},
		{"echo ok", "dev", []string{"/success", "/always"}, 3},
	}
	var runs []*store.Run
	for i, s := range seq {
		r := e.run(t, "web", s.script, s.branch)
		runs = append(runs, r)
		waitFor(t, fmt.Sprintf("notifications of run %d", i+1), 10*time.Second, func() bool {
			return e.deliveriesDone(r.ID, s.deliveries)
		})
		got := rc.paths(r.BuildNumber)
		if strings.Join(sorted(got), " ") != strings.Join(sorted(s.want), " ") {
			t.Errorf("run %d (%s on %s): webhooks %v, want %v", i+1, r.Status, s.branch, got, s.want)
		}
	}

	// The failure's payload: pipeline, run, branch, commit, status, the
	// failed step with its last log lines, and the link.
	var fail Payload
	for _, g := range rc.received() {
		if g.path == "/failure" && g.payload.Data.RunID == runs[1].ID {
			fail = g.payload
		}
	}
	d := fail.Data
	if fail.Type != EventType || d.Pipeline != "web" || d.BuildNumber != runs[1].BuildNumber || d.Branch != "main" ||
		d.Commit != "0123456789abcdef0123456789abcdef01234567" || d.Status != "failed" || d.PreviousStatus != "succeeded" ||
		d.URL != "https://ci.example.com/runs/"+runs[1].ID || len(d.FailedSteps) != 1 {
		t.Fatalf("failure payload %+v", fail)
	}
	if fs := d.FailedSteps[0]; fs.Name != "test" || fs.ExitCode == nil || *fs.ExitCode != 3 ||
		!strings.Contains(fs.Stdout, "compiling") || !strings.Contains(fs.Stderr, "boom: undefined x") {
		t.Errorf("failed step %+v", fs)
	}
	if rc.denied == 0 {
		t.Error("the receiver never refused the webhook signed with another secret")
	}
	for _, g := range rc.received() {
		if g.path == "/wrong-secret" {
			t.Errorf("a webhook signed with the wrong secret was accepted: %+v", g)
		}
	}

	// Slack: change fired on runs 2 and 4.
	msgs := sl.received()
	if len(msgs) != 2 {
		t.Fatalf("slack got %d messages, want 2", len(msgs))
	}
	m := msgs[0]
	if !strings.Contains(m.Text, "web #2 failed on main") || !strings.Contains(m.Text, "https://ci.example.com/runs/"+runs[1].ID) ||
		len(m.Blocks) != 3 || m.Blocks[0].Type != "section" || m.Blocks[0].Text.Type != "mrkdwn" ||
		!strings.Contains(m.Blocks[0].Text.Text, "<https://ci.example.com/runs/"+runs[1].ID+"|") ||
		!strings.Contains(m.Blocks[1].Text.Text, "*test* failed (exit code 3)") || !strings.Contains(m.Blocks[1].Text.Text, "```") ||
		!strings.Contains(m.Blocks[1].Text.Text, "boom: undefined x") || m.Blocks[2].Type != "context" {
		t.Errorf("slack message %+v", m)
	}
	if !strings.Contains(msgs[1].Text, "web #4 succeeded (fixed) on main") {
		t.Errorf("slack recovery message %q", msgs[1].Text)
	}

	// Email: failure fired on runs 2 and 3, over STARTTLS, authenticated.
	mails := ms.Received()
	if len(mails) != 2 {
		t.Fatalf("got %d mails, want 2; audit %+v", len(mails), e.audited())
	}
	for _, ml := range mails {
		if !ml.TLS || !ml.Authenticated || ml.From != "ci@example.com" || strings.Join(ml.To, ",") != "dev@example.com,ops@example.com" {
			t.Errorf("mail envelope %+v", ml)
		}
	}
	body := mails[0].Data
	for _, want := range []string{"Subject: [AnsFlow] web #2 failed on main (0123456789ab)", "To: dev@example.com, ops@example.com",
		"Link:     https://ci.example.com/runs/" + runs[1].ID, "Step \"test\" failed with exit code 3", "boom: undefined x", "Commit:   0123456789abcdef"} {
		if !strings.Contains(body, want) {
			t.Errorf("mail lacks %q:\n%s", want, body)
		}
	}

	// Audit: one delivered attempt per delivery, and the refused ones.
	var delivered, refused int
	for _, a := range e.audited() {
		switch {
		case a.Outcome == "delivered":
			delivered++
		case strings.Contains(a.Detail, "webhook "+rc.srv.URL+"/wrong-secret") && strings.Contains(a.Outcome, "answered 401"):
			refused++
		}
		if a.Target != "run/"+runIDOf(a) {
			t.Errorf("audit target %q", a.Target)
		}
	}
	if refused != len(seq) || delivered == 0 {
		t.Errorf("audit: %d delivered, %d refused (want %d)", delivered, refused, len(seq))
	}
	e.noSecrets(t)
}

func runIDOf(a event.Action) string { return strings.TrimPrefix(a.Target, "run/") }

// deliveriesDone reports whether at least n deliveries of run are recorded
// as delivered or failed.
func (e *env) deliveriesDone(runID string, n int) bool {
	recs, err := e.n.Deliveries(context.Background(), runID)
	if err != nil {
		return false
	}
	done := 0
	for _, r := range recs {
		if r.State != StateSending {
			done++
		}
	}
	return done >= n
}

// record reads the delivery record of key.
func (e *env) record(t *testing.T, key string) Record {
	t.Helper()
	id, _, _ := strings.Cut(key, ".")
	recs, err := e.n.Deliveries(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	r, ok := recs[key]
	if !ok {
		t.Fatalf("no delivery %s in %v", key, recs)
	}
	return r
}

const failingPipeline = `pipeline:
  name: api
  steps:
    - name: build
      type: docker_run
      docker_image: alpine
      command: "warn it broke; exit 1"
  notify:
    - when: [failure]
      targets:
        - type: webhook
          url: %s/hook?token=not-a-secret-but-kept-out
          secret: HOOK
`

// TestRetryWithBackoffThenDedupe: the receiver answers 500, then 200; the
// notification is tried again after the backoff with the same webhook-id,
// each attempt is audited, and the delivery is recorded as delivered after
// two attempts. The run's completion event delivered again (a new event id,
// so the stream's duplicate window does not drop it) sends nothing more.
func TestRetryWithBackoffThenDedupe(t *testing.T) {
	const backoff = 300 * time.Millisecond
	e := start(t, Config{Backoff: backoff})
	rc := newReceiver(t, hookSecret)
	rc.fail = []int{http.StatusInternalServerError}
	e.setSecret(t, "", "HOOK", hookSecret) // a global secret serves too
	e.apply(t, fmt.Sprintf(failingPipeline, rc.srv.URL))
	r := e.run(t, "api", "", "main")
	key := r.ID + ".p0.0"
	waitFor(t, "the delivery", 10*time.Second, func() bool { return e.deliveriesDone(r.ID, 1) })
	got := rc.received()
	if len(got) != 2 {
		t.Fatalf("receiver got %d requests, want 2 (500, then 200)", len(got))
	}
	if got[0].id != got[1].id || got[0].id != "msg_"+key {
		t.Errorf("webhook ids %q, %q: want the same id on a retry", got[0].id, got[1].id)
	}
	if d := got[1].at.Sub(got[0].at); d < backoff {
		t.Errorf("retried after %v, before the %v backoff", d, backoff)
	}
	if rec := e.record(t, key); rec.State != StateDelivered || rec.Attempts != 2 {
		t.Errorf("record %+v", rec)
	}
	var outcomes []string
	for _, a := range e.audited() {
		outcomes = append(outcomes, a.Outcome)
		if strings.Contains(a.Detail, "token=") {
			t.Errorf("audit detail holds the URL's query: %s", a.Detail)
		}
	}
	if strings.Join(outcomes, "|") != "error: answered 500 Internal Server Error|delivered" {
		t.Errorf("audited outcomes %q", outcomes)
	}

	// Deliver the completion again.
	ctx := context.Background()
	ev, err := event.New(orchestrator.Source, event.TypeRunCompleted, event.Meta{RunID: r.ID},
		event.RunCompleted{RunID: r.ID, Pipeline: r.Pipeline, Status: r.Status, FinishedAt: *r.FinishedAt})
	if err != nil {
		t.Fatal(err)
	}
	m, err := event.ToMsg(event.LifecycleSubject(event.TypeRunCompleted, r.ID), ev)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := e.NATS.JS.PublishMsg(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := e.NATS.JS.Consumer(ctx, event.StreamEvents, topology.DurableNotify)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the repeated completion to be handled", 10*time.Second, func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.AckFloor.Stream >= ack.Sequence
	})
	if n := len(rc.received()); n != 2 {
		t.Errorf("the repeated completion sent again: %d requests", n)
	}
	if n := len(e.audited()); n != 2 {
		t.Errorf("%d audit events, want 2", n)
	}
	e.noSecrets(t)
}

// TestGivesUpAfterBoundedAttempts: a receiver that always answers 503 gets
// Attempts tries, and the delivery is recorded as failed; a 4xx answer is
// not retried.
func TestGivesUpAfterBoundedAttempts(t *testing.T) {
	e := start(t, Config{Attempts: 3, Backoff: 10 * time.Millisecond})
	rc := newReceiver(t, hookSecret)
	rc.fail = []int{503, 503, 503, 503}
	e.setSecret(t, "api", "HOOK", hookSecret)
	e.apply(t, fmt.Sprintf(failingPipeline, rc.srv.URL))
	r := e.run(t, "api", "", "main")
	waitFor(t, "the delivery to give up", 10*time.Second, func() bool { return e.deliveriesDone(r.ID, 1) })
	if rec := e.record(t, r.ID+".p0.0"); rec.State != StateFailed || rec.Attempts != 3 || !strings.Contains(rec.Error, "503") {
		t.Errorf("record %+v", rec)
	}
	if n := len(rc.received()); n != 3 {
		t.Errorf("%d tries, want 3", n)
	}
	rc.mu.Lock()
	rc.fail = []int{404, 404}
	rc.mu.Unlock()
	r = e.run(t, "api", "", "main")
	waitFor(t, "the 404 delivery", 10*time.Second, func() bool { return e.deliveriesDone(r.ID, 1) })
	if rec := e.record(t, r.ID+".p0.0"); rec.State != StateFailed || rec.Attempts != 1 {
		t.Errorf("a 404 was retried: %+v", rec)
	}
}

// TestServerDefaultRules: a pipeline without notify: rules uses the
// server-wide default.
func TestServerDefaultRules(t *testing.T) {
	rc := newReceiver(t, hookSecret)
	rules, err := spec.ParseNotifyRules("default.yaml", []byte(fmt.Sprintf("- when: [failure]\n  targets:\n    - type: webhook\n      url: %s/default\n      secret: HOOK\n", rc.srv.URL)))
	if err != nil {
		t.Fatal(err)
	}
	e := start(t, Config{Default: rules})
	e.setSecret(t, "", "HOOK", hookSecret)
	e.apply(t, "pipeline:\n  name: quiet\n  steps:\n    - name: a\n      type: docker_run\n      command: exit 2\n")
	r := e.run(t, "quiet", "", "")
	waitFor(t, "the default rule's delivery", 10*time.Second, func() bool { return e.deliveriesDone(r.ID, 1) })
	if got := rc.received(); len(got) != 1 || got[0].path != "/default" || got[0].id != "msg_"+r.ID+".d0.0" {
		t.Errorf("received %+v", got)
	}
}

// TestSignature checks Sign and Verify against the Standard Webhooks
// reference example.
func TestSignature(t *testing.T) {
	// From the Standard Webhooks specification's test vectors.
	key, err := SigningKey("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"test": 2432232314}`)
	if got := Sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body); got != "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=" {
		t.Errorf("signature %s", got)
	}
	h := http.Header{}
	h.Set(HeaderID, "msg_p5jXN8AQM9LWM0D4loKWxJek")
	h.Set(HeaderTimestamp, "1614265330")
	h.Set(HeaderSignature, "v1,bad v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
	at := time.Unix(1614265330, 0)
	if err := Verify(hookSecret, h, body, at, time.Minute); err != nil {
		t.Errorf("valid signature refused: %v", err)
	}
	if err := Verify(hookSecret, h, []byte(`{"test": 1}`), at, time.Minute); err == nil {
		t.Error("a changed body passed")
	}
	if err := Verify(wrongSecret, h, body, at, time.Minute); err == nil {
		t.Error("another secret passed")
	}
	if err := Verify(hookSecret, h, body, at.Add(time.Hour), time.Minute); err == nil {
		t.Error("an old timestamp passed")
	}
	if _, err := SigningKey("not-whsec"); err == nil {
		t.Error("a secret without whsec_ passed")
	}
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// TestAnInstanceStoppingHandsTheDeliveryOver: an instance that stops
// while it waits to retry gives its claim up, and another instance serving
// the same consumer delivers the notification.
func TestAnInstanceStoppingHandsTheDeliveryOver(t *testing.T) {
	rc := newReceiver(t, hookSecret)
	rc.fail = []int{500}
	ctxA, stopA := context.WithCancel(context.Background())
	defer stopA()
	e := &env{Env: pipelinetest.Start(t)}
	e.init(t)
	e.n = e.notifier(t, ctxA, Config{Backoff: time.Hour})
	e.setSecret(t, "", "HOOK", hookSecret)
	e.apply(t, fmt.Sprintf(failingPipeline, rc.srv.URL))
	r := e.run(t, "api", "", "main")
	waitFor(t, "the first try", 10*time.Second, func() bool { return len(rc.received()) == 1 })
	stopA()
	waitFor(t, "the claim to be given up", 10*time.Second, func() bool {
		recs, err := e.n.Deliveries(context.Background(), r.ID)
		return err == nil && len(recs) == 0
	})
	ctxB, stopB := context.WithCancel(context.Background())
	defer stopB()
	b := e.notifier(t, ctxB, Config{})
	waitFor(t, "the second instance's delivery", 15*time.Second, func() bool {
		recs, err := b.Deliveries(context.Background(), r.ID)
		return err == nil && recs[r.ID+".p0.0"].State == StateDelivered
	})
	if got := rc.received(); len(got) != 2 || got[1].payload.Data.RunID != r.ID {
		t.Errorf("received %+v", got)
	}
}

// TestNoMailWithoutSTARTTLS: a relay that does not offer STARTTLS gets no
// message and no password; the delivery fails at once, not retried.
func TestNoMailWithoutSTARTTLS(t *testing.T) {
	ms := notifytest.StartMail(t, "ansflow", smtpPassword, false)
	e := start(t, Config{SMTP: SMTPConfig{Addr: ms.Addr, From: "ci@example.com", Username: "ansflow", PasswordSecret: "SMTP_PASSWORD"}})
	e.setSecret(t, "", "SMTP_PASSWORD", smtpPassword)
	e.apply(t, "pipeline:\n  name: mailed\n  steps:\n    - name: a\n      type: docker_run\n      command: exit 1\n"+
		"  notify:\n    - when: [always]\n      targets:\n        - type: email\n          to: [dev@example.com]\n")
	r := e.run(t, "mailed", "", "main")
	waitFor(t, "the email delivery to fail", 10*time.Second, func() bool { return e.deliveriesDone(r.ID, 1) })
	rec := e.record(t, r.ID+".p0.0")
	if rec.State != StateFailed || rec.Attempts != 1 || !strings.Contains(rec.Error, "does not offer STARTTLS") {
		t.Errorf("record %+v", rec)
	}
	if n := len(ms.Received()); n != 0 {
		t.Errorf("%d mails sent in the clear", n)
	}
	e.noSecrets(t)
}

// TestWebhooksKeepToTheAllowedHosts: under the default policy a webhook
// aimed at the service's own loopback is refused before anything is sent,
// once (a refusal is not retried), with an error that says why; allowed
// by name, the same receiver gets it.
func TestWebhooksKeepToTheAllowedHosts(t *testing.T) {
	e := start(t, Config{AllowedHosts: DefaultAllowedHosts, Attempts: 3, Backoff: 10 * time.Millisecond})
	rc := newReceiver(t, hookSecret)
	e.setSecret(t, "api", "HOOK", hookSecret)
	e.apply(t, fmt.Sprintf(failingPipeline, rc.srv.URL))
	r := e.run(t, "api", "", "main")
	waitFor(t, "the refused delivery", 10*time.Second, func() bool { return e.deliveriesDone(r.ID, 1) })
	rec := e.record(t, r.ID+".p0.0")
	if rec.State != StateFailed || rec.Attempts != 1 || !strings.Contains(rec.Error, "is not allowed by --notify-allowed-hosts") {
		t.Errorf("record %+v", rec)
	}
	if n := len(rc.received()); n != 0 {
		t.Errorf("the receiver got %d requests", n)
	}

	e = start(t, Config{AllowedHosts: "localhost"})
	e.setSecret(t, "api", "HOOK", hookSecret)
	_, port, _ := strings.Cut(strings.TrimPrefix(rc.srv.URL, "http://"), ":")
	e.apply(t, fmt.Sprintf(failingPipeline, "http://localhost:"+port))
	e.run(t, "api", "", "main")
	waitFor(t, "the delivery allowed by name", 10*time.Second, func() bool { return len(rc.received()) == 1 })
}
