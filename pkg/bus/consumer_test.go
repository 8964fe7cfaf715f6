package bus_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
)

// consumeOn runs Consume on js until the returned stop is called or the
// test ends; stop waits for Consume to return.
func consumeOn(t *testing.T, js jetstream.JetStream, cfg bus.ConsumerConfig, h bus.Handler) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := bus.Consume(ctx, js, cfg, h, zap.NewNop()); err != nil {
			t.Errorf("Consume: %v", err)
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

func consumerInfo(t *testing.T, js jetstream.JetStream, durable string) *jetstream.ConsumerInfo {
	t.Helper()
	c, err := js.Consumer(context.Background(), event.StreamEvents, durable)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// idSet records which events a handler was given.
type idSet struct {
	mu  sync.Mutex
	ids map[string]int
}

func (s *idSet) add(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ids == nil {
		s.ids = map[string]int{}
	}
	s.ids[id]++
}

func (s *idSet) len() int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.ids) }

func (s *idSet) snapshot() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for k, v := range s.ids {
		out[k] = v
	}
	return out
}

func TestConsumerHoldsOnlyWhatItsSlotsCanRun(t *testing.T) {
	s := setup(t)
	subj := "ansflow.events.step.completed.slots"
	for range 6 {
		if err := bus.Publish(context.Background(), s.JS, subj, newEvent(t, event.TypeStepCompleted, "slots")); err != nil {
			t.Fatal(err)
		}
	}
	cfg := bus.ConsumerConfig{Stream: event.StreamEvents, Durable: "slots", FilterSubjects: []string{subj},
		Concurrency: 2, AckWait: 400 * time.Millisecond}
	release := make(chan struct{})
	blocking := func(got *idSet) bus.Handler {
		return func(ctx context.Context, e cloudevents.Event) error {
			got.add(e.ID())
			select {
			case <-release:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}

	// Watch the durable throughout: at no time may more messages be
	// delivered and unacknowledged than the running handlers hold.
	var limit, worst atomic.Int64
	limit.Store(2)
	watchDone := make(chan struct{})
	watchStop := make(chan struct{})
	go func() {
		defer close(watchDone)
		for {
			select {
			case <-watchStop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			c, err := s.JS.Consumer(context.Background(), event.StreamEvents, "slots")
			if err != nil {
				continue
			}
			info, err := c.Info(context.Background())
			if err != nil {
				continue
			}
			if n := int64(info.NumAckPending); n > limit.Load() && n > worst.Load() {
				worst.Store(n)
			}
		}
	}()
	defer func() { close(watchStop); <-watchDone }()

	var first, second idSet
	_, js1 := s.Connect(t)
	consumeOn(t, js1, cfg, blocking(&first))
	waitFor(t, 5*time.Second, func() bool { return first.len() == 2 })
	// Three AckWaits later the first instance still holds just its two,
	// kept by heartbeats, and the other four wait on the server.
	deadline := time.Now().Add(3 * cfg.AckWait)
	waitFor(t, 5*time.Second, func() bool { return time.Now().After(deadline) })
	info := consumerInfo(t, s.JS, "slots")
	if info.NumAckPending != 2 || info.NumPending != 4 || info.NumRedelivered != 0 || first.len() != 2 {
		t.Fatalf("one instance of 2 slots: ack pending %d, pending %d, redelivered %d, handled %d; want 2, 4, 0, 2",
			info.NumAckPending, info.NumPending, info.NumRedelivered, first.len())
	}

	// A second instance gets the other four at once.
	limit.Store(6)
	_, js2 := s.Connect(t)
	consumeOn(t, js2, bus.ConsumerConfig{Stream: cfg.Stream, Durable: cfg.Durable, FilterSubjects: cfg.FilterSubjects,
		Concurrency: 4, AckWait: cfg.AckWait}, blocking(&second))
	waitFor(t, 5*time.Second, func() bool { return second.len() == 4 })
	close(release)
	waitFor(t, 5*time.Second, func() bool {
		info := consumerInfo(t, s.JS, "slots")
		return info.NumAckPending == 0 && info.NumPending == 0
	})
	if w := worst.Load(); w != 0 {
		t.Errorf("%d messages were delivered and unacknowledged at once, above the slots", w)
	}
	a, b := first.snapshot(), second.snapshot()
	for id, n := range a {
		if n != 1 || b[id] != 0 {
			t.Errorf("event %s handled %d times by the first instance and %d by the second", id, n, b[id])
		}
	}
	for id, n := range b {
		if n != 1 {
			t.Errorf("event %s handled %d times by the second instance", id, n)
		}
	}
	if len(a) != 2 || len(b) != 4 {
		t.Errorf("handled %d and %d, want 2 and 4", len(a), len(b))
	}
}

// A consumer shutting down stops pulling at once and hands a running
// handler's message back after Grace.
func TestShutdownNaksRunningMessagesAfterGrace(t *testing.T) {
	s := setup(t)
	subj := "ansflow.events.step.completed.shutdown"
	if err := bus.Publish(context.Background(), s.JS, subj, newEvent(t, event.TypeStepCompleted, "shutdown")); err != nil {
		t.Fatal(err)
	}
	cfg := bus.ConsumerConfig{Stream: event.StreamEvents, Durable: "shutdown", FilterSubjects: []string{subj},
		Concurrency: 3, AckWait: time.Minute, Grace: 100 * time.Millisecond}
	var started atomic.Int64
	stop := consumeOn(t, s.JS, cfg, func(ctx context.Context, _ cloudevents.Event) error {
		started.Add(1)
		<-ctx.Done()
		return ctx.Err()
	})
	waitFor(t, 5*time.Second, func() bool { return started.Load() == 1 })
	t0 := time.Now()
	stop()
	if d := time.Since(t0); d < cfg.Grace || d > 5*time.Second {
		t.Errorf("Consume returned %s after cancellation, want Grace (%s) and not much more", d, cfg.Grace)
	}
	// Nak'd, not left to AckWait (a minute): another instance gets it now.
	var again atomic.Int64
	consumeOn(t, s.JS, cfg, func(context.Context, cloudevents.Event) error { again.Add(1); return nil })
	waitFor(t, 5*time.Second, func() bool { return again.Load() == 1 })
}

func TestNegativeMaxDeliverRetriesWithoutBound(t *testing.T) {
	s := setup(t)
	subj := "ansflow.events.step.completed.unbounded"
	if err := bus.Publish(context.Background(), s.JS, subj, newEvent(t, event.TypeStepCompleted, "unbounded")); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int64
	consumeOn(t, s.JS, bus.ConsumerConfig{Stream: event.StreamEvents, Durable: "unbounded", FilterSubjects: []string{subj},
		MaxDeliver: -1, RetryDelay: time.Millisecond}, func(context.Context, cloudevents.Event) error {
		if calls.Add(1) < 8 {
			return errTransient
		}
		return nil
	})
	waitFor(t, 10*time.Second, func() bool { return calls.Load() == 8 })
	waitFor(t, 10*time.Second, func() bool {
		info := consumerInfo(t, s.JS, "unbounded")
		return info.NumAckPending == 0 && info.NumPending == 0
	})
	if n := len(dlqMessages(t, s.JS)); n != 0 {
		t.Errorf("%d dead letters with no delivery bound", n)
	}
}

var errTransient = errors.New("transient")

// A consumer connected to a cluster keeps receiving when the server it is
// connected to goes away: its waiting pull requests are asked again on the
// server it reconnects to.
func TestConsumerKeepsPullingAcrossANodeFailure(t *testing.T) {
	c := natstest.RunCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := bus.EnsureStreams(ctx, c.JS, 3); err != nil {
		t.Fatal(err)
	}
	nc, js := c.Connect(t)
	got := make(chan string, 16)
	consumeOn(t, js, bus.ConsumerConfig{Stream: event.StreamEvents, Durable: "failover", Concurrency: 2, AckWait: 5 * time.Second},
		func(_ context.Context, e cloudevents.Event) error { got <- event.MetaOf(e).RunID; return nil })
	publish := func(run string) {
		t.Helper()
		if err := bus.Publish(ctx, c.JS, event.LifecycleSubject(event.TypeRunCreated, run), newEvent(t, event.TypeRunCreated, run)); err != nil {
			t.Fatal(err)
		}
	}
	receive := func(run string, within time.Duration) {
		t.Helper()
		select {
		case r := <-got:
			if r != run {
				t.Fatalf("received %s, want %s", r, run)
			}
		case <-time.After(within):
			t.Fatalf("%s not received within %s", run, within)
		}
	}
	publish("before")
	receive("before", 10*time.Second)

	url := nc.ConnectedUrl()
	for _, s := range c.Servers {
		if s.ClientURL() == url {
			s.Shutdown()
		}
	}
	waitFor(t, 10*time.Second, func() bool { return nc.IsConnected() && nc.ConnectedUrl() != url })
	// Within less than the two missed heartbeats (10s) a lost request
	// would take to notice: the reconnection itself renews the requests.
	t0 := time.Now()
	publish("after")
	t1 := time.Now()
	receive("after", 8*time.Second)
	t.Logf("after the failover: published in %s, received %s later", t1.Sub(t0), time.Since(t1))
}

func TestConsumeRecreatesADeletedDurable(t *testing.T) {
	s := setup(t)
	subj := "ansflow.events.step.completed.deleted"
	got := make(chan struct{}, 4)
	consumeOn(t, s.JS, bus.ConsumerConfig{Stream: event.StreamEvents, Durable: "deleted", FilterSubjects: []string{subj}},
		func(context.Context, cloudevents.Event) error { got <- struct{}{}; return nil })
	waitFor(t, 5*time.Second, func() bool {
		_, err := s.JS.Consumer(context.Background(), event.StreamEvents, "deleted")
		return err == nil
	})
	if err := s.JS.DeleteConsumer(context.Background(), event.StreamEvents, "deleted"); err != nil {
		t.Fatal(err)
	}
	// Recreated at once on the server's "consumer deleted" answer, or, when
	// a slot missed it, once its request's heartbeats stop (10 s).
	waitFor(t, 20*time.Second, func() bool {
		_, err := s.JS.Consumer(context.Background(), event.StreamEvents, "deleted")
		return err == nil
	})
	if err := bus.Publish(context.Background(), s.JS, subj, newEvent(t, event.TypeStepCompleted, "deleted")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the event was not handled after the durable was deleted")
	}
}
