// Package bus binds AnsFlow's event contract to NATS JetStream: it declares
// the streams, publishes CloudEvents with deduplication, and runs durable pull
// consumers whose handlers compose as middleware.
//
// Delivery is at-least-once. A consumer acknowledges explicitly, sends
// in-progress acks while a handler runs, acknowledges synchronously on
// success, and routes a message that cannot be processed (not a CloudEvent,
// too large, a permanent handler error, or past MaxDeliver) to the dead-letter
// stream before terminating it, so a poison message never loops.
package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/event"
)

// DuplicateWindow is how long JetStream remembers a Nats-Msg-Id.
const DuplicateWindow = 10 * time.Minute

// MaxMessageBytes is the largest message the streams accept.
const MaxMessageBytes = 1 << 20

// StreamConfigs returns the configuration of every AnsFlow stream. replicas
// is 1 for a single server and 3 for a typical cluster.
func StreamConfigs(replicas int) []jetstream.StreamConfig {
	if replicas < 1 {
		replicas = 1
	}
	base := func(name, subject, desc string) jetstream.StreamConfig {
		return jetstream.StreamConfig{
			Name:        name,
			Description: desc,
			Subjects:    []string{subject},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Duplicates:  DuplicateWindow,
			MaxMsgSize:  MaxMessageBytes,
			Replicas:    replicas,
			Discard:     jetstream.DiscardOld,
		}
	}
	steps := base(event.StreamSteps, event.SubjectStepsAll, "step requests for runner pools")
	steps.MaxAge = 7 * 24 * time.Hour
	events := base(event.StreamEvents, event.SubjectEventsAll, "lifecycle events")
	events.MaxAge = 30 * 24 * time.Hour
	logs := base(event.StreamLogs, event.SubjectLogsAll, "step log chunks")
	logs.MaxAge = 7 * 24 * time.Hour
	logs.MaxBytes = 2 << 30
	dlq := base(event.StreamDLQ, event.SubjectDLQAll, "dead-lettered messages")
	dlq.MaxAge = 30 * 24 * time.Hour
	return []jetstream.StreamConfig{steps, events, logs, dlq}
}

// EnsureStreams creates or updates every AnsFlow stream. It is idempotent and
// safe when several instances start at once: a lost creation race is retried
// as an update.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, replicas int) error {
	for _, cfg := range StreamConfigs(replicas) {
		var err error
		for try := 0; try < 5; try++ {
			if _, err = js.CreateOrUpdateStream(ctx, cfg); err == nil {
				break
			}
			if !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(time.Duration(try+1) * 50 * time.Millisecond):
				}
			}
		}
		if err != nil {
			return fmt.Errorf("ensure stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}

// Publish sends e on subject with Nats-Msg-Id set to the event id and waits
// for the stream's acknowledgement.
func Publish(ctx context.Context, js jetstream.Publisher, subject string, e cloudevents.Event) error {
	m, err := event.ToMsg(subject, e)
	if err != nil {
		return err
	}
	if _, err := js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("publish %s %s on %s: %w", e.Type(), e.ID(), subject, err)
	}
	return nil
}

// PublishAsync sends e without waiting for the acknowledgement, which the
// returned future delivers.
func PublishAsync(js jetstream.Publisher, subject string, e cloudevents.Event) (jetstream.PubAckFuture, error) {
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
