package audit

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats.go"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/tracing"
	"github.com/ansflow/ansflow/services/audit/store"
)

// TypeDeadLetter is the type of the record kept for a message found on the
// dead-letter stream: the fact that a consumer gave up on it. Its data is a
// [DeadLetter].
const TypeDeadLetter = "io.ansflow.audit.deadlettered.v1"

// BusSourcePrefix prefixes the source of records made from messages that do
// not carry a usable CloudEvent identity: "nats:<stream>", with the id
// "<stream sequence>@<stream timestamp>", which a redelivery repeats.
const BusSourcePrefix = "nats:"

// DeadLetter is the data of a [TypeDeadLetter] record.
type DeadLetter struct {
	// Stream and Subject are where the message was first published.
	Stream  string `json:"stream"`
	Subject string `json:"subject"`
	// Deliveries is how often it was delivered before it was given up.
	Deliveries int    `json:"deliveries,omitempty"`
	Reason     string `json:"reason"`
	// Source, ID and Type are the CloudEvent attributes it carried, if any.
	Source  string          `json:"source,omitempty"`
	ID      string          `json:"id,omitempty"`
	Type    string          `json:"type,omitempty"`
	Message MessageEnvelope `json:"message"`
}

// MessageEnvelope is how a message that is not a storable event is kept:
// its headers and a bounded preview of its body, with the size and SHA-256
// of the whole body.
type MessageEnvelope struct {
	Subject string              `json:"subject"`
	Headers map[string][]string `json:"headers,omitempty"`
	Size    int                 `json:"size"`
	SHA256  string              `json:"sha256"`
	// One of JSON, Text or Base64 holds the body (or its first
	// previewBytes bytes when Truncated).
	JSON      json.RawMessage `json:"json,omitempty"`
	Text      string          `json:"text,omitempty"`
	Base64    string          `json:"base64,omitempty"`
	Truncated bool            `json:"truncated,omitempty"`
}

const (
	previewBytes     = 4096
	headerValueBytes = 1024
	maxHeaders       = 64
)

// message is what the consumer knows about one delivery.
type message struct {
	stream    string
	streamSeq uint64
	stored    time.Time // when the stream accepted it
	subject   string
	header    nats.Header
	data      []byte
	// trace is the event's trace context (its traceparent extension)
	// while tracing is on, so that storing it is a span of its trace.
	trace context.Context
}

// busIdentity is the dedupe key of a message without a usable CloudEvent
// identity; a redelivery of the same stored message has the same one.
func (m *message) busIdentity() (source, id string) {
	return BusSourcePrefix + m.stream, strconv.FormatUint(m.streamSeq, 10) + "@" + strconv.FormatInt(m.stored.UnixNano(), 10)
}

func envelope(subject string, h nats.Header, data []byte) MessageEnvelope {
	sum := sha256.Sum256(data)
	env := MessageEnvelope{Subject: subject, Size: len(data), SHA256: hex.EncodeToString(sum[:])}
	if len(h) > 0 {
		env.Headers = make(map[string][]string, min(len(h), maxHeaders))
		for k, vs := range h {
			if len(env.Headers) == maxHeaders {
				break
			}
			out := make([]string, 0, len(vs))
			for _, v := range vs {
				out = append(out, truncateUTF8(v, headerValueBytes))
			}
			env.Headers[truncateUTF8(k, headerValueBytes)] = out
		}
	}
	body := data
	if len(body) > previewBytes {
		body, env.Truncated = body[:previewBytes], true
	}
	switch {
	case len(body) == 0:
	case !env.Truncated && json.Valid(body):
		env.JSON = body
	case utf8.Valid(body):
		env.Text = string(body)
	default:
		env.Base64 = base64.StdEncoding.EncodeToString(body)
	}
	return env
}

func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// eventFields are the data fields the trail indexes, wherever an event
// type carries them. Target is an [event.Action]'s: "pipeline/<name>" or
// "run/<id>" name the pipeline or run the action was on.
type eventFields struct {
	RunID    string `json:"run_id"`
	StepID   string `json:"step_id"`
	Attempt  int    `json:"attempt"`
	Pipeline string `json:"pipeline"`
	Actor    string `json:"actor"`
	Target   string `json:"target"`
}

// toRecord turns one delivery from stream into the record to store. It
// never fails: what cannot be stored as an event is stored as a rejected
// record saying why.
func (s *Service) toRecord(m *message) (rec store.Record) {
	defer func() {
		if r := recover(); r != nil {
			rec = rejected(m, fmt.Sprintf("internal error reading message: %v", r))
		}
	}()
	if m.stream == event.StreamDLQ {
		return deadLettered(m)
	}
	if len(m.data) > s.cfg.MaxEventBytes {
		return rejected(m, fmt.Sprintf("oversized: %d bytes exceed the limit of %d", len(m.data), s.cfg.MaxEventBytes))
	}
	e, err := event.FromMsg(&nats.Msg{Subject: m.subject, Header: m.header, Data: m.data})
	if err != nil {
		return rejected(m, err.Error())
	}
	if !event.IsKnownType(e.Type()) {
		return rejected(m, fmt.Sprintf("unknown event type %q", e.Type()))
	}
	if len(m.data) > 0 && !json.Valid(m.data) {
		return rejected(m, fmt.Sprintf("data of %s is not valid JSON", e.Type()))
	}
	return eventRecord(m, e)
}

func eventRecord(m *message, e cloudevents.Event) store.Record {
	if tracing.Enabled() {
		m.trace = tracing.Extract(context.Background(), e)
	}
	meta := event.MetaOf(e)
	var f eventFields
	if len(m.data) > 0 && m.data[0] == '{' {
		_ = json.Unmarshal(m.data, &f) // best effort: fields of the wrong type stay empty
	}
	r := store.Record{
		Stream: m.stream, StreamSeq: m.streamSeq,
		Source: e.Source(), ID: e.ID(), Type: e.Type(), Time: e.Time(), Subject: e.Subject(),
		RunID: first(meta.RunID, f.RunID), StepID: first(meta.StepID, f.StepID), Attempt: meta.Attempt,
		Pipeline: f.Pipeline, Actor: f.Actor, ReceivedAt: m.stored,
	}
	if r.Attempt == 0 {
		r.Attempt = f.Attempt
	}
	if e.Type() == event.TypeAPIAction || e.Type() == event.TypeWebhookReceived {
		if name, ok := strings.CutPrefix(f.Target, "pipeline/"); ok && r.Pipeline == "" {
			r.Pipeline = name
		}
		if id, ok := strings.CutPrefix(f.Target, "run/"); ok && r.RunID == "" {
			r.RunID = id
		}
	}
	if actor, ok := e.Extensions()["actor"]; ok && r.Actor == "" {
		r.Actor = fmt.Sprint(actor)
	}
	if len(m.data) > 0 {
		r.Data = m.data
	}
	return r
}

// rejected is the record of a message that is not a storable event. Its
// identity comes from its place on the bus, not from what it claims.
func rejected(m *message, reason string) store.Record {
	r := claimed(m)
	r.Source, r.ID = m.busIdentity()
	r.Rejected, r.Reason = true, reason
	r.Data = mustJSON(envelope(m.subject, m.header, m.data))
	return r
}

// claimed fills what a message's headers say about it, for display only.
func claimed(m *message) store.Record {
	r := store.Record{Stream: m.stream, StreamSeq: m.streamSeq, ReceivedAt: m.stored}
	if m.header == nil {
		return r
	}
	r.Type = m.header.Get(event.HeaderCEType)
	r.Subject = m.header.Get("ce-subject")
	r.RunID = m.header.Get("ce-" + event.ExtRunID)
	r.StepID = m.header.Get("ce-" + event.ExtStepID)
	r.Attempt, _ = strconv.Atoi(m.header.Get("ce-" + event.ExtAttempt))
	if t, err := time.Parse(time.RFC3339Nano, m.header.Get("ce-time")); err == nil {
		r.Time = t
	}
	return r
}

// deadLettered is the record of a message on the dead-letter stream. Its
// identity is the original event's, under a "dlq/" id, so the same event
// dead-lettered twice is recorded once and never collides with the event
// itself.
func deadLettered(m *message) store.Record {
	r := claimed(m)
	d := DeadLetter{Subject: m.subject, Message: envelope(m.subject, m.header, m.data)}
	if h := m.header; h != nil {
		d.Stream, d.Reason = h.Get(bus.HeaderDLQStream), h.Get(bus.HeaderDLQReason)
		d.Deliveries, _ = strconv.Atoi(h.Get(bus.HeaderDLQDeliveries))
		if sub := h.Get(bus.HeaderDLQSubject); sub != "" {
			d.Subject = sub
		}
		d.Source, d.ID, d.Type = h.Get(event.HeaderCESource), h.Get(event.HeaderCEID), h.Get(event.HeaderCEType)
	}
	d.Message.Subject = d.Subject
	if d.Source != "" && d.ID != "" {
		r.Source, r.ID = d.Source, "dlq/"+d.ID
	} else {
		r.Source, r.ID = m.busIdentity()
	}
	r.Type = TypeDeadLetter
	r.Reason = fmt.Sprintf("dead-lettered from %s after %d deliveries: %s", first(d.Stream, "unknown stream"), d.Deliveries, d.Reason)
	r.Data = mustJSON(d)
	return r
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil { // only plain structs of strings and numbers get here
		panic(fmt.Sprintf("encode %T: %v", v, err))
	}
	return b
}

func first(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
