package webhook

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/spec"
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
	// Secret returns the value of the environment variable a trigger names
	// (os.Getenv by default).
	Secret func(name string) string
}

// New returns the webhook handler. It keeps no state of its own: ctx is
// unused and no error is returned today; both stay so that assembling the
// service does not change.
func New(_ context.Context, st *store.Store, orc *orchestrator.Orchestrator, js jetstream.JetStream, log *zap.Logger) (*Handler, error) {
	return &Handler{st: st, orc: orc, js: js, log: log.Named("webhook"), Secret: os.Getenv}, nil
}

// Response is the JSON answer to a delivery.
type Response struct {
	// Status is accepted (a run was created), duplicate (the delivery's run
	// already exists), ignored (the trigger rules do not start a run),
	// rejected (a 4xx: the delivery is refused) or failed (a 503: the run
	// could not be created; a retry of the delivery may succeed).
	Status   string `json:"status"`
	Delivery string `json:"delivery,omitempty"`
	Reason   string `json:"reason,omitempty"`
	// RunID and RunURL name the delivery's run when Status is accepted or
	// duplicate; RunURL is the API path of the run document.
	RunID  string `json:"run_id,omitempty"`
	RunURL string `json:"run_url,omitempty"`
}

// runNamespace is the UUIDv5 namespace of delivery run ids.
var runNamespace = uuid.NewSHA1(uuid.NameSpaceURL, []byte("urn:ansflow:webhook-delivery"))

// RunID is the id of the run a delivery starts: a UUIDv5 of the provider,
// the pipeline (by slug) and the delivery id, so every copy of one delivery
// names the same run.
func RunID(provider, pipeline, delivery string) string {
	return uuid.NewSHA1(runNamespace, []byte(provider+"\n"+spec.Slug(pipeline)+"\n"+delivery)).String()
}

// RunPath is the API path of run id.
func RunPath(id string) string { return "/api/v1/runs/" + id }

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	provider, name := r.PathValue("provider"), r.PathValue("pipeline")
	reply := func(code int, resp Response) {
		h.record(r, provider, name, resp)
		w.Header().Set("Content-Type", "application/json")
		if resp.RunURL != "" {
			w.Header().Set("Location", resp.RunURL)
		}
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(resp)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		reply(http.StatusRequestEntityTooLarge, Response{Status: "rejected", Reason: fmt.Sprintf("body over %d bytes", MaxBody)})
		return
	}
	rec, err := h.st.GetPipeline(r.Context(), name)
	if errors.Is(err, store.ErrNotFound) {
		reply(http.StatusNotFound, Response{Status: "rejected", Reason: "no such pipeline"})
		return
	}
	if err != nil {
		h.log.Warn("webhook pipeline lookup failed", zap.String("pipeline", name), zap.Error(err))
		reply(http.StatusServiceUnavailable, Response{Status: "failed", Reason: "cannot read the pipeline; retry the delivery"})
		return
	}
	var triggers []*spec.Trigger
	for i := range rec.Spec.Triggers {
		if t := &rec.Spec.Triggers[i]; t.Type == "webhook" && t.Provider == provider {
			triggers = append(triggers, t)
		}
	}
	if len(triggers) == 0 {
		reply(http.StatusNotFound, Response{Status: "rejected", Reason: fmt.Sprintf("pipeline has no %s webhook trigger", provider)})
		return
	}
	var delivery string
	verified := false
	for _, t := range triggers {
		if d, err := Verify(provider, r.Header, body, h.Secret(t.SecretEnv)); err == nil {
			delivery, verified = d, true
			break
		} else {
			delivery = d
		}
	}
	if !verified {
		reply(http.StatusUnauthorized, Response{Status: "rejected", Delivery: delivery, Reason: ErrSignature.Error()})
		return
	}
	if delivery == "" {
		sum := sha256.Sum256(body)
		delivery = "sha256-" + hex.EncodeToString(sum[:12])
	}
	push, err := Parse(provider, r.Header, body)
	if err != nil {
		reply(http.StatusBadRequest, Response{Status: "rejected", Delivery: delivery, Reason: err.Error()})
		return
	}
	if push == nil {
		reply(http.StatusAccepted, Response{Status: "ignored", Delivery: delivery, Reason: "event does not trigger runs"})
		return
	}
	why := ""
	matched := false
	for _, t := range triggers {
		ok, reason := Match(t, push)
		if ok {
			matched = true
			break
		}
		why = reason
	}
	if !matched {
		reply(http.StatusAccepted, Response{Status: "ignored", Delivery: delivery, Reason: why})
		return
	}
	id := RunID(provider, rec.Name, delivery)
	req := orchestrator.TriggerRequest{Pipeline: rec.Name, RunID: id,
		Git: orchestrator.GitInfo{Commit: push.Commit, Branch: push.Branch, Tag: push.Tag, RepoURL: push.RepoURL,
			Author: push.Author, Message: push.Message, Untrusted: true},
		Trigger: store.Trigger{Kind: "webhook", Provider: provider, Delivery: delivery, Actor: provider + " delivery " + delivery}}
	if push.RepoURL != "" {
		req.Source = &store.Source{RepoURL: push.RepoURL, Commit: push.Commit}
	}
	// The forge hanging up must not abandon a run half made: the trigger
	// runs to its own deadline.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), TriggerTimeout)
	defer cancel()
	_, err = h.orc.Trigger(ctx, req)
	switch {
	case err == nil:
		reply(http.StatusAccepted, Response{Status: "accepted", Delivery: delivery, RunID: id, RunURL: RunPath(id)})
	case errors.Is(err, orchestrator.ErrRunExists):
		// Whether the run was found before or lost a creation race to
		// another copy of the delivery, its id is the one derived here.
		reply(http.StatusOK, Response{Status: "duplicate", Delivery: delivery, Reason: "delivery already received",
			RunID: id, RunURL: RunPath(id)})
	case errors.Is(err, orchestrator.ErrInvalid):
		reply(http.StatusBadRequest, Response{Status: "rejected", Delivery: delivery, Reason: err.Error()})
	case errors.Is(err, store.ErrNotFound):
		reply(http.StatusNotFound, Response{Status: "rejected", Delivery: delivery, Reason: "no such pipeline"})
	default:
		h.log.Warn("webhook trigger failed", zap.String("pipeline", rec.Name), zap.String("delivery", delivery), zap.Error(err))
		reply(http.StatusServiceUnavailable, Response{Status: "failed", Delivery: delivery, Reason: "the run could not be created; retry the delivery"})
	}
}

// record publishes the delivery and its outcome for the audit trail.
func (h *Handler) record(r *http.Request, provider, pipeline string, resp Response) {
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
	if _, err := bus.PublishAsync(h.js, "ansflow.events.webhook.received."+event.Token(spec.Slug(pipeline)), e); err != nil {
		h.log.Warn("record webhook", zap.Error(err))
	}
}

// JS returns the JetStream context the handler publishes on.
func (h *Handler) JS() jetstream.JetStream { return h.js }
