package bus_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
)

func setup(t *testing.T) *natstest.Server {
	t.Helper()
	s := natstest.Run(t)
	if err := bus.EnsureStreams(context.Background(), s.JS, 1); err != nil {
		t.Fatal(err)
	}
	return s
}

func newEvent(t *testing.T, typ, run string) cloudevents.Event {
	t.Helper()
	e, err := event.New("test", typ, event.Meta{RunID: run, StepID: "s", Attempt: 1}, map[string]string{"k": "v"})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func dlqMessages(t *testing.T, js jetstream.JetStream) []*jetstream.RawStreamMsg {
	t.Helper()
	s, err := js.Stream(context.Background(), event.StreamDLQ)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := s.Info(context.Background())
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		if m, err := s.GetMsg(context.Background(), seq); err == nil {
			out = append(out, m)
		}
	}
	return out
}

func consume(t *testing.T, s *natstest.Server, cfg bus.ConsumerConfig, h bus.Handler) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = bus.Consume(ctx, s.JS, cfg, h, zap.NewNop()) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestRoundTripBinaryModeAndDedupe(t *testing.T) {
	s := setup(t)
	e := newEvent(t, event.TypeStepCompleted, "r1")
	subj := event.LifecycleSubject(e.Type(), "r1")
	for i := 0; i < 3; i++ { // same id: stored once
		if err := bus.Publish(context.Background(), s.JS, subj, e); err != nil {
			t.Fatal(err)
		}
	}
	var got []cloudevents.Event
	var mu sync.Mutex
	consume(t, s, bus.ConsumerConfig{Stream: event.StreamEvents, Durable: "t1", FilterSubjects: []string{subj}},
		func(_ context.Context, e cloudevents.Event) error {
			mu.Lock()
			got = append(got, e)
			mu.Unlock()
			return nil
		})
	waitFor(t, 5*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 1 })
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 {
		t.Fatalf("delivered %d times, want once", len(got))
	}
	g := got[0]
	if g.ID() != e.ID() || g.Type() != e.Type() || g.Source() != "test" || event.MetaOf(g).RunID != "r1" || event.MetaOf(g).Attempt != 1 {
		t.Errorf("round trip lost attributes: %v", g)
	}
	raw, _ := s.JS.Stream(context.Background(), event.StreamEvents)
	m, _ := raw.GetMsg(context.Background(), 1)
	for _, h := range []string{"ce-id", "ce-type", "ce-source", "ce-specversion", "ce-runid", "Nats-Msg-Id"} {
		if m.Header.Get(h) == "" {
			t.Errorf("header %s missing on the wire", h)
		}
	}
}

func TestPoisonMessagesAreDeadLetteredNotLooped(t *testing.T) {
	s := setup(t)
	subj := "ansflow.events.step.completed.poison"
	// not a CloudEvent at all
	if _, err := s.JS.Publish(context.Background(), subj, []byte("garbage")); err != nil {
		t.Fatal(err)
	}
	// a CloudEvent of an unknown type
	if err := bus.Publish(context.Background(), s.JS, subj, newEvent(t, "io.example.unknown.v1", "r")); err != nil {
		t.Fatal(err)
	}
	// a handler that always fails (retryable) and one that panics
	failing := newEvent(t, event.TypeStepCompleted, "fail")
	panicking := newEvent(t, event.TypeStepCompleted, "panic")
	for _, e := range []cloudevents.Event{failing, panicking} {
		if err := bus.Publish(context.Background(), s.JS, subj, e); err != nil {
			t.Fatal(err)
		}
	}
	var calls atomic.Int64
	consume(t, s, bus.ConsumerConfig{Stream: event.StreamEvents, Durable: "poison", FilterSubjects: []string{subj},
		MaxDeliver: 3, RetryDelay: 10 * time.Millisecond, AckWait: time.Second},
		bus.Chain(func(_ context.Context, e cloudevents.Event) error {
			calls.Add(1)
			if event.MetaOf(e).RunID == "panic" {
				panic("boom")
			}
			return errors.New("transient")
		}, bus.KnownTypes()))
	waitFor(t, 10*time.Second, func() bool { return len(dlqMessages(t, s.JS)) == 4 })
	reasons := ""
	for _, m := range dlqMessages(t, s.JS) {
		reasons += m.Header.Get(bus.HeaderDLQReason) + "\n"
		if m.Header.Get(bus.HeaderDLQSubject) != subj || m.Header.Get(bus.HeaderDLQStream) != event.StreamEvents {
			t.Errorf("dead letter lacks origin headers: %v", m.Header)
		}
	}
	for _, want := range []string{"not a CloudEvent", "unknown event type", "transient", "handler panic"} {
		if !strings.Contains(reasons, want) {
			t.Errorf("dead-letter reasons lack %q:\n%s", want, reasons)
		}
	}
	// the failing event was tried MaxDeliver times, the panicking one once
	if got := calls.Load(); got != 4 {
		t.Errorf("handler calls = %d, want 3 (retries) + 1 (panic)", got)
	}
}

func TestOversizedMessageIsRejectedByTheStream(t *testing.T) {
	s := setup(t)
	big := make([]byte, bus.MaxMessageBytes+1)
	_, err := s.JS.Publish(context.Background(), "ansflow.events.step.log.big", big)
	if err == nil {
		t.Fatal("stream accepted an oversized message")
	}
}

func TestEnsureStreamsConcurrently(t *testing.T) {
	s := natstest.Run(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nc, err := nats.Connect(s.ClientURL())
			if err != nil {
				errs <- err
				return
			}
			defer nc.Close()
			js, _ := jetstream.New(nc)
			errs <- bus.EnsureStreams(context.Background(), js, 1)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent EnsureStreams: %v", err)
		}
	}
	for _, name := range []string{event.StreamSteps, event.StreamEvents, event.StreamLogs, event.StreamDLQ} {
		if _, err := s.JS.Stream(context.Background(), name); err != nil {
			t.Errorf("stream %s: %v", name, err)
		}
	}
}

func TestInProgressAcksKeepLongHandlersAlive(t *testing.T) {
	s := setup(t)
	subj := "ansflow.events.step.completed.long"
	if err := bus.Publish(context.Background(), s.JS, subj, newEvent(t, event.TypeStepCompleted, "long")); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int64
	consume(t, s, bus.ConsumerConfig{Stream: event.StreamEvents, Durable: "long", FilterSubjects: []string{subj}, AckWait: 300 * time.Millisecond},
		func(ctx context.Context, e cloudevents.Event) error {
			calls.Add(1)
			time.Sleep(1500 * time.Millisecond) // five AckWaits
			return nil
		})
	waitFor(t, 5*time.Second, func() bool { return calls.Load() >= 1 })
	time.Sleep(2 * time.Second)
	if got := calls.Load(); got != 1 {
		t.Fatalf("handler ran %d times: heartbeats did not hold the message", got)
	}
	_ = fmt.Sprint()
}
