package bus_test

import (
	"context"
	"errors"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/metrics"
	"github.com/ansflow/ansflow/pkg/metrics/metricstest"
)

// A message whose handler keeps failing is redelivered, then
// dead-lettered: the consumer's metrics count both, by stream; a message
// handled at once counts neither.
func TestConsumerCountsRedeliveriesAndDeadLetters(t *testing.T) {
	s := setup(t)
	m := metrics.New(metrics.Options{PipelineLabel: true})
	subj := "ansflow.events.step.completed.counted"
	for _, run := range []string{"fails", "fine"} {
		if err := bus.Publish(context.Background(), s.JS, subj, newEvent(t, event.TypeStepCompleted, run)); err != nil {
			t.Fatal(err)
		}
	}
	cfg := bus.ConsumerConfig{Stream: event.StreamEvents, Durable: "counted", FilterSubjects: []string{subj},
		MaxDeliver: 3, AckWait: time.Second, RetryDelay: 10 * time.Millisecond, Metrics: m}
	consumeOn(t, s.JS, cfg, func(_ context.Context, e cloudevents.Event) error {
		if e.Extensions()[event.ExtRunID] == "fails" {
			return errors.New("transient, forever")
		}
		return nil
	})
	stream := metricstest.Labels{metrics.LabelStream: event.StreamEvents}
	metricstest.WaitFor(t, m, metrics.DeadLetters, stream, 10*time.Second, "one dead letter",
		func(s metricstest.Sample) bool { return s.Value == 1 })
	waitFor(t, 10*time.Second, func() bool { return len(dlqMessages(t, s.JS)) == 1 })
	if got := metricstest.Value(t, m, metrics.Redeliveries, stream); got != 2 {
		t.Errorf("redeliveries = %v, want 2 (deliveries 2 and 3 of the failing message)", got)
	}
	metricstest.Lint(t, m)
}
