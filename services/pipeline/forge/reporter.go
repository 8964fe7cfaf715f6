package forge

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/metrics"
	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/pkg/topology"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// DefaultTokenSecret is the stored secret holding the forge token when
// neither the server nor the pipeline names another.
const DefaultTokenSecret = "forge_token"

// Source is the CloudEvents source of the reporter's audit records.
const Source = "ansflow/pipeline/forge"

// Actor is who the audit records say posted a status.
const Actor = "forge-status"

// Providers are the forges statuses can be posted to.
var Providers = []string{"github", "gitlab", "gitea"}

// Config configures a [Reporter]. The zero value posts run statuses
// without links, with the defaults below.
type Config struct {
	// ExternalURL is the pipeline service's address as users reach it
	// (such as https://ci.example.com); a status links to
	// ExternalURL/runs/{id}. Empty: statuses carry no link.
	ExternalURL string
	// TokenSecret names the stored secret (the pipeline's, else the
	// global one) holding the forge API token, for pipelines whose
	// status.token_secret names none (default [DefaultTokenSecret]).
	TokenSecret string
	// Steps posts a status per step as well as the run's, for pipelines
	// whose status.steps says nothing.
	Steps bool
	// APIURLs pins the API URL of a provider ("github": its REST root,
	// "gitlab" and "gitea": the instance's web root), so the token is sent
	// only there; a provider not listed is called at the URL its signed
	// webhook payload gave.
	APIURLs map[string]string
	// Attempts bounds the calls made for one status (default 5).
	Attempts int
	// Backoff is the wait after the first failed call, doubling after
	// each further one up to MaxBackoff (defaults 500ms and 10s).
	Backoff, MaxBackoff time.Duration
	// CallTimeout bounds one call (default 10s).
	CallTimeout time.Duration
	// StepWait bounds how long a step.completed event waits for the run in
	// the store to show the step's end (default 5s).
	StepWait time.Duration
	// Concurrency is how many events one instance handles at once
	// (default 4).
	Concurrency int
	// Replicas of the status bucket (default 1).
	Replicas int
	// CAFile, when set, is the PEM file of the CAs trusted for the forges'
	// HTTPS certificates instead of the system's (a forge with a private
	// CA); it is ignored when HTTPClient is set.
	CAFile string
	// HTTPClient makes the calls (default: a client with CallTimeout that
	// follows no redirect).
	HTTPClient *http.Client
	// Metrics counts statuses by forge and outcome (posted, failed), and
	// the consumer's redeliveries and dead letters; nil counts nothing.
	Metrics *metrics.Metrics
	// roots is CAFile's pool, read by Validate.
	roots *x509.CertPool
}

func (c *Config) defaults() {
	if c.TokenSecret == "" {
		c.TokenSecret = DefaultTokenSecret
	}
	if c.Attempts <= 0 {
		c.Attempts = 5
	}
	if c.Backoff <= 0 {
		c.Backoff = 500 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 10 * time.Second
	}
	if c.CallTimeout <= 0 {
		c.CallTimeout = 10 * time.Second
	}
	if c.StepWait <= 0 {
		c.StepWait = 5 * time.Second
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 4
	}
	if c.HTTPClient == nil {
		// No redirects: GitLab's PRIVATE-TOKEN header would follow one to
		// another host.
		c.HTTPClient = &http.Client{Timeout: c.CallTimeout,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		if c.roots != nil {
			tr := http.DefaultTransport.(*http.Transport).Clone()
			tr.TLSClientConfig = &tls.Config{RootCAs: c.roots, MinVersion: tls.VersionTLS12}
			c.HTTPClient.Transport = tr
		}
	}
}

// Validate checks the settings a user gives.
func (c *Config) Validate() error {
	if c.ExternalURL != "" {
		u, err := url.Parse(c.ExternalURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("external URL %q: want http(s)://HOST[/PATH]", c.ExternalURL)
		}
	}
	if c.TokenSecret != "" && !secret.ValidName(c.TokenSecret) {
		return fmt.Errorf("forge token secret %q: not a secret name", c.TokenSecret)
	}
	if c.CAFile != "" {
		b, err := os.ReadFile(c.CAFile)
		if err != nil {
			return fmt.Errorf("forge CA file: %w", err)
		}
		c.roots = x509.NewCertPool()
		if !c.roots.AppendCertsFromPEM(b) {
			return fmt.Errorf("forge CA file %s: no PEM certificate in it", c.CAFile)
		}
	}
	for p, u := range c.APIURLs {
		if !known(p) {
			return fmt.Errorf("forge API URL for %q: want one of %v", p, Providers)
		}
		if _, err := baseURL(u); err != nil {
			return fmt.Errorf("%s API URL: %w", p, err)
		}
	}
	return nil
}

func known(provider string) bool {
	for _, p := range Providers {
		if p == provider {
			return true
		}
	}
	return false
}

// NewSetter returns the [Setter] of provider calling apiURL with token.
func NewSetter(provider, apiURL, token string, hc *http.Client) (Setter, error) {
	switch provider {
	case "github":
		return NewGitHub(apiURL, token, hc)
	case "gitlab":
		return NewGitLab(apiURL, token, hc)
	case "gitea":
		return NewGitea(apiURL, token, hc)
	}
	return nil, fmt.Errorf("%w: unknown forge %q", errBadRequest, provider)
}

// Runs reads runs; the pipeline service's store implements it.
type Runs interface {
	GetRun(ctx context.Context, id string) (*store.Run, error)
}

// Tokens resolves stored secrets; the secret store implements it.
type Tokens interface {
	Resolve(ctx context.Context, pipeline, name string) (secret.Meta, []byte, error)
}

// Reporter posts the commit statuses of webhook runs as their events
// arrive. It is safe for concurrent use, and any number of instances may
// share the bus.
type Reporter struct {
	cfg    Config
	js     jetstream.JetStream
	kv     jetstream.KeyValue
	runs   Runs
	tokens Tokens
	log    *zap.Logger
	cc     bus.ConsumerConfig

	mu    sync.Mutex
	locks map[string]*runLock
}

// runLock serialises the handling of one run's events in this instance,
// so each reads the run after the previous one posted; instances order
// their posts through the status bucket.
type runLock struct {
	sync.Mutex
	users int
}

func (r *Reporter) lockRun(id string) func() {
	r.mu.Lock()
	l, ok := r.locks[id]
	if !ok {
		l = &runLock{}
		r.locks[id] = l
	}
	l.users++
	r.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		r.mu.Lock()
		if l.users--; l.users == 0 {
			delete(r.locks, id)
		}
		r.mu.Unlock()
	}
}

// New opens the status bucket and the durable consumer. tokens may be nil
// (no secret store): every status call then fails, saying why, in the
// audit trail.
func New(ctx context.Context, cfg Config, js jetstream.JetStream, runs Runs, tokens Tokens, log *zap.Logger) (*Reporter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.defaults()
	kv, err := bus.EnsureKeyValue(ctx, js, topology.MustBucket(topology.BucketForgeStatus, cfg.Replicas))
	if err != nil {
		return nil, fmt.Errorf("forge status bucket: %w", err)
	}
	c := topology.ForgeStatusConsumer(cfg.Concurrency)
	cc := bus.ConsumerConfig{Stream: c.Stream, Durable: c.Config.Durable, FilterSubjects: c.Config.FilterSubjects,
		Concurrency: cfg.Concurrency, DeliverNew: c.Config.DeliverPolicy == jetstream.DeliverNewPolicy, MaxDeliver: 5,
		Metrics: cfg.Metrics}
	// Made now, so that no run created after New returns is missed.
	if _, err := bus.EnsureConsumer(ctx, js, cc); err != nil {
		return nil, err
	}
	return &Reporter{cfg: cfg, js: js, kv: kv, runs: runs, tokens: tokens, log: log.Named("forge"), cc: cc,
		locks: map[string]*runLock{}}, nil
}

// Run consumes run events until ctx is done.
func (r *Reporter) Run(ctx context.Context) error {
	return bus.Consume(ctx, r.js, r.cc, bus.Chain(r.handle, bus.KnownTypes()), r.log)
}

// runRef is what every event the reporter reads says about its run.
type runRef struct {
	RunID   string `json:"run_id"`
	StepID  string `json:"step_id"`
	Attempt int    `json:"attempt"`
}

func (r *Reporter) handle(ctx context.Context, e cloudevents.Event) error {
	var d runRef
	if err := event.DecodeData(e, &d); err != nil {
		return bus.Permanent(fmt.Errorf("decode %s: %w", e.Type(), err))
	}
	if d.RunID == "" {
		return bus.Permanent(fmt.Errorf("%s %s names no run", e.Type(), e.ID()))
	}
	defer r.lockRun(d.RunID)()
	run, err := r.runs.GetRun(ctx, d.RunID)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read run %s: %w", d.RunID, err)
	}
	if !wants(run) {
		return nil
	}
	if e.Type() == event.TypeStepCompleted {
		run = r.awaitStep(ctx, run, d.StepID, d.Attempt)
	}
	r.Report(ctx, run)
	return nil
}

// wants reports whether run gets commit statuses: a webhook run of a known
// forge naming its repository and commit, of a pipeline that did not turn
// them off.
func wants(run *store.Run) bool {
	t := run.Trigger
	if (t.Kind != "webhook" && t.Kind != "rerun") || t.Repo == nil || !known(t.Provider) || commitOf(run) == "" {
		return false
	}
	return run.Spec == nil || run.Spec.Status == nil || !run.Spec.Status.Disabled
}

func commitOf(run *store.Run) string {
	if run.Source != nil && run.Source.Commit != "" {
		return run.Source.Commit
	}
	return run.Vars["git_commit"].Value
}

// awaitStep waits until the stored run shows the end of attempt of step
// (the orchestrator records it after the runner's event), or StepWait
// passes; it returns the latest run read.
func (r *Reporter) awaitStep(ctx context.Context, run *store.Run, stepID string, attempt int) *store.Run {
	deadline := time.Now().Add(r.cfg.StepWait)
	for {
		s := run.Step(stepID)
		if s == nil || run.Terminal() || s.Terminal() || s.Attempts > attempt || time.Now().After(deadline) {
			return run
		}
		select {
		case <-ctx.Done():
			return run
		case <-time.After(25 * time.Millisecond):
		}
		if nr, err := r.runs.GetRun(ctx, run.ID); err == nil {
			run = nr
		}
	}
}

// Statuses returns the statuses run should show now: the run's, then each
// step's when enabled.
func (r *Reporter) Statuses(run *store.Run) []Status {
	link := ""
	if r.cfg.ExternalURL != "" {
		link = strings.TrimRight(r.cfg.ExternalURL, "/") + "/runs/" + url.PathEscape(run.ID)
	}
	name := "ansflow/" + run.Pipeline
	out := []Status{{Context: name, State: runState(run), Description: runDescription(run), TargetURL: link}}
	steps := r.cfg.Steps
	if run.Spec != nil && run.Spec.Status != nil && run.Spec.Status.Steps != nil {
		steps = *run.Spec.Status.Steps
	}
	if steps {
		for _, s := range run.Steps {
			st := stepState(run, s)
			out = append(out, Status{Context: name + "/" + s.Name, State: st, Description: stepDescription(s, st), TargetURL: link})
		}
	}
	return out
}

func runState(run *store.Run) State {
	switch run.Status {
	case event.StatusSucceeded:
		return Success
	case event.StatusFailed:
		return Failure
	case event.StatusCancelled:
		return Cancelled
	}
	return Pending
}

func runDescription(run *store.Run) string {
	n := fmt.Sprintf("Run #%d", run.BuildNumber)
	switch run.Status {
	case event.StatusSucceeded:
		if run.StartedAt != nil && run.FinishedAt != nil {
			return fmt.Sprintf("%s succeeded in %s", n, run.FinishedAt.Sub(*run.StartedAt).Round(time.Second))
		}
		return n + " succeeded"
	case event.StatusFailed:
		var failed []string
		for _, s := range run.Steps {
			if s.Status == event.StatusFailed {
				failed = append(failed, s.Name)
			}
		}
		if len(failed) > 0 {
			return fmt.Sprintf("%s failed: %s", n, strings.Join(failed, ", "))
		}
		return n + " failed"
	case event.StatusCancelled:
		return n + " was cancelled"
	case event.StatusQueued:
		if run.AwaitingApproval() {
			return n + " is waiting for approval"
		}
		return n + " is queued"
	case event.StatusRunning:
		return n + " is running"
	}
	return n + " is pending"
}

func stepState(run *store.Run, s *apiv1.StepState) State {
	switch s.Status {
	case event.StatusSucceeded:
		return Success
	case event.StatusFailed:
		return Failure
	case event.StatusCancelled:
		return Cancelled
	case event.StatusSkipped:
		return Skipped
	}
	if run.Terminal() {
		return Cancelled // the run ended without it
	}
	return Pending
}

func stepDescription(s *apiv1.StepState, st State) string {
	switch st {
	case Success:
		return "succeeded"
	case Failure:
		return "failed"
	case Cancelled:
		return "cancelled"
	case Skipped:
		if s.SkipReason != "" {
			return "skipped: " + s.SkipReason
		}
		return "skipped"
	}
	return s.Status
}

// record is a status bucket entry: the last state claimed for one run and
// context, and the outcome of posting it. It never holds a token.
type record struct {
	State       State  `json:"state"`
	Context     string `json:"context"`
	Description string `json:"description,omitempty"`
	TargetURL   string `json:"target_url,omitempty"`
	Outcome     string `json:"outcome,omitempty"`
}

func statusKey(runID, context string) string {
	h := sha256.Sum256([]byte(context))
	return event.Token(runID) + "." + hex.EncodeToString(h[:12])
}

// Report posts each status of run that moved past the state last posted
// for its context. It never fails: outcomes go to the audit trail.
func (r *Reporter) Report(ctx context.Context, run *store.Run) {
	if !wants(run) {
		return
	}
	var setter Setter
	var setterErr error
	got := false
	for _, st := range r.Statuses(run) {
		key := statusKey(run.ID, st.Context)
		if !r.claim(ctx, key, st) {
			continue
		}
		if !got {
			setter, setterErr = r.setter(ctx, run)
			got = true
		}
		for {
			r.post(ctx, run, key, setter, setterErr, st)
			// Another handler may have claimed a later state while this
			// call was on its way; its call may have landed first, so
			// post the later state again to make it the last one.
			later, ok := r.laterClaim(ctx, key, st)
			if !ok {
				break
			}
			st = later
		}
	}
}

// claim records st as the state of key unless an equal or later state is
// recorded; it reports whether st is to be posted.
func (r *Reporter) claim(ctx context.Context, key string, st Status) bool {
	b, err := json.Marshal(record{State: st.State, Context: st.Context, Description: st.Description, TargetURL: st.TargetURL})
	if err != nil {
		return false
	}
	for range 20 {
		e, err := r.kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			_, err = r.kv.Create(ctx, key, b)
		case err != nil:
			r.log.Warn("read forge status", zap.String("key", key), zap.Error(err))
			return false
		default:
			var rec record
			if json.Unmarshal(e.Value(), &rec) == nil && rec.State.rank() >= st.State.rank() {
				return false // posted already, or a later state was
			}
			_, err = r.kv.Update(ctx, key, b, e.Revision())
		}
		if err == nil {
			return true
		}
		var apiErr *jetstream.APIError
		if !errors.Is(err, jetstream.ErrKeyExists) && !(errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence) {
			r.log.Warn("record forge status", zap.String("key", key), zap.Error(err))
			return false
		}
	}
	return false
}

// laterClaim returns the state recorded for key when it is later than st.
func (r *Reporter) laterClaim(ctx context.Context, key string, st Status) (Status, bool) {
	e, err := r.kv.Get(ctx, key)
	if err != nil {
		return st, false
	}
	var rec record
	if json.Unmarshal(e.Value(), &rec) != nil || rec.State.rank() <= st.State.rank() {
		return st, false
	}
	return Status{State: rec.State, Context: rec.Context, Description: rec.Description, TargetURL: rec.TargetURL}, true
}

// setter returns the Setter for run's forge with its token.
func (r *Reporter) setter(ctx context.Context, run *store.Run) (Setter, error) {
	name := r.cfg.TokenSecret
	if run.Spec != nil && run.Spec.Status != nil && run.Spec.Status.TokenSecret != "" {
		name = run.Spec.Status.TokenSecret
	}
	if r.tokens == nil {
		return nil, fmt.Errorf("forge token secret %q: no secret store is configured", name)
	}
	_, token, err := r.tokens.Resolve(ctx, run.Pipeline, name)
	if err != nil {
		return nil, fmt.Errorf("forge token secret %q: %w", name, err)
	}
	api := r.cfg.APIURLs[run.Trigger.Provider]
	if api == "" {
		api = run.Trigger.Repo.APIURL
	}
	s, err := NewSetter(run.Trigger.Provider, api, strings.TrimSpace(string(token)), r.cfg.HTTPClient)
	if err != nil {
		return nil, err
	}
	return redacting{s: s, token: strings.TrimSpace(string(token))}, nil
}

// redacting is a Setter whose errors never show its token, whatever a
// client or a forge puts in them.
type redacting struct {
	s     Setter
	token string
}

func (r redacting) SetStatus(ctx context.Context, repo apiv1.ForgeRepo, sha string, st Status) error {
	err := r.s.SetStatus(ctx, repo, sha, st)
	if err == nil || r.token == "" || !strings.Contains(err.Error(), r.token) {
		return err
	}
	return &redactedError{msg: strings.ReplaceAll(err.Error(), r.token, "[redacted]"), err: err}
}

// redactedError is an error with the token cut out of its message; it
// still unwraps to the original for [Retryable].
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// post calls setter for st with bounded retries and records the outcome
// in the bucket and the audit trail.
func (r *Reporter) post(ctx context.Context, run *store.Run, key string, setter Setter, err error, st Status) {
	repo, sha := *run.Trigger.Repo, commitOf(run)
	attempts := 0
	if err == nil {
		wait := r.cfg.Backoff
		for attempts < r.cfg.Attempts {
			attempts++
			cctx, cancel := context.WithTimeout(ctx, r.cfg.CallTimeout)
			err = setter.SetStatus(cctx, repo, sha, st)
			cancel()
			if err == nil || !Retryable(err) || attempts == r.cfg.Attempts || ctx.Err() != nil {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
			wait = min(2*wait, r.cfg.MaxBackoff)
		}
	}
	where := fmt.Sprintf("%s on %s@%s", st.Context, repo.FullName(), short(sha))
	outcome := fmt.Sprintf("posted %s to %s (%s)", st.State, where, plural(attempts, "attempt"))
	result := "posted"
	if err != nil {
		result = "failed"
		outcome = fmt.Sprintf("failed: %s %s: %v", st.State, where, err)
		if attempts > 0 {
			outcome += fmt.Sprintf(" (%s)", plural(attempts, "attempt"))
		}
		r.log.Warn("commit status not posted", zap.String("run_id", run.ID), zap.String("context", st.Context),
			zap.String("state", string(st.State)), zap.Int("attempts", attempts), zap.Error(err))
	}
	r.cfg.Metrics.CommitStatusDelivery(run.Trigger.Provider, result)
	r.audit(ctx, run, outcome)
	if e, gerr := r.kv.Get(ctx, key); gerr == nil {
		var rec record
		if json.Unmarshal(e.Value(), &rec) == nil && rec.State == st.State {
			rec.Outcome = outcome
			if b, merr := json.Marshal(rec); merr == nil {
				_, _ = r.kv.Update(ctx, key, b, e.Revision())
			}
		}
	}
}

// audit publishes the outcome of one status call for the audit trail.
func (r *Reporter) audit(ctx context.Context, run *store.Run, outcome string) {
	e, err := event.New(Source, event.TypeAPIAction, event.Meta{RunID: run.ID}, event.Action{
		Actor: Actor, Action: "forge.status." + run.Trigger.Provider, Target: "run/" + run.ID, Outcome: truncate(outcome, 1000)})
	if err != nil {
		return
	}
	e.SetSubject("run/" + run.ID)
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := bus.Publish(pctx, r.js, event.LifecycleSubject(event.TypeAPIAction, run.ID), e); err != nil {
		r.log.Warn("record forge status call", zap.String("run_id", run.ID), zap.Error(err))
	}
}

func short(sha string) string {
	if len(sha) > 12 {
		return sha[:12]
	}
	return sha
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
