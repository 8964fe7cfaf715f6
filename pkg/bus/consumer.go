package bus

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/event"
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

func (e *PermanentError) Error() string { return "permanent: " + e.Err.Error() }
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
	Stream         string
	Durable        string
	FilterSubjects []string
	// MaxDeliver bounds deliveries before the message is dead-lettered
	// (default 5).
	MaxDeliver int
	// AckWait is the redelivery timeout; in-progress acks are sent every
	// third of it while the handler runs (default 30s).
	AckWait time.Duration
	// Concurrency is how many handlers run at once (default 1).
	Concurrency int
	// DeliverNew starts a new consumer at new messages instead of the
	// stream's beginning.
	DeliverNew bool
	// RetryDelay is the Nak delay after a retryable error (default 1s).
	RetryDelay time.Duration
	// Grace is how long handlers still running when ctx ends may take to
	// finish (and ack) before their context is cancelled too (default 0:
	// at once).
	Grace time.Duration
}

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

// EnsureConsumer creates or updates the durable consumer; several instances
// may call it at once.
func EnsureConsumer(ctx context.Context, js jetstream.JetStream, cfg ConsumerConfig) (jetstream.Consumer, error) {
	cfg.defaults()
	cc := jetstream.ConsumerConfig{
		Durable:        cfg.Durable,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        cfg.AckWait,
		MaxDeliver:     cfg.MaxDeliver,
		FilterSubjects: cfg.FilterSubjects,
		MaxAckPending:  max(1000, cfg.Concurrency*4),
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	}
	if cfg.DeliverNew {
		cc.DeliverPolicy = jetstream.DeliverNewPolicy
	}
	var (
		cons jetstream.Consumer
		err  error
	)
	for try := 0; try < 5; try++ {
		cons, err = js.CreateOrUpdateConsumer(ctx, cfg.Stream, cc)
		if err == nil {
			return cons, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Duration(try+1) * 50 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("ensure consumer %s on %s: %w", cfg.Durable, cfg.Stream, err)
}

// Consume serves the durable consumer described by cfg with h until ctx is
// done. It returns nil on cancellation and an error only when the consumer
// cannot be set up.
func Consume(ctx context.Context, js jetstream.JetStream, cfg ConsumerConfig, h Handler, log *zap.Logger) error {
	cfg.defaults()
	cons, err := EnsureConsumer(ctx, js, cfg)
	if err != nil {
		return err
	}
	log = log.With(zap.String("consumer", cfg.Durable), zap.String("stream", cfg.Stream))
	h = Chain(h, Recover())
	it, err := cons.Messages(jetstream.PullMaxMessages(max(cfg.Concurrency*2, 16)))
	if err != nil {
		return fmt.Errorf("consume %s: %w", cfg.Durable, err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()

	// Handlers run on their own context: when ctx ends, fetching stops at
	// once, and running handlers get cfg.Grace to finish before theirs ends.
	hctx, cancelHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHandlers()
	sem := make(chan struct{}, cfg.Concurrency)
	var wg sync.WaitGroup
	defer func() {
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(cfg.Grace):
			cancelHandlers()
			<-done
		}
	}()
	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			log.Warn("fetch failed", zap.Error(err))
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			_ = msg.Nak()
			return nil
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			handle(hctx, js, cfg, msg, h, log)
		}()
	}
}

func handle(ctx context.Context, js jetstream.JetStream, cfg ConsumerConfig, msg jetstream.Msg, h Handler, log *zap.Logger) {
	md, _ := msg.Metadata()
	deliveries := 1
	if md != nil {
		deliveries = int(md.NumDelivered)
	}
	e, err := event.FromMsg(&nats.Msg{Subject: msg.Subject(), Header: msg.Headers(), Data: msg.Data()})
	if err != nil {
		deadLetter(ctx, js, cfg.Stream, msg, deliveries, err.Error(), log)
		return
	}
	hctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { // heartbeat while the handler runs
		t := time.NewTicker(cfg.AckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	err = h(hctx, e)
	close(done)
	cancel()
	var perm *PermanentError
	switch {
	case err == nil:
		if aerr := msg.DoubleAck(ctx); aerr != nil && ctx.Err() == nil {
			log.Warn("ack failed", zap.String("event_id", e.ID()), zap.Error(aerr))
		}
	case ctx.Err() != nil:
		_ = msg.Nak() // shutting down: let another instance take it
	case errors.As(err, &perm), deliveries >= cfg.MaxDeliver:
		log.Warn("dead-lettering event", zap.String("event_id", e.ID()), zap.String("type", e.Type()),
			zap.Int("deliveries", deliveries), zap.Error(err))
		deadLetter(ctx, js, cfg.Stream, msg, deliveries, err.Error(), log)
	default:
		log.Info("handler failed, will retry", zap.String("event_id", e.ID()), zap.Int("deliveries", deliveries), zap.Error(err))
		_ = msg.NakWithDelay(cfg.RetryDelay * time.Duration(deliveries))
	}
}

// Dead-letter headers added to a message copied to the DLQ stream.
const (
	HeaderDLQReason     = "Ansflow-Dlq-Reason"
	HeaderDLQStream     = "Ansflow-Dlq-Stream"
	HeaderDLQSubject    = "Ansflow-Dlq-Subject"
	HeaderDLQDeliveries = "Ansflow-Dlq-Deliveries"
)

func deadLetter(ctx context.Context, js jetstream.JetStream, stream string, msg jetstream.Msg, deliveries int, reason string, log *zap.Logger) {
	out := nats.NewMsg(event.DLQSubject(stream))
	for k, v := range msg.Headers() {
		if k == event.HeaderMsgID {
			continue
		}
		out.Header[k] = v
	}
	out.Header.Set(HeaderDLQReason, truncate(reason, 1024))
	out.Header.Set(HeaderDLQStream, stream)
	out.Header.Set(HeaderDLQSubject, msg.Subject())
	out.Header.Set(HeaderDLQDeliveries, strconv.Itoa(deliveries))
	out.Data = msg.Data()
	if _, err := js.PublishMsg(ctx, out); err != nil {
		// Keep the message: a redelivery will try the dead-letter path again.
		log.Error("dead-letter publish failed", zap.String("subject", msg.Subject()), zap.Error(err))
		_ = msg.NakWithDelay(time.Second)
		return
	}
	if err := msg.TermWithReason(truncate(reason, 200)); err != nil {
		log.Warn("term failed", zap.Error(err))
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
