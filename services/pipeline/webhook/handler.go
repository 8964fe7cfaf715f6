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

// DeliveriesBucket remembers delivery ids so a replay triggers nothing.
const DeliveriesBucket = "ansflow_deliveries"

// Handler serves POST /webhooks/{provider}/{pipeline}.
type Handler struct {
	st         *store.Store
	orc        *orchestrator.Orchestrator
	js         jetstream.JetStream
	log        *zap.Logger
	deliveries jetstream.KeyValue
	// Secret returns the value of the environment variable a trigger names
	// (os.Getenv by default).
	Secret func(name string) string
}

// New returns the webhook handler.
func New(ctx context.Context, st *store.Store, orc *orchestrator.Orchestrator, js jetstream.JetStream, log *zap.Logger) (*Handler, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: DeliveriesBucket, TTL: 7 * 24 * time.Hour})
	if err != nil {
		return nil, fmt.Errorf("deliveries bucket: %w", err)
	}
	return &Handler{st: st, orc: orc, js: js, log: log.Named("webhook"), deliveries: kv, Secret: os.Getenv}, nil
}

// Response is the JSON answer to a delivery.
type Response struct {
	Status   string `json:"status"` // accepted, duplicate, ignored, rejected
	Delivery string `json:"delivery,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	provider, name := r.PathValue("provider"), r.PathValue("pipeline")
	reply := func(code int, resp Response) {
		h.record(r, provider, name, resp)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(resp)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		reply(http.StatusRequestEntityTooLarge, Response{Status: "rejected", Reason: fmt.Sprintf("body over %d bytes", MaxBody)})
		return
	}
	rec, err := h.st.GetPipeline(r.Context(), name)
	if err != nil {
		reply(http.StatusNotFound, Response{Status: "rejected", Reason: "no such pipeline"})
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
	if _, err := h.deliveries.Create(r.Context(), event.Token(provider+"-"+delivery), []byte(time.Now().UTC().Format(time.RFC3339))); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			reply(http.StatusOK, Response{Status: "duplicate", Delivery: delivery, Reason: "delivery already received"})
			return
		}
		reply(http.StatusServiceUnavailable, Response{Status: "rejected", Delivery: delivery, Reason: "cannot record delivery"})
		return
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
	req := orchestrator.TriggerRequest{Pipeline: rec.Name,
		Git: orchestrator.GitInfo{Commit: push.Commit, Branch: push.Branch, Tag: push.Tag, RepoURL: push.RepoURL,
			Author: push.Author, Message: push.Message, Untrusted: true},
		Trigger: store.Trigger{Kind: "webhook", Provider: provider, Delivery: delivery, Actor: provider + " delivery " + delivery}}
	if push.RepoURL != "" {
		req.Source = &store.Source{RepoURL: push.RepoURL, Commit: push.Commit}
	}
	go func() { // answer quickly; the run starts asynchronously
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := h.orc.Trigger(ctx, req); err != nil {
			h.log.Warn("webhook trigger failed", zap.String("pipeline", rec.Name), zap.String("delivery", delivery), zap.Error(err))
		}
	}()
	reply(http.StatusAccepted, Response{Status: "accepted", Delivery: delivery})
}

// record publishes the delivery and its outcome for the audit trail.
func (h *Handler) record(r *http.Request, provider, pipeline string, resp Response) {
	ip, _, _ := net.SplitHostPort(r.RemoteAddr)
	outcome := resp.Status
	if resp.Reason != "" {
		outcome += ": " + resp.Reason
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
