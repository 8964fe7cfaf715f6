// Package bus binds AnsFlow's event contract to NATS JetStream: it declares
// the streams and buckets, publishes CloudEvents with deduplication, and runs
// durable pull consumers whose handlers compose as middleware.
//
// # Streams and buckets
//
// [EnsureStreams] and [EnsureKeyValue] create what is missing and update
// what differs, and never lower replicas: the replicas a service asks for
// are a minimum, so a runner starting with 1 leaves the R3 streams of a
// clustered pipeline service at R3.
//
// # Publishing
//
// [Publish] sets Nats-Msg-Id to the event id and retries transient failures
// (no stream answering, a lost acknowledgement, a leader change) with
// capped exponential backoff until its context ends; the stream's
// duplicate window ([DuplicateWindow]) stores the event once however many
// attempts reached it.
//
// # Consuming
//
// Delivery is at-least-once. [Consume] pulls a message only when one of
// its handler slots is free: each slot keeps one request for one message
// waiting on the server, on a subscription of its own, so an instance never
// holds a message it cannot run and other instances on the same durable get
// the rest. Every message
// it holds gets in-progress acks from the moment it arrives until it is
// settled: acknowledged synchronously on success, nak'd with a delay after
// a retryable error, nak'd at once when the consumer shuts down, or copied
// to the dead-letter stream and terminated.
//
// # Tracing
//
// Every published event carries the trace context of its publisher's
// context as the traceparent and tracestate extension attributes, and
// [Consume] runs each handler in a consumer span, "consume <noun>.<verb>",
// child of the context the event carries; both cost nothing while
// tracing is off (package tracing).
//
// # Dead letters
//
// A message that cannot be processed (not a CloudEvent, a permanent handler
// error, a panic, a retryable error on its last allowed delivery) is copied
// to ANSFLOW_DLQ with the Ansflow-Dlq-* headers and then terminated, so a
// poison message never loops.
//
// The limit of deliveries, [ConsumerConfig.MaxDeliver], is counted by the
// consumer, not by the server: the durable's server-side MaxDeliver is
// unlimited. When the process handling a message's last allowed delivery
// dies (or its acknowledgement is lost), the server redelivers it after
// AckWait, and the consumer that receives a delivery past the limit
// dead-letters it without running the handler. Had the server enforced the
// limit, it would have dropped the message silently at that point: its
// max-deliveries advisory is a core NATS message that only a process
// subscribed at that instant would see, which is exactly what is missing
// when the process died. For the same reason a failed dead-letter publish
// is retried with backoff for as long as the handler's context lasts, with
// the message held by its heartbeats, and nak'd for another delivery only
// at shutdown; a message is terminated only once its copy is stored. A
// copy's Nats-Msg-Id names the stream, the durable and the stream
// sequence, so a message dead-lettered twice within [DuplicateWindow] (by a
// process that died between the copy and the term) is stored once.
package bus

import (
	"context"
	"fmt"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/tracing"
)

// Publish sends e on subject with Nats-Msg-Id set to the event id and waits
// for the stream's acknowledgement. e carries the trace context of ctx
// ([tracing.Inject]).
//
// A transient failure (no stream answering, as before a stream exists or
// while it has no leader; a lost acknowledgement; a reconnecting
// connection; JetStream temporarily unavailable) is retried with capped
// exponential backoff until ctx is done, or for [PublishTimeout] when ctx
// has no deadline. Every attempt carries the same Nats-Msg-Id, so the
// stream stores the event once however many attempts reached it. A
// permanent failure (a message too large, an invalid subject, a closed
// connection) returns at once. The error wraps the last attempt's error
// and, when retries ran out, ctx's.
func Publish(ctx context.Context, js jetstream.Publisher, subject string, e cloudevents.Event) error {
	tracing.Inject(ctx, &e)
	m, err := event.ToMsg(subject, e)
	if err != nil {
		return err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, PublishTimeout)
		defer cancel()
	}
	if err := publishMsg(ctx, js, m, transient); err != nil {
		return fmt.Errorf("publish %s %s on %s: %w", e.Type(), e.ID(), subject, err)
	}
	return nil
}

// PublishTimeout bounds the retries of [Publish] when its context has no
// deadline.
const PublishTimeout = 30 * time.Second

// publishAttemptTimeout bounds one attempt, so that an acknowledgement lost
// in a leader change is retried instead of waited for.
const publishAttemptTimeout = 2 * time.Second

// publishMsg publishes m, retrying the failures retryable reports as such
// with capped exponential backoff until ctx is done.
func publishMsg(ctx context.Context, js jetstream.Publisher, m *nats.Msg, retryable func(error) bool) error {
	for n := 0; ; n++ {
		actx, cancel := context.WithTimeout(ctx, publishAttemptTimeout)
		// The client's own retry of "no responders" is off: this loop
		// paces every retry.
		_, err := js.PublishMsg(actx, m, jetstream.WithRetryAttempts(0))
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%d attempts: %w (%w)", n+1, err, ctx.Err())
		}
		if !retryable(err) {
			return err
		}
		if serr := sleep(ctx, backoff(n, 10*time.Millisecond, time.Second)); serr != nil {
			return fmt.Errorf("%d attempts: %w (%w)", n+1, err, serr)
		}
	}
}

// PublishAsync sends e without waiting for the acknowledgement, which the
// returned future delivers. Unlike [Publish] it does not retry: a caller
// that must not lose e checks the future and publishes again (the same
// Nats-Msg-Id deduplicates), or uses Publish. ctx gives only the trace
// context e carries ([tracing.Inject]).
func PublishAsync(ctx context.Context, js jetstream.Publisher, subject string, e cloudevents.Event) (jetstream.PubAckFuture, error) {
	tracing.Inject(ctx, &e)
	m, err := event.ToMsg(subject, e)
	if err != nil {
		return nil, err
	}
	f, err := js.PublishMsgAsync(m)
	if err != nil {
		return nil, fmt.Errorf("publish %s %s on %s: %w", e.Type(), e.ID(), subject, err)
	}
	return f, nil
}
