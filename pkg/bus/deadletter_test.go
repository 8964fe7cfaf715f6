package bus_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
)

// A message whose handler's process dies during its last allowed delivery
// still reaches the dead-letter stream, once, when another instance takes
// the consumer over, and without the handler running again.
func TestLastDeliveryLostWithItsProcessIsDeadLettered(t *testing.T) {
	for _, death := range []string{"connection closed", "consumer cancelled"} {
		t.Run(death, func(t *testing.T) {
			s := setup(t)
			subj := "ansflow.events.step.completed.dies"
			e := newEvent(t, event.TypeStepCompleted, "dies")
			if err := bus.Publish(context.Background(), s.JS, subj, e); err != nil {
				t.Fatal(err)
			}
			cfg := bus.ConsumerConfig{Stream: event.StreamEvents, Durable: "dies", FilterSubjects: []string{subj},
				MaxDeliver: 2, AckWait: 500 * time.Millisecond, RetryDelay: 10 * time.Millisecond}
			var calls atomic.Int64
			dying := make(chan struct{})
			release := make(chan struct{})
			defer close(release)
			nc1, js1 := s.Connect(t)
			stop1 := consumeOn(t, js1, cfg, func(ctx context.Context, _ cloudevents.Event) error {
				if calls.Add(1) == 1 {
					return errors.New("transient")
				}
				close(dying) // the last delivery: the process dies here
				select {
				case <-release:
				case <-ctx.Done():
				}
				return ctx.Err()
			})
			<-dying
			if death == "connection closed" {
				nc1.Close() // nothing more reaches the server: no ack, no nak
			}
			stop1()

			var after atomic.Int64
			consumeOn(t, s.JS, cfg, func(context.Context, cloudevents.Event) error { after.Add(1); return nil })
			waitFor(t, 10*time.Second, func() bool { return len(dlqMessages(t, s.JS)) >= 1 })
			waitFor(t, 10*time.Second, func() bool {
				info := consumerInfo(t, s.JS, "dies")
				return info.NumAckPending == 0 && info.NumPending == 0
			})
			dl := dlqMessages(t, s.JS)
			if len(dl) != 1 {
				t.Fatalf("%d dead letters, want exactly 1", len(dl))
			}
			h := dl[0].Header
			if !strings.Contains(h.Get(bus.HeaderDLQReason), "gave up after 2 deliveries (max 2): the last one ended unsettled") ||
				h.Get(bus.HeaderDLQStream) != event.StreamEvents || h.Get(bus.HeaderDLQSubject) != subj ||
				h.Get(bus.HeaderDLQConsumer) != "dies" || h.Get(bus.HeaderDLQSequence) != "1" || h.Get(bus.HeaderDLQDeliveries) != "3" ||
				h.Get(event.HeaderCEID) != e.ID() {
				t.Errorf("dead letter headers: %v", h)
			}
			if calls.Load() != 2 || after.Load() != 0 {
				t.Errorf("handler ran %d times in the dead process and %d in the new one, want 2 and 0", calls.Load(), after.Load())
			}
		})
	}
}

// A dead-letter publish that fails is retried while the message is held,
// and a consumer that shuts down before it succeeds hands the message back
// instead of losing it, even at its last allowed delivery.
func TestFailedDeadLetterPublishNeverLosesTheMessage(t *testing.T) {
	s := setup(t)
	ctx := context.Background()
	subj := "ansflow.events.step.completed.nodlq"
	if err := s.JS.DeleteStream(ctx, event.StreamDLQ); err != nil {
		t.Fatal(err)
	}
	for _, run := range []string{"held", "handed-back"} {
		if err := bus.Publish(ctx, s.JS, subj+"."+run, newEvent(t, event.TypeStepCompleted, run)); err != nil {
			t.Fatal(err)
		}
	}
	base := bus.ConsumerConfig{Stream: event.StreamEvents, MaxDeliver: 1, AckWait: 300 * time.Millisecond, RetryDelay: 10 * time.Millisecond}
	var calls atomic.Int64
	failing := func(context.Context, cloudevents.Event) error { calls.Add(1); return errors.New("transient") }

	held := base
	held.Durable, held.FilterSubjects = "held", []string{subj + ".held"}
	consumeOn(t, s.JS, held, failing)
	back := base
	back.Durable, back.FilterSubjects = "back", []string{subj + ".handed-back"}
	stopBack := consumeOn(t, s.JS, back, failing)

	waitFor(t, 5*time.Second, func() bool { return calls.Load() == 2 })
	// Both are held through several AckWaits while their dead letters
	// cannot be stored.
	deadline := time.Now().Add(4 * base.AckWait)
	waitFor(t, 5*time.Second, func() bool { return time.Now().After(deadline) })
	for _, d := range []string{"held", "back"} {
		if info := consumerInfo(t, s.JS, d); info.NumAckPending != 1 || info.NumRedelivered != 0 {
			t.Fatalf("%s: ack pending %d, redelivered %d while its dead letter cannot be stored; want 1, 0",
				d, info.NumAckPending, info.NumRedelivered)
		}
	}
	stopBack() // shuts down mid-retry: the message must come back
	if info := consumerInfo(t, s.JS, "back"); info.NumAckPending+int(info.NumPending) != 1 {
		t.Fatalf("after shutdown: ack pending %d, pending %d", info.NumAckPending, info.NumPending)
	}

	if err := bus.EnsureStreams(ctx, s.JS, 1); err != nil { // the DLQ is back
		t.Fatal(err)
	}
	consumeOn(t, s.JS, back, failing)
	waitFor(t, 10*time.Second, func() bool { return len(dlqMessages(t, s.JS)) >= 2 })
	for _, d := range []string{"held", "back"} {
		waitFor(t, 10*time.Second, func() bool {
			info := consumerInfo(t, s.JS, d)
			return info.NumAckPending == 0 && info.NumPending == 0
		})
	}
	dl := dlqMessages(t, s.JS)
	if len(dl) != 2 {
		t.Fatalf("%d dead letters, want 2", len(dl))
	}
	// The held one keeps its handler's error; the handed-back one was
	// dead-lettered by the next instance, without running the handler.
	want := map[string]string{"held": "transient", "back": "ended unsettled"}
	for _, m := range dl {
		c, reason := m.Header.Get(bus.HeaderDLQConsumer), m.Header.Get(bus.HeaderDLQReason)
		if want[c] == "" || !strings.Contains(reason, want[c]) {
			t.Errorf("dead letter of %q: reason %q, want it to say %q", c, reason, want[c])
		}
		delete(want, c)
	}
	if calls.Load() != 2 {
		t.Errorf("handler ran %d times, want once per message", calls.Load())
	}
}
