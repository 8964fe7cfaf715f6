package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/metrics"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/pkg/tracing"
	"github.com/ansflow/ansflow/services/pipeline/orchestrator"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// MaxBody bounds a webhook delivery.
const MaxBody = 1 << 20

// TriggerTimeout bounds the creation of a delivery's run. It matches the
// 10 s GitHub waits for an answer: a delivery the forge gave up on is one
// it may send again, and the retry then finds the run or creates it.
const TriggerTimeout = 10 * time.Second

// Handler serves POST /webhooks/{provider}/{pipeline}. It is safe for
// concurrent use.
//
// A delivery is handled once its run exists, and only then: the run's id is
// derived from the provider, the pipeline and the delivery id ([RunID]), so
// the stored run is the record that the delivery was received. A replay
// finds that run and is answered duplicate; a delivery whose run could not
// be created is answered 503 and leaves nothing behind, so the forge's retry
// creates the run.
type Handler struct {
	st  *store.Store
	orc *orchestrator.Orchestrator
	js  jetstream.JetStream
	log *zap.Logger
	// Secret returns the value of the environment variable a trigger's
	// secret_env names (os.Getenv by default). It is asked only for names
	// starting with [spec.WebhookSecretEnvPrefix].
	Secret func(name string) string
	// Secrets resolves the stored secrets triggers name with secret:. Nil
	// until the secret store is wired: such triggers then refuse every
	// delivery, saying why.
	Secrets SecretSource
	// Now is the clock signed timestamps are checked against (time.Now by
	// default).
	Now func() time.Time
	// Metrics counts deliveries by provider and outcome (the answer's
	// status); nil counts nothing.
	Metrics *metrics.Metrics
}

// SecretSource resolves the webhook secret a trigger names with `secret:`
// (the path forward from secret_env: the secret store implements it).
// Implementations must be safe for concurrent use and must not log the
// value.
type SecretSource interface {
	// WebhookSecret returns the value of secret name as pipeline sees it
	// (a pipeline-scoped secret before a global one).
	WebhookSecret(ctx context.Context, pipeline, name string) (string, error)
}

// SecretSourceFunc adapts a function to [SecretSource].
type SecretSourceFunc func(ctx context.Context, pipeline, name string) (string, error)

// WebhookSecret calls f.
func (f SecretSourceFunc) WebhookSecret(ctx context.Context, pipeline, name string) (string, error) {
	return f(ctx, pipeline, name)
}

// errNoSecretStore is returned for a trigger naming a stored secret when
// no [SecretSource] is configured.
var errNoSecretStore = errors.New("no secret store is configured")

// secretFor returns the webhook secret of trigger t of pipeline.
func (h *Handler) secretFor(ctx context.Context, pipeline string, t *spec.Trigger) (string, error) {
	switch {
	case t.Secret != "":
		if h.Secrets == nil {
			return "", fmt.Errorf("trigger secret %q: %w", t.Secret, errNoSecretStore)
		}
		v, err := h.Secrets.WebhookSecret(ctx, pipeline, t.Secret)
		if err != nil {
			return "", fmt.Errorf("trigger secret %q: %w", t.Secret, err)
		}
		return v, nil
	case t.SecretEnv != "":
		// validation refuses other names; a pipeline stored before it
		// did must not read HOME or a cloud key either
		if !strings.HasPrefix(t.SecretEnv, spec.WebhookSecretEnvPrefix) {
			return "", fmt.Errorf("trigger secret_env %q: only %s* variables may hold a webhook secret", t.SecretEnv, spec.WebhookSecretEnvPrefix)
		}
		return h.Secret(t.SecretEnv), nil
	}
	return "", errors.New("trigger names no secret")
}

// New returns the webhook handler. It keeps no state of its own: ctx is
// unused and no error is returned today; both stay so that assembling the
// service does not change.
func New(_ context.Context, st *store.Store, orc *orchestrator.Orchestrator, js jetstream.JetStream, log *zap.Logger) (*Handler, error) {
	return &Handler{st: st, orc: orc, js: js, log: log.Named("webhook"), Secret: os.Getenv, Now: time.Now}, nil
}

// runNamespace is the UUIDv5 namespace of delivery run ids.
var runNamespace = uuid.NewSHA1(uuid.NameSpaceURL, []byte("urn:ansflow:webhook-delivery"))

// RunID is the id of the run a delivery starts: a UUIDv5 of the provider,
// the pipeline (by slug) and the delivery's signed key ([Delivery].Key), so
// every copy of one delivery names the same run, whatever unsigned headers
// a replay changes.
func RunID(provider, pipeline, key string) string {
	return uuid.NewSHA1(runNamespace, []byte(provider+"\n"+spec.Slug(pipeline)+"\n"+key)).String()
}

// RunPath is the API path of run id.
func RunPath(id string) string { return "/api/v1/runs/" + id }

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	provider, name := r.PathValue("provider"), r.PathValue("pipeline")
	span := trace.SpanFromContext(r.Context())
	if tracing.Enabled() {
		var ctx context.Context
		ctx, span = tracing.Tracer().Start(r.Context(), "webhook.delivery", trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(attribute.String("ansflow.webhook.provider", provider), attribute.String("ansflow.pipeline", name)))
		defer span.End()
		r = r.WithContext(ctx)
	}
	reply := func(code int, resp apiv1.WebhookResponse) {
		span.SetAttributes(attribute.Int("http.response.status_code", code), attribute.String("ansflow.webhook.status", resp.Status),
			attribute.String("ansflow.webhook.delivery", resp.Delivery), attribute.String("ansflow.run.id", resp.RunID))
		h.record(r, provider, name, resp)
		h.Metrics.WebhookDelivery(provider, resp.Status)
		w.Header().Set("Content-Type", "application/json")
		if resp.RunURL != "" {
			w.Header().Set("Location", resp.RunURL)
		}
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(resp)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		reply(http.StatusRequestEntityTooLarge, apiv1.WebhookResponse{Status: "rejected", Reason: fmt.Sprintf("body over %d bytes", MaxBody)})
		return
	}
	rec, err := h.st.GetPipeline(r.Context(), name)
	if errors.Is(err, store.ErrNotFound) {
		reply(http.StatusNotFound, apiv1.WebhookResponse{Status: "rejected", Reason: "no such pipeline"})
		return
	}
	if err != nil {
		h.log.Warn("webhook pipeline lookup failed", zap.String("pipeline", name), zap.Error(err))
		reply(http.StatusServiceUnavailable, apiv1.WebhookResponse{Status: "failed", Reason: "cannot read the pipeline; retry the delivery"})
		return
	}
	var triggers []*spec.Trigger
	for i := range rec.Spec.Triggers {
		if t := &rec.Spec.Triggers[i]; t.Type == "webhook" && t.Provider == provider {
			triggers = append(triggers, t)
		}
	}
	if len(triggers) == 0 {
		reply(http.StatusNotFound, apiv1.WebhookResponse{Status: "rejected", Reason: fmt.Sprintf("pipeline has no %s webhook trigger", provider)})
		return
	}
	var d Delivery
	verified := false
	why := ErrSignature.Error()
	for _, t := range triggers {
		key, err := h.secretFor(r.Context(), rec.Name, t)
		if err != nil {
			h.log.Warn("webhook secret", zap.String("pipeline", rec.Name), zap.Error(err))
			why = err.Error()
			continue
		}
		got, err := Verify(provider, r.Header, body, key, h.Now())
		d = got
		if err == nil {
			verified = true
			break
		}
		why = err.Error()
	}
	delivery := d.ID
	if !verified {
		reply(http.StatusUnauthorized, apiv1.WebhookResponse{Status: "rejected", Delivery: delivery, Reason: why})
		return
	}
	if delivery == "" {
		delivery = d.Key
	}
	push, err := Parse(provider, r.Header, body)
	if err != nil {
		reply(http.StatusBadRequest, apiv1.WebhookResponse{Status: "rejected", Delivery: delivery, Reason: err.Error()})
		return
	}
	if push == nil {
		reply(http.StatusAccepted, apiv1.WebhookResponse{Status: "ignored", Delivery: delivery, Reason: "event does not trigger runs"})
		return
	}
	why = ""
	var matched *spec.Trigger
	for _, t := range triggers {
		ok, reason := Match(t, push)
		if ok {
			matched = t
			break
		}
		why = reason
	}
	if matched == nil {
		reply(http.StatusAccepted, apiv1.WebhookResponse{Status: "ignored", Delivery: delivery, Reason: why})
		return
	}
	id := RunID(provider, rec.Name, d.Key)
	req := orchestrator.TriggerRequest{Pipeline: rec.Name, RunID: id,
		Git: orchestrator.GitInfo{Commit: push.Commit, Branch: push.Branch, Tag: push.Tag, RepoURL: push.RepoURL,
			Author: push.Author, Message: push.Message, Untrusted: true},
		Trigger: apiv1.Trigger{Kind: "webhook", Provider: provider, Delivery: delivery, Actor: provider + " delivery " + delivery,
			Event: push.Event, Fork: push.Fork, Repo: push.Repo}}
	if push.RepoURL != "" {
		req.Source = &apiv1.Source{RepoURL: push.RepoURL, Commit: push.Commit}
	}
	if push.Fork && matched.ForkPolicy() == spec.ForksApprove {
		from := push.HeadRepo
		if from == "" {
			from = "(deleted)"
		}
		req.Approval = &apiv1.Approval{Reason: "pull request from fork " + from}
	}
	// The forge hanging up must not abandon a run half made: the trigger
	// runs to its own deadline.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), TriggerTimeout)
	defer cancel()
	_, err = h.orc.Trigger(ctx, req)
	switch {
	case err == nil:
		reply(http.StatusAccepted, apiv1.WebhookResponse{Status: "accepted", Delivery: delivery, RunID: id, RunURL: RunPath(id)})
	case errors.Is(err, orchestrator.ErrRunExists):
		// Whether the run was found before or lost a creation race to
		// another copy of the delivery, its id is the one derived here.
		reply(http.StatusOK, apiv1.WebhookResponse{Status: "duplicate", Delivery: delivery, Reason: "delivery already received",
			RunID: id, RunURL: RunPath(id)})
	case errors.Is(err, orchestrator.ErrInvalid):
		reply(http.StatusBadRequest, apiv1.WebhookResponse{Status: "rejected", Delivery: delivery, Reason: err.Error()})
	case errors.Is(err, store.ErrNotFound):
		reply(http.StatusNotFound, apiv1.WebhookResponse{Status: "rejected", Delivery: delivery, Reason: "no such pipeline"})
	default:
		h.log.Warn("webhook trigger failed", zap.String("pipeline", rec.Name), zap.String("delivery", delivery), zap.Error(err))
		reply(http.StatusServiceUnavailable, apiv1.WebhookResponse{Status: "failed", Delivery: delivery, Reason: "the run could not be created; retry the delivery"})
	}
}

// record publishes the delivery and its outcome for the audit trail.
func (h *Handler) record(r *http.Request, provider, pipeline string, resp apiv1.WebhookResponse) {
	ip, _, _ := net.SplitHostPort(r.RemoteAddr)
	outcome := resp.Status
	if resp.Reason != "" {
		outcome += ": " + resp.Reason
	}
	if resp.RunID != "" {
		outcome += " (run " + resp.RunID + ")"
	}
	e, err := event.New(orchestrator.Source, event.TypeWebhookReceived, event.Meta{}, event.Action{
		Actor: provider + " delivery " + resp.Delivery, SourceIP: ip, Action: "webhook." + provider,
		Target: "pipeline/" + pipeline, Outcome: outcome})
	if err != nil {
		return
	}
	e.SetSubject("pipeline/" + pipeline)
	if _, err := bus.PublishAsync(r.Context(), h.js, "ansflow.events.webhook.received."+event.Token(spec.Slug(pipeline)), e); err != nil {
		h.log.Warn("record webhook", zap.Error(err))
	}
}

// JS returns the JetStream context the handler publishes on.
func (h *Handler) JS() jetstream.JetStream { return h.js }
