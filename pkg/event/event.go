// Package event defines AnsFlow's event contract: the CloudEvents 1.0 types
// every service publishes and consumes, the NATS subjects they travel on, and
// their binary-mode encoding over NATS headers.
//
// An event is a [cloudevents.Event] whose data is JSON. On the wire the
// CloudEvents attributes travel as "ce-*" NATS headers (binary content mode),
// the data as the message body, and the event id doubles as the JetStream
// "Nats-Msg-Id" so that a republished event is deduplicated by the server.
package event

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/uuid"
)

// Event types. Every type is versioned; a consumer that sees a type it does
// not know treats the message as poison (see package bus).
const (
	TypeStepRequested   = "io.ansflow.step.requested.v1"
	TypeStepStarted     = "io.ansflow.step.started.v1"
	TypeStepCompleted   = "io.ansflow.step.completed.v1"
	TypeStepLog         = "io.ansflow.step.log.v1"
	TypeStepCancel      = "io.ansflow.step.cancel.v1"
	TypeRunCreated      = "io.ansflow.run.created.v1"
	TypeRunCompleted    = "io.ansflow.run.completed.v1"
	TypePipelineUpdated = "io.ansflow.pipeline.updated.v1"
	TypeWebhookReceived = "io.ansflow.webhook.received.v1"
	TypeAPIAction       = "io.ansflow.api.action.v1"
)

// KnownTypes lists every event type of the contract.
var KnownTypes = []string{
	TypeStepRequested, TypeStepStarted, TypeStepCompleted, TypeStepLog, TypeStepCancel,
	TypeRunCreated, TypeRunCompleted, TypePipelineUpdated, TypeWebhookReceived, TypeAPIAction,
}

// IsKnownType reports whether t is one of [KnownTypes].
func IsKnownType(t string) bool {
	for _, k := range KnownTypes {
		if k == t {
			return true
		}
	}
	return false
}

// Extension attribute names carried by step and run events. CloudEvents
// requires lower-case alphanumeric extension names.
const (
	ExtRunID       = "runid"
	ExtStepID      = "stepid"
	ExtAttempt     = "attempt"
	ExtTraceParent = "traceparent"
)

// Stream names and subject roots. A subject belongs to exactly one stream.
const (
	StreamSteps  = "ANSFLOW_STEPS"
	StreamEvents = "ANSFLOW_EVENTS"
	StreamLogs   = "ANSFLOW_LOGS"
	StreamDLQ    = "ANSFLOW_DLQ"

	SubjectStepsAll  = "ansflow.step.>"
	SubjectEventsAll = "ansflow.events.>"
	SubjectLogsAll   = "ansflow.logs.>"
	SubjectDLQAll    = "ansflow.dlq.>"
)

// Kinds of runner pools. A step type's prefix selects its kind.
const (
	KindDocker = "docker"
	KindK8s    = "k8s"
)

// StepRequestedSubject is the subject a step request for the runner pool (or
// cluster) target of the given kind is published on.
func StepRequestedSubject(kind, target string) string {
	return "ansflow.step.requested." + Token(kind) + "." + Token(target)
}

// LifecycleSubject is the subject of a lifecycle event such as step.completed
// for one run: ansflow.events.<noun>.<verb>.<runid>.
func LifecycleSubject(eventType, runID string) string {
	noun, verb := NounVerb(eventType)
	return "ansflow.events." + noun + "." + verb + "." + Token(runID)
}

// LogSubject is the subject of one step's log chunks.
func LogSubject(runID, stepID string) string {
	return "ansflow.logs." + Token(runID) + "." + Token(stepID)
}

// DLQSubject is the subject a dead-lettered message from stream is kept on.
func DLQSubject(stream string) string { return "ansflow.dlq." + Token(strings.ToLower(stream)) }

// NounVerb splits "io.ansflow.step.completed.v1" into "step", "completed".
func NounVerb(eventType string) (noun, verb string) {
	parts := strings.Split(strings.TrimPrefix(eventType, "io.ansflow."), ".")
	if len(parts) < 2 {
		return "unknown", "unknown"
	}
	return parts[0], parts[1]
}

// Token makes s safe as one NATS subject token: letters, digits, '-' and '_'
// are kept, everything else becomes '_'. An empty s becomes "_".
func Token(s string) string {
	if s == "" {
		return "_"
	}
	b := []byte(s)
	for i, c := range b {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			b[i] = '_'
		}
	}
	return string(b)
}

// Meta identifies the run, step and attempt an event belongs to.
type Meta struct {
	RunID   string
	StepID  string
	Attempt int
}

// New builds a CloudEvent of type typ from source with data encoded as JSON.
// The subject is set to the run id (or step path) named by meta.
func New(source, typ string, meta Meta, data any) (cloudevents.Event, error) {
	e := cloudevents.NewEvent(cloudevents.VersionV1)
	e.SetID(uuid.NewString())
	e.SetSource(source)
	e.SetType(typ)
	e.SetTime(time.Now().UTC())
	if meta.RunID != "" {
		e.SetExtension(ExtRunID, meta.RunID)
		subject := meta.RunID
		if meta.StepID != "" {
			e.SetExtension(ExtStepID, meta.StepID)
			subject += "/" + meta.StepID
		}
		if meta.Attempt > 0 {
			e.SetExtension(ExtAttempt, strconv.Itoa(meta.Attempt))
			subject += "/" + strconv.Itoa(meta.Attempt)
		}
		e.SetSubject(subject)
	}
	if err := e.SetData(cloudevents.ApplicationJSON, data); err != nil {
		return e, fmt.Errorf("encode %s data: %w", typ, err)
	}
	return e, nil
}

// MetaOf reads the run, step and attempt extensions of e.
func MetaOf(e cloudevents.Event) Meta {
	ext := e.Extensions()
	m := Meta{}
	if v, ok := ext[ExtRunID]; ok {
		m.RunID = fmt.Sprint(v)
	}
	if v, ok := ext[ExtStepID]; ok {
		m.StepID = fmt.Sprint(v)
	}
	if v, ok := ext[ExtAttempt]; ok {
		m.Attempt, _ = strconv.Atoi(fmt.Sprint(v))
	}
	return m
}

// ErrNotCloudEvent is returned by [Decode] when a message lacks the required
// CloudEvents attributes.
var ErrNotCloudEvent = errors.New("not a CloudEvent")

// DecodeData unmarshals the JSON data of e into v.
func DecodeData(e cloudevents.Event, v any) error {
	if err := json.Unmarshal(e.Data(), v); err != nil {
		return fmt.Errorf("decode %s data of event %s: %w", e.Type(), e.ID(), err)
	}
	return nil
}
