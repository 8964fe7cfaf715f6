package bus_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
)

// A publish while its stream is not there yet (as before a starting
// pipeline service made it, or while a stream has no leader) is retried
// until it is stored, once.
func TestPublishRetriesUntilTheStreamIsThere(t *testing.T) {
	s := natstest.Run(t)
	e := newEvent(t, event.TypeRunCreated, "later")
	subj := event.LifecycleSubject(e.Type(), "later")
	const delay = 300 * time.Millisecond
	created := make(chan error, 1)
	time.AfterFunc(delay, func() { created <- bus.EnsureStreams(context.Background(), s.JS, 1) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t0 := time.Now()
	if err := bus.Publish(ctx, s.JS, subj, e); err != nil {
		t.Fatalf("publish while the stream was being created: %v", err)
	}
	if d := time.Since(t0); d < delay {
		t.Fatalf("publish returned after %s, before the stream existed", d)
	}
	if err := <-created; err != nil {
		t.Fatal(err)
	}
	if err := bus.Publish(ctx, s.JS, subj, e); err != nil { // a retry after a lost ack
		t.Fatal(err)
	}
	st, err := s.JS.Stream(ctx, event.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("stream holds %d copies, want 1", info.State.Msgs)
	}
	m, err := st.GetMsg(ctx, info.State.FirstSeq)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get(jetstream.MsgIDHeader) != e.ID() {
		t.Errorf("stored Nats-Msg-Id %q, want the event id %q", m.Header.Get(jetstream.MsgIDHeader), e.ID())
	}
}

func TestPublishGivesUpAtTheDeadlineOrAtOnceWhenPermanent(t *testing.T) {
	s := setup(t)
	big := newEvent(t, event.TypeRunCreated, "big")
	if err := big.SetData("application/json", map[string]string{"pad": strings.Repeat("x", bus.MaxMessageBytes)}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		subject string
		e       func() cloudevents.Event
		timeout time.Duration
		is      error
		within  time.Duration
	}{
		{"no stream until the deadline", "ansflow.nostream.x", func() cloudevents.Event { return newEvent(t, event.TypeRunCreated, "x") },
			300 * time.Millisecond, jetstream.ErrNoStreamResponse, 2 * time.Second},
		{"too large for the stream", "ansflow.events.run.created.big", func() cloudevents.Event { return big },
			10 * time.Second, jetstream.ErrStreamMessageExceedsMaximum, time.Second},
		{"invalid subject", "", func() cloudevents.Event { return newEvent(t, event.TypeRunCreated, "x") },
			10 * time.Second, nats.ErrBadSubject, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t0 := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), tt.timeout)
			defer cancel()
			err := bus.Publish(ctx, s.JS, tt.subject, tt.e())
			d := time.Since(t0)
			if !errors.Is(err, tt.is) {
				t.Fatalf("error %v, want %v", err, tt.is)
			}
			if d > tt.within {
				t.Errorf("returned after %s, want within %s", d, tt.within)
			}
			if tt.timeout < time.Second && (d < tt.timeout || !errors.Is(err, context.DeadlineExceeded)) {
				t.Errorf("gave up after %s (%v), want retries until the deadline (%s)", d, err, tt.timeout)
			}
		})
	}
}

// TestRetryStopsAtSuccessPermanenceOrDeadline checks bus.Retry's three
// ends.
func TestRetryStopsAtSuccessPermanenceOrDeadline(t *testing.T) {
	ctx := context.Background()
	calls := 0
	if err := bus.Retry(ctx, func(context.Context) error {
		if calls++; calls < 3 {
			return errTransient
		}
		return nil
	}); err != nil || calls != 3 {
		t.Errorf("transient twice: err %v after %d calls, want success on the third", err, calls)
	}
	calls = 0
	perm := bus.Permanent(errors.New("refused"))
	if err := bus.Retry(ctx, func(context.Context) error { calls++; return perm }); !errors.Is(err, perm) || calls != 1 {
		t.Errorf("permanent: err %v after %d calls, want it at once", err, calls)
	}
	dctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := bus.Retry(dctx, func(context.Context) error { return errTransient }); !errors.Is(err, errTransient) || dctx.Err() == nil {
		t.Errorf("always failing: err %v, want the last error at the deadline", err)
	}
}
