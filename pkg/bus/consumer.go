package bus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/metrics"
	"github.com/ansflow/ansflow/pkg/topology"
	"github.com/ansflow/ansflow/pkg/tracing"
)

// Handler processes one event. A nil error acknowledges the message; an error
// wrapped by [Permanent] dead-letters it at once; any other error asks for a
// redelivery after a backoff, until MaxDeliver is reached.
type Handler func(ctx context.Context, e cloudevents.Event) error

// Middleware wraps a Handler.
type Middleware func(Handler) Handler

// Chain applies middlewares so that the first one is outermost.
func Chain(h Handler, mws ...Middleware) Handler {
	for i := len(mws) - 1; i >= 0; i-- {
		h = mws[i](h)
	}
	return h
}

// PermanentError marks a failure that redelivery cannot cure.
type PermanentError struct{ Err error }

// Error says the failure is permanent and what it is.
func (e *PermanentError) Error() string { return "permanent: " + e.Err.Error() }

// Unwrap returns the failure, for [errors.Is] and [errors.As].
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent wraps err so the consumer dead-letters the message instead of
// retrying it. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// Recover turns a panic in the handler into a permanent error, so one bad
// message cannot crash the service.
func Recover() Middleware {
	return func(next Handler) Handler {
		return func(ctx context.Context, e cloudevents.Event) (err error) {
			defer func() {
				if r := recover(); r != nil {
					err = Permanent(fmt.Errorf("handler panic on %s %s: %v", e.Type(), e.ID(), r))
				}
			}()
			return next(ctx, e)
		}
	}
}

// KnownTypes dead-letters events whose type is not part of the contract.
func KnownTypes() Middleware {
	return func(next Handler) Handler {
		return func(ctx context.Context, e cloudevents.Event) error {
			if !event.IsKnownType(e.Type()) {
				return Permanent(fmt.Errorf("unknown event type %q", e.Type()))
			}
			return next(ctx, e)
		}
	}
}

// ConsumerConfig describes a durable pull consumer and how it is served.
type ConsumerConfig struct {
	// Stream is the stream the consumer reads.
	Stream string
	// Durable names the consumer; instances serving the same durable share
	// its messages.
	Durable string
	// FilterSubjects selects the stream's subjects the consumer reads (all
	// when empty).
	FilterSubjects []string
	// MaxDeliver bounds how often the handler runs for one message before
	// the message is dead-lettered (default 5; negative: no bound). The
	// server's own limit is off; see the package documentation for why.
	MaxDeliver int
	// AckWait is the redelivery timeout; in-progress acks are sent every
	// third of it from the moment a message is received until it is
	// acknowledged, nak'd or terminated (default 30s).
	AckWait time.Duration
	// Concurrency is how many handlers run at once, and so how many
	// messages one instance holds at most (default 1, at most
	// [MaxConcurrency]).
	Concurrency int
	// DeliverNew starts a new consumer at new messages instead of the
	// stream's beginning.
	DeliverNew bool
	// RetryDelay is the Nak delay after a retryable error, multiplied by
	// the number of deliveries so far (default 1s).
	RetryDelay time.Duration
	// Grace is how long handlers still running when ctx ends may take to
	// finish (and ack) before their context is cancelled too (default 0:
	// at once).
	Grace time.Duration
	// Metrics counts the consumer's redeliveries and dead letters by
	// stream; nil counts nothing.
	Metrics *metrics.Metrics
}

// MaxConcurrency is the largest [ConsumerConfig.Concurrency]: each handler
// slot keeps one pull request waiting on the server, which holds at most
// 512 per consumer by default.
const MaxConcurrency = 512

func (c *ConsumerConfig) defaults() {
	if c.MaxDeliver == 0 {
		c.MaxDeliver = 5
	}
	if c.AckWait == 0 {
		c.AckWait = 30 * time.Second
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 1
	}
	if c.RetryDelay == 0 {
		c.RetryDelay = time.Second
	}
}

// EnsureConsumer binds to the durable consumer, creating or updating it
// when it is missing or its settings differ ([BindOrCreateConsumer]);
// several instances may call it at once. The consumer's server-side
// MaxDeliver is unlimited: [Consume] enforces cfg.MaxDeliver itself (see
// the package documentation). Its configuration is
// [topology.WorkConsumer]'s, which `ansflow provision` creates too.
func EnsureConsumer(ctx context.Context, js jetstream.JetStream, cfg ConsumerConfig) (jetstream.Consumer, error) {
	cfg.defaults()
	c := topology.WorkConsumer(cfg.Stream, cfg.Durable, cfg.FilterSubjects, cfg.AckWait, cfg.Concurrency, cfg.DeliverNew)
	return BindOrCreateConsumer(ctx, js, c.Stream, c.Config)
}

// BindOrCreateConsumer returns the durable consumer cc.Durable on stream.
// When it exists with every setting of cc, it is bound without a write, so
// an identity without the right to create consumers (a service started
// with its own NATS credentials against a provisioned server) can use it;
// otherwise it is created or updated, retrying a few times, as the
// embedded, unauthenticated default needs.
func BindOrCreateConsumer(ctx context.Context, js jetstream.JetStream, stream string, cc jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	var (
		cons jetstream.Consumer
		err  error
	)
	exists := false
	if cons, err = apiCall(ctx, func(ctx context.Context) (jetstream.Consumer, error) { return js.Consumer(ctx, stream, cc.Durable) }); err == nil {
		if ConsumerSettled(cons.CachedInfo().Config, cc) {
			return cons, nil
		}
		exists = true
	}
	for try := range 5 {
		if cons, err = js.CreateOrUpdateConsumer(ctx, stream, cc); err == nil {
			return cons, nil
		}
		if serr := sleep(ctx, time.Duration(try+1)*50*time.Millisecond); serr != nil {
			return nil, fmt.Errorf("ensure consumer %s on %s: %w; last attempt: %w", cc.Durable, stream, serr, err)
		}
	}
	if exists {
		return nil, fmt.Errorf("ensure consumer %s on %s: it exists with other settings and updating it failed "+
			"(an identity that may not update it needs `ansflow provision` with the same settings, e.g. --runner-lease): %w", cc.Durable, stream, err)
	}
	return nil, fmt.Errorf("ensure consumer %s on %s: %w", cc.Durable, stream, err)
}

// ConsumerSettled reports whether the consumer configured as cur already has
// every setting AnsFlow gives in want.
func ConsumerSettled(cur, want jetstream.ConsumerConfig) bool {
	filters := func(c jetstream.ConsumerConfig) []string {
		f := slices.Clone(c.FilterSubjects)
		if c.FilterSubject != "" {
			f = append(f, c.FilterSubject)
		}
		slices.Sort(f)
		return f
	}
	orUnlimited := func(n int) int {
		if n == 0 {
			return -1
		}
		return n
	}
	return cur.Durable == want.Durable && cur.Description == want.Description &&
		cur.AckPolicy == want.AckPolicy && cur.AckWait == want.AckWait &&
		orUnlimited(cur.MaxDeliver) == orUnlimited(want.MaxDeliver) &&
		slices.Equal(filters(cur), filters(want)) && cur.DeliverPolicy == want.DeliverPolicy &&
		(want.MaxAckPending == 0 || cur.MaxAckPending == want.MaxAckPending)
}

// Consume serves the durable consumer described by cfg with h until ctx is
// done. It returns nil on cancellation and an error only when the consumer
// cannot be set up or cfg is invalid.
//
// Each of cfg.Concurrency workers pulls one message only when it is free to
// handle it, so an instance never holds a message it has no slot for, and a
// second instance on the same durable receives what this one cannot take.
// A worker's pull request is renewed when the connection reconnects or the
// server's heartbeats stop, so a consumer follows a cluster's failover.
// When ctx ends, pulling stops at once, a message that arrives then is
// nak'd for another instance, and running handlers get cfg.Grace to finish
// before their context is cancelled; a handler that returns because of that
// has its message nak'd too.
func Consume(ctx context.Context, js jetstream.JetStream, cfg ConsumerConfig, h Handler, log *zap.Logger) error {
	cfg.defaults()
	if cfg.Concurrency > MaxConcurrency {
		return fmt.Errorf("consume %s: concurrency %d above %d", cfg.Durable, cfg.Concurrency, MaxConcurrency)
	}
	if _, err := EnsureConsumer(ctx, js, cfg); err != nil {
		if ctx.Err() != nil {
			return nil // cancelled while setting up
		}
		return err
	}
	p := newPuller(js, cfg.Stream, cfg.Durable)
	defer p.close()
	c := &consumer{js: js, cfg: cfg, h: Chain(h, Recover()),
		log: log.With(zap.String("consumer", cfg.Durable), zap.String("stream", cfg.Stream))}

	// Handlers run on their own context: when ctx ends, pulling stops at
	// once, and running handlers get cfg.Grace to finish before theirs ends.
	hctx, cancelHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHandlers()
	var wg sync.WaitGroup
	for range cfg.Concurrency {
		wg.Go(func() { c.work(ctx, hctx, p) })
	}
	<-ctx.Done()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	grace := time.NewTimer(cfg.Grace)
	defer grace.Stop()
	select {
	case <-done:
	case <-grace.C:
		cancelHandlers()
		<-done
	}
	return nil
}

// consumer is one [Consume] call's state, shared by its workers.
type consumer struct {
	js  jetstream.JetStream
	cfg ConsumerConfig
	h   Handler
	log *zap.Logger
}

// work pulls and handles one message at a time until ctx is done; handlers
// run on hctx.
func (c *consumer) work(ctx, hctx context.Context, p *puller) {
	s := &slot{p: p}
	defer s.close()
	fails := 0
	for ctx.Err() == nil {
		msg, err := s.receive(ctx)
		switch {
		case ctx.Err() != nil:
			if msg != nil {
				_ = msg.Nak() // arrived as we stopped: let another instance take it
			}
			return
		case errors.Is(err, nats.ErrTimeout), errors.Is(err, errPullLost):
			fails = 0
			continue
		case err != nil:
			if fails == 0 || fails%20 == 0 {
				c.log.Warn("fetch failed", zap.Int("failures", fails+1), zap.Error(err))
			}
			// The durable was deleted, or nothing serves it (no
			// responders): make it again, which is harmless when it
			// exists and is only electing a leader.
			if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, nats.ErrNoResponders) && fails%10 == 0 {
				if _, eerr := EnsureConsumer(ctx, c.js, c.cfg); eerr != nil && ctx.Err() == nil {
					c.log.Error("recreate consumer", zap.Error(eerr))
				}
			}
			_ = sleep(ctx, backoff(fails, 50*time.Millisecond, 5*time.Second))
			fails++
			continue
		}
		fails = 0
		c.handle(hctx, msg)
	}
}

// handle runs the handler on msg and settles it: ack, nak with a delay,
// nak for another instance when ctx ends, or dead-letter and terminate.
// msg gets in-progress acks from the start until it is settled.
func (c *consumer) handle(ctx context.Context, msg jetstream.Msg) {
	hb := startHeartbeat(msg, c.cfg.AckWait/3)
	defer hb.stop()
	deliveries, seq := 1, uint64(0)
	if md, err := msg.Metadata(); err == nil {
		deliveries, seq = int(md.NumDelivered), md.Sequence.Stream
	}
	dl := deadLetter{c: c, msg: msg, hb: hb, deliveries: deliveries, seq: seq}
	if deliveries > 1 {
		c.cfg.Metrics.Redelivered(c.cfg.Stream)
	}
	limited := c.cfg.MaxDeliver > 0
	if limited && deliveries > c.cfg.MaxDeliver {
		// The previous delivery was the last one the handler may have, and
		// it ended without an outcome: its process died, or its
		// acknowledgement was lost. Dead-letter without running it again.
		dl.send(ctx, fmt.Sprintf("gave up after %d deliveries (max %d): the last one ended unsettled, its consumer stopped or died before acknowledging or dead-lettering it",
			deliveries-1, c.cfg.MaxDeliver))
		return
	}
	e, err := event.FromMsg(&nats.Msg{Subject: msg.Subject(), Header: msg.Headers(), Data: msg.Data()})
	if err != nil {
		dl.send(ctx, err.Error())
		return
	}
	hctx, cancel := context.WithCancel(ctx)
	hctx, span := c.startSpan(hctx, e, msg.Subject(), deliveries)
	err = c.h(hctx, e)
	tracing.RecordError(span, err)
	span.End()
	cancel()
	var perm *PermanentError
	switch {
	case err == nil:
		hb.stop()
		if aerr := msg.DoubleAck(ctx); aerr != nil && ctx.Err() == nil {
			c.log.Warn("ack failed", zap.String("event_id", e.ID()), zap.Error(aerr))
		}
	case ctx.Err() != nil:
		hb.stop()
		_ = msg.Nak() // shutting down: let another instance take it
	case errors.As(err, &perm), limited && deliveries >= c.cfg.MaxDeliver:
		c.log.Warn("dead-lettering event", zap.String("event_id", e.ID()), zap.String("type", e.Type()),
			zap.Int("deliveries", deliveries), zap.Error(err))
		dl.send(ctx, err.Error())
	default:
		c.log.Info("handler failed, will retry", zap.String("event_id", e.ID()), zap.Int("deliveries", deliveries), zap.Error(err))
		hb.stop()
		_ = msg.NakWithDelay(c.cfg.RetryDelay * time.Duration(deliveries))
	}
}

// startSpan starts the consumer span of e's handling, child of the trace
// context e carries; a no-op span while tracing is off.
func (c *consumer) startSpan(ctx context.Context, e cloudevents.Event, subject string, deliveries int) (context.Context, trace.Span) {
	if !tracing.Enabled() {
		return ctx, noopSpan
	}
	noun, verb := event.NounVerb(e.Type())
	m := event.MetaOf(e)
	return tracing.Tracer().Start(tracing.Extract(ctx, e), "consume "+noun+"."+verb, trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("messaging.system", "nats"), attribute.String("messaging.destination.name", subject),
			attribute.String("messaging.consumer.group.name", c.cfg.Durable), attribute.String("messaging.message.id", e.ID()),
			attribute.Int("messaging.message.delivery_count", deliveries),
			attribute.String("cloudevents.event_type", e.Type()), attribute.String("cloudevents.event_source", e.Source()),
			attribute.String("ansflow.run.id", m.RunID), attribute.String("ansflow.step.id", m.StepID), attribute.Int("ansflow.step.attempt", m.Attempt)))
}

var noopSpan = trace.SpanFromContext(context.Background())

// heartbeat sends in-progress acks for one message until stopped. It is a
// self-rearming timer rather than a goroutine, so a short handler costs no
// goroutine and its settlement waits for none.
type heartbeat struct {
	mu      sync.Mutex
	stopped bool
	t       *time.Timer
}

func startHeartbeat(msg jetstream.Msg, every time.Duration) *heartbeat {
	hb := &heartbeat{}
	var beat func()
	beat = func() {
		hb.mu.Lock()
		defer hb.mu.Unlock()
		if hb.stopped {
			return
		}
		_ = msg.InProgress()
		hb.t.Reset(every)
	}
	hb.mu.Lock()
	hb.t = time.AfterFunc(every, beat)
	hb.mu.Unlock()
	return hb
}

// stop ends the heartbeats and returns once none can follow, so that no
// in-progress ack reaches the server after the message's final ack, nak or
// term (one after a delayed nak would postpone the redelivery). It may be
// called more than once.
func (hb *heartbeat) stop() {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	hb.stopped = true
	hb.t.Stop()
}
