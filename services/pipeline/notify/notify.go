// Package notify announces finished runs. Every pipeline service instance
// serves the shared durable consumer of run.completed events
// ([topology.DurableNotify]), reads the run from the store, decides which
// of its pipeline's notify: rules (or the server-wide default rules) fire,
// and delivers each rule's targets: generic webhooks signed with the
// Standard Webhooks scheme, Slack-compatible incoming webhooks and email
// over SMTP with STARTTLS.
//
// Each delivery is recorded in the [topology.BucketNotifications] bucket
// under run, rule and target, so that a redelivered completion event sends
// nothing twice; it is attempted with a bounded exponential backoff, and
// every attempt is an io.ansflow.api.action.v1 event for the audit trail.
// Secret values (signing secrets, Slack URLs, the SMTP password) are read
// from the secret store at delivery and never logged, stored or audited.
package notify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/metrics"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/pkg/topology"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// Defaults of [Config].
const (
	DefaultAttempts   = 5
	DefaultBackoff    = 2 * time.Second
	DefaultMaxBackoff = time.Minute
	DefaultTimeout    = 15 * time.Second
	DefaultLogLines   = 20
)

// Config configures notifications.
type Config struct {
	// ExternalURL is the service's address as its users reach it; a
	// notification links to ExternalURL/runs/{id}.
	ExternalURL string
	// Default are the rules of pipelines that declare no notify: rules.
	Default []spec.NotifyRule
	// SMTP is the email relay.
	SMTP SMTPConfig
	// Attempts bounds the tries of one delivery (default 5); Backoff is
	// the wait after the first failed try, doubled after each further one
	// up to MaxBackoff.
	Attempts   int
	Backoff    time.Duration
	MaxBackoff time.Duration
	// Timeout bounds one try (default 15s).
	Timeout time.Duration
	// LogLines is how many last lines of each failed step's stdout and
	// stderr a notification carries (default 20).
	LogLines int
	// Concurrency is how many completions this instance handles at once.
	Concurrency int
	// Replicas of the deliveries bucket.
	Replicas int
	// AllowedHosts is the operator's [HostPolicy] of webhook and Slack
	// targets, as [ParseHostPolicy] reads it ("": DefaultAllowedHosts).
	AllowedHosts string
	// HTTPClient sends webhooks (default: AllowedHosts' client with
	// Timeout); a client given here replaces the policy's.
	HTTPClient *http.Client
	// Metrics counts notifications by channel and outcome, and the
	// consumer's redeliveries and dead letters; nil counts nothing.
	Metrics *metrics.Metrics
}

func (c *Config) defaults() {
	if c.Attempts <= 0 {
		c.Attempts = DefaultAttempts
	}
	if c.Backoff <= 0 {
		c.Backoff = DefaultBackoff
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.LogLines <= 0 {
		c.LogLines = DefaultLogLines
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 4
	}
}

// Runs is what the notifier reads of the store.
type Runs interface {
	GetRun(ctx context.Context, id string) (*store.Run, error)
	ListRuns(ctx context.Context, f store.RunFilter) ([]*store.Run, error)
}

// Secrets resolves a secret by name for a pipeline: the pipeline's own,
// else the global one ("" pipeline: the global one only).
type Secrets interface {
	Secret(ctx context.Context, pipeline, name string) (string, error)
}

// SecretsFunc adapts a function to [Secrets].
type SecretsFunc func(ctx context.Context, pipeline, name string) (string, error)

// Secret calls f.
func (f SecretsFunc) Secret(ctx context.Context, pipeline, name string) (string, error) {
	return f(ctx, pipeline, name)
}

// Notifier delivers notifications. Create it with [New].
type Notifier struct {
	cfg     Config
	js      jetstream.JetStream
	runs    Runs
	secrets Secrets
	kv      jetstream.KeyValue
	log     *zap.Logger
	owner   string
	now     func() time.Time
	sleep   func(ctx context.Context, d time.Duration) error
}

// Source is the CloudEvents source of the audit events the notifier
// publishes.
const Source = "ansflow/pipeline"

// AuditSubject is where the audit events go (the API's actions' subject).
const AuditSubject = "ansflow.events.api.action._"

// Actor is the audit trail's name for the notifier.
const Actor = "system:notify"

// New opens the deliveries bucket and the consumer (so that completions
// published from now on are seen even before [Notifier.Run]). secrets may
// be nil when the service keeps none: targets naming secrets then fail.
func New(ctx context.Context, cfg Config, js jetstream.JetStream, runs Runs, secrets Secrets, log *zap.Logger) (*Notifier, error) {
	cfg.defaults()
	if cfg.ExternalURL != "" {
		if u, err := url.Parse(cfg.ExternalURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("external URL %q: want http(s)://host[:port][/path]", cfg.ExternalURL)
		}
	}
	hosts, err := ParseHostPolicy(cfg.AllowedHosts)
	if err != nil {
		return nil, fmt.Errorf("allowed hosts: %w", err)
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = hosts.Client(cfg.Timeout)
	}
	kv, err := bus.EnsureKeyValue(ctx, js, topology.MustBucket(topology.BucketNotifications, cfg.Replicas))
	if err != nil {
		return nil, fmt.Errorf("notifications bucket: %w", err)
	}
	if _, err := bus.EnsureConsumer(ctx, js, consumerConfig(cfg)); err != nil {
		return nil, fmt.Errorf("notify consumer: %w", err)
	}
	host, _ := os.Hostname()
	return &Notifier{cfg: cfg, js: js, runs: runs, secrets: secrets, kv: kv, log: log.Named("notify"),
		owner: host + "/" + uuid.NewString()[:8], now: time.Now, sleep: sleepCtx}, nil
}

func consumerConfig(cfg Config) bus.ConsumerConfig {
	c := topology.NotifyConsumer(cfg.Concurrency)
	return bus.ConsumerConfig{Stream: c.Stream, Durable: c.Config.Durable, FilterSubjects: c.Config.FilterSubjects,
		AckWait: c.Config.AckWait, Concurrency: cfg.Concurrency, DeliverNew: true, MaxDeliver: 20, RetryDelay: 2 * time.Second,
		Metrics: cfg.Metrics}
}

// Run consumes run completions until ctx is done.
func (n *Notifier) Run(ctx context.Context) error {
	return bus.Consume(ctx, n.js, consumerConfig(n.cfg), bus.Chain(n.Handle, bus.KnownTypes()), n.log)
}

// Handle processes one event: a run.completed event notifies, others are
// ignored. It returns a retryable error while another instance holds a
// delivery of the run, so that the event comes back.
func (n *Notifier) Handle(ctx context.Context, e cloudevents.Event) error {
	if e.Type() != event.TypeRunCompleted {
		return nil
	}
	var rc event.RunCompleted
	if err := event.DecodeData(e, &rc); err != nil {
		return bus.Permanent(err)
	}
	r, err := n.runs.GetRun(ctx, rc.RunID)
	if errors.Is(err, store.ErrNotFound) {
		return bus.Permanent(fmt.Errorf("run %s: %w", rc.RunID, err))
	}
	if err != nil {
		return fmt.Errorf("read run %s: %w", rc.RunID, err)
	}
	if !r.Terminal() {
		// The completion is announced after the run's end is written, but
		// this instance may read the run before its copy shows that write
		// (a failover, a lagging replica): retried, the event finds it.
		return fmt.Errorf("run %s reads as %s, not yet finished; retrying", r.ID, r.Status)
	}
	rules, prefix := n.cfg.Default, "d"
	if r.Spec != nil && len(r.Spec.Notify) > 0 {
		rules, prefix = r.Spec.Notify, "p"
	}
	if len(rules) == 0 {
		return nil
	}
	prev := ""
	if needsPrevious(rules) {
		if prev, err = n.previous(ctx, r); err != nil {
			return fmt.Errorf("previous run of %s: %w", r.Pipeline, err)
		}
	}
	var busy []error
	for i, rule := range rules {
		if !rule.Fires(r.Status, prev) {
			continue
		}
		var reasons []string
		for _, w := range rule.When {
			if spec.NotifyMatches(w, r.Status, prev) {
				reasons = append(reasons, w)
			}
		}
		msg := message(r, prev, reasons, n.cfg.ExternalURL, n.cfg.LogLines)
		for j, t := range rule.Targets {
			d := delivery{key: fmt.Sprintf("%s.%s%d.%d", r.ID, prefix, i, j), rule: fmt.Sprintf("%s%d", prefix, i), target: t, msg: msg}
			if err := n.deliver(ctx, d); err != nil {
				busy = append(busy, err)
			}
		}
	}
	return errors.Join(busy...)
}

func needsPrevious(rules []spec.NotifyRule) bool {
	for _, r := range rules {
		if slices.Contains(r.When, spec.NotifyRecovery) || slices.Contains(r.When, spec.NotifyChange) {
			return true
		}
	}
	return false
}

// previous is the status of the previous finished run of r's pipeline and
// branch: the highest build number below r's that succeeded or failed
// (cancelled runs say nothing about the code).
func (n *Notifier) previous(ctx context.Context, r *store.Run) (string, error) {
	runs, err := n.runs.ListRuns(ctx, store.RunFilter{Pipeline: r.Pipeline})
	if err != nil {
		return "", err
	}
	best, status := 0, ""
	for _, o := range runs {
		if o.ID == r.ID || o.BuildNumber >= r.BuildNumber || o.BuildNumber <= best || o.Branch() != r.Branch() {
			continue
		}
		if o.Status == event.StatusSucceeded || o.Status == event.StatusFailed {
			best, status = o.BuildNumber, o.Status
		}
	}
	return status, nil
}

// delivery is one target of one rule for one run.
type delivery struct {
	key    string
	rule   string
	target spec.NotifyTarget
	msg    Message
}

// Record is a delivery's entry in the deliveries bucket. It holds no
// secret.
type Record struct {
	State    string    `json:"state"` // sending, delivered or failed
	Owner    string    `json:"owner"`
	Attempts int       `json:"attempts"`
	Error    string    `json:"error,omitempty"`
	At       time.Time `json:"at"`
}

// Delivery states.
const (
	StateSending   = "sending"
	StateDelivered = "delivered"
	StateFailed    = "failed"
)

// errBusy says another instance is delivering; the event is retried.
var errBusy = errors.New("another instance is delivering this notification")

// claimTTL is how long a "sending" record holds before another instance
// may take the delivery over: longer than every try and wait of it.
func (n *Notifier) claimTTL() time.Duration {
	total := time.Duration(0)
	for a := 1; a < n.cfg.Attempts; a++ {
		total += n.backoff(a)
	}
	return total + time.Duration(n.cfg.Attempts)*n.cfg.Timeout + 30*time.Second
}

func (n *Notifier) backoff(attempt int) time.Duration {
	d := n.cfg.Backoff
	for i := 1; i < attempt && d < n.cfg.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, n.cfg.MaxBackoff)
}

// claim records that this instance delivers d, unless it was delivered
// (or given up) already; it returns false then.
func (n *Notifier) claim(ctx context.Context, d delivery) (bool, uint64, error) {
	rec, _ := json.Marshal(Record{State: StateSending, Owner: n.owner, At: n.now().UTC()})
	rev, err := n.kv.Create(ctx, d.key, rec)
	if err == nil {
		return true, rev, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return false, 0, fmt.Errorf("record delivery %s: %w", d.key, err)
	}
	e, err := n.kv.Get(ctx, d.key)
	if err != nil {
		return false, 0, fmt.Errorf("read delivery %s: %w", d.key, err)
	}
	var cur Record
	if err := json.Unmarshal(e.Value(), &cur); err != nil {
		return false, 0, fmt.Errorf("delivery %s: %w", d.key, err)
	}
	if cur.State != StateSending {
		return false, 0, nil
	}
	if n.now().Sub(cur.At) < n.claimTTL() {
		return false, 0, fmt.Errorf("%w: %s (%s)", errBusy, d.key, cur.Owner)
	}
	rev, err = n.kv.Update(ctx, d.key, rec, e.Revision())
	if err != nil {
		return false, 0, fmt.Errorf("%w: %s: take over: %v", errBusy, d.key, err)
	}
	return true, rev, nil
}

// deliver sends d with retries unless it was sent already, recording each
// attempt in the audit trail and the outcome in the bucket. Only a
// delivery another instance holds, or a bucket failure, is an error.
func (n *Notifier) deliver(ctx context.Context, d delivery) error {
	ok, rev, err := n.claim(ctx, d)
	if err != nil {
		return err
	}
	if !ok {
		n.log.Debug("notification already delivered", zap.String("delivery", d.key))
		return nil
	}
	desc := describe(d.target)
	var last error
	attempt := 0
	for attempt = 1; attempt <= n.cfg.Attempts; attempt++ {
		actx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
		status, err := n.send(actx, d)
		cancel()
		if err != nil && ctx.Err() != nil {
			return n.release(d, rev, ctx.Err())
		}
		outcome := "delivered"
		if err != nil {
			outcome = "error: " + err.Error()
		}
		n.audit(ctx, d, desc, attempt, status, outcome)
		if err == nil {
			last = nil
			break
		}
		last = err
		n.log.Warn("notification not delivered", zap.String("delivery", d.key), zap.String("target", desc),
			zap.Int("attempt", attempt), zap.Error(err))
		if IsPermanent(err) || attempt == n.cfg.Attempts {
			break
		}
		if err := n.sleep(ctx, n.backoff(attempt)); err != nil {
			return n.release(d, rev, err)
		}
	}
	rec := Record{State: StateDelivered, Owner: n.owner, Attempts: min(attempt, n.cfg.Attempts), At: n.now().UTC()}
	if last != nil {
		rec.State, rec.Error = StateFailed, last.Error()
	}
	n.cfg.Metrics.NotificationDelivery(string(d.target.Type), rec.State)
	b, _ := json.Marshal(rec)
	if _, err := n.kv.Update(context.WithoutCancel(ctx), d.key, b, rev); err != nil {
		n.log.Warn("record notification outcome", zap.String("delivery", d.key), zap.Error(err))
	}
	return nil
}

// release gives up this instance's claim of d when it shuts down, so that
// the completion, which comes back to another instance, is delivered at
// once instead of after the claim's TTL.
func (n *Notifier) release(d delivery, rev uint64, cause error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.kv.Delete(ctx, d.key, jetstream.LastRevision(rev)); err != nil {
		n.log.Warn("release notification claim", zap.String("delivery", d.key), zap.Error(err))
	}
	return fmt.Errorf("delivery %s interrupted: %w", d.key, cause)
}

// send makes one try of d.
func (n *Notifier) send(ctx context.Context, d delivery) (int, error) {
	t := d.target
	switch t.Type {
	case spec.TargetWebhook:
		secret, err := n.secret(ctx, d.msg.Pipeline, t.Secret)
		if err != nil {
			return 0, err
		}
		key, err := SigningKey(secret)
		if err != nil {
			return 0, permanent("secret %s: %v", t.Secret, err)
		}
		body, err := json.Marshal(Payload{Type: EventType, Timestamp: n.now().UTC(), Data: d.msg})
		if err != nil {
			return 0, permanent("encode: %v", err)
		}
		// The id stays the same across tries, so a receiver can drop a
		// repeated delivery.
		id := "msg_" + d.key
		ts := n.now().Unix()
		h := http.Header{}
		h.Set(HeaderID, id)
		h.Set(HeaderTimestamp, fmt.Sprint(ts))
		h.Set(HeaderSignature, Sign(key, id, ts, body))
		return postJSON(ctx, n.cfg.HTTPClient, t.URL, body, h)
	case spec.TargetSlack:
		u, err := n.secret(ctx, d.msg.Pipeline, t.URLSecret)
		if err != nil {
			return 0, err
		}
		if pu, err := url.Parse(u); err != nil || (pu.Scheme != "https" && pu.Scheme != "http") || pu.Host == "" {
			return 0, permanent("secret %s does not hold an http(s) URL", t.URLSecret)
		}
		body, err := json.Marshal(SlackMessage(d.msg))
		if err != nil {
			return 0, permanent("encode: %v", err)
		}
		return postJSON(ctx, n.cfg.HTTPClient, u, body, nil)
	case spec.TargetEmail:
		password := ""
		if n.cfg.SMTP.Username != "" && n.cfg.SMTP.PasswordSecret != "" {
			var err error
			if password, err = n.secret(ctx, "", n.cfg.SMTP.PasswordSecret); err != nil {
				return 0, err
			}
		}
		return 0, sendMail(ctx, n.cfg.SMTP, password, t.To, "[AnsFlow] "+d.msg.Title(), d.msg.Text())
	}
	return 0, permanent("unknown target type %q", t.Type)
}

// secret resolves a named secret; a missing one is permanent.
func (n *Notifier) secret(ctx context.Context, pipeline, name string) (string, error) {
	if n.secrets == nil {
		return "", permanent("secret %s: the service keeps no secrets (no secrets key)", name)
	}
	v, err := n.secrets.Secret(ctx, pipeline, name)
	if err != nil {
		return "", permanent("secret %s: %v", name, err)
	}
	return v, nil
}

// describe names a target for logs and the audit trail without a secret:
// a webhook's URL without its query, a Slack webhook by its secret's name.
func describe(t spec.NotifyTarget) string {
	switch t.Type {
	case spec.TargetWebhook:
		if u, err := url.Parse(t.URL); err == nil {
			return "webhook " + u.Scheme + "://" + u.Host + u.Path
		}
		return "webhook"
	case spec.TargetSlack:
		return "slack (url in secret " + t.URLSecret + ")"
	case spec.TargetEmail:
		return fmt.Sprintf("email to %v", t.To)
	}
	return t.Type
}

// audit publishes one attempt's outcome as an API action on run/<id>.
func (n *Notifier) audit(ctx context.Context, d delivery, desc string, attempt, status int, outcome string) {
	detail := fmt.Sprintf("rule %s, %s, attempt %d of %d", d.rule, desc, attempt, n.cfg.Attempts)
	if status != 0 {
		detail += fmt.Sprintf(", HTTP %d", status)
	}
	e, err := event.New(Source, event.TypeAPIAction, event.Meta{RunID: d.msg.RunID}, event.Action{
		Actor: Actor, Action: "notify." + d.target.Type, Target: "run/" + d.msg.RunID, Outcome: outcome, Detail: detail})
	if err != nil {
		return
	}
	e.SetSubject("run/" + d.msg.RunID)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := bus.Publish(ctx, n.js, AuditSubject, e); err != nil {
		n.log.Warn("audit notification", zap.String("delivery", d.key), zap.Error(err))
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Deliveries returns the delivery records of run id, by key
// (<run>.<rule>.<target>: rule p<N> is the pipeline's N-th rule, d<N> the
// server-wide default's).
func (n *Notifier) Deliveries(ctx context.Context, id string) (map[string]Record, error) {
	keys, err := n.kv.ListKeysFiltered(ctx, id+".>")
	if err != nil {
		return nil, fmt.Errorf("list deliveries of %s: %w", id, err)
	}
	defer keys.Stop()
	out := map[string]Record{}
	for k := range keys.Keys() {
		e, err := n.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read delivery %s: %w", k, err)
		}
		var r Record
		if err := json.Unmarshal(e.Value(), &r); err != nil {
			return nil, fmt.Errorf("delivery %s: %w", k, err)
		}
		out[k] = r
	}
	return out, nil
}
