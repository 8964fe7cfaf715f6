// Package audit is AnsFlow's audit service: it records every message on
// the bus in a tamper-evident [store.Store] and answers queries about it.
//
// The service reads each stream through its own durable pull consumer,
// directly with jetstream rather than bus.Consume, because it must keep
// what bus.Consume would dead-letter: a message that is not a CloudEvent,
// has an unknown type or is oversized is stored as a rejected record with
// the reason, and acknowledged. Messages are stored in batches (one
// transaction each) and acknowledged after the transaction commits, so
// delivery is at-least-once and the store's dedupe on (source, id) makes
// the trail exactly-once: a service that was down catches up from its
// durable consumers and records every event once.
//
// Which streams are read: ANSFLOW_STEPS (step requests, every attempt),
// ANSFLOW_EVENTS (lifecycle events, API and webhook actions) and
// ANSFLOW_DLQ (as [TypeDeadLetter] records) always; ANSFLOW_LOGS only when
// [Config.IncludeLogs] is set. Log chunks are step output, not actions:
// they are by far the largest stream, may hold whatever a build prints,
// already have their own retention in ANSFLOW_LOGS, and every attempt's end
// (with its output tails) is recorded from step.completed.
package audit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/metrics"
	"github.com/ansflow/ansflow/pkg/topology"
	"github.com/ansflow/ansflow/pkg/tracing"
	"github.com/ansflow/ansflow/services/audit/store"
)

// Config configures a [Service]. Call [Config.Validate] before [New].
type Config struct {
	// DurablePrefix names the durable consumers: "<prefix>-steps",
	// "<prefix>-events", "<prefix>-dlq", "<prefix>-logs" (default
	// "audit"). Instances sharing a prefix share the work.
	DurablePrefix string
	// IncludeLogs also records ANSFLOW_LOGS (off by default; see the
	// package documentation).
	IncludeLogs bool
	// BatchSize is the most messages stored in one transaction (default
	// 1000).
	BatchSize int
	// FlushInterval is how long a batch waits to fill after its first
	// message (default 20ms).
	FlushInterval time.Duration
	// MaxEventBytes is the largest message body stored as an event; larger
	// ones are rejected records (default 256 KiB).
	MaxEventBytes int
	// AckWait is the consumers' redelivery timeout (default 30s).
	AckWait time.Duration
	// Replicas is the least number of replicas of the streams (default
	// 1): missing streams are created with it, and existing ones with
	// fewer are raised to it, while ones with more keep theirs (see
	// [bus.EnsureStreams]). The durable consumers follow their stream's.
	Replicas int
	// Retention, when set, prunes records received longer ago than this
	// into a checkpoint every RetentionInterval (default 1h). Keep it
	// longer than the streams' MaxAge, or an event redelivered after its
	// record was pruned would be recorded again.
	Retention         time.Duration
	RetentionInterval time.Duration
	// Metrics counts the records stored and their ingest lag, and the
	// redeliveries the consumers see, by stream; nil counts nothing.
	Metrics *metrics.Metrics
}

// Validate checks c and fills its defaults.
func (c *Config) Validate() error {
	if c.DurablePrefix == "" {
		c.DurablePrefix = topology.DefaultAuditPrefix
	}
	if strings.ContainsAny(c.DurablePrefix, ". *>") {
		return fmt.Errorf("audit durable prefix %q: no '.', '*', '>' or spaces", c.DurablePrefix)
	}
	if c.BatchSize == 0 {
		c.BatchSize = 1000
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = 20 * time.Millisecond
	}
	if c.MaxEventBytes == 0 {
		c.MaxEventBytes = 256 << 10
	}
	if c.AckWait == 0 {
		c.AckWait = 30 * time.Second
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.RetentionInterval == 0 {
		c.RetentionInterval = time.Hour
	}
	switch {
	case c.BatchSize < 1 || c.BatchSize > 10000:
		return fmt.Errorf("audit batch size %d: want 1..10000", c.BatchSize)
	case c.FlushInterval < 0 || c.MaxEventBytes < 0 || c.AckWait < time.Second || c.Replicas < 0:
		return errors.New("audit config: negative flush interval or event size, ack wait under 1s, or negative replicas")
	case c.Retention < 0 || c.RetentionInterval < 0:
		return errors.New("audit config: negative retention")
	}
	return nil
}

// Streams lists the streams the service records.
func (c Config) Streams() []string {
	return topology.AuditStreams(c.IncludeLogs)
}

// Durable is the name of the durable consumer on stream.
func (c Config) Durable(stream string) string {
	return topology.AuditDurable(c.DurablePrefix, stream)
}

// Stats counts what a [Service] has done since it started.
type Stats struct {
	// Received counts deliveries, redeliveries included.
	Received uint64 `json:"received"`
	// Stored counts new records; a duplicate is received, not stored.
	Stored uint64 `json:"stored"`
	// Rejected counts deliveries stored (or skipped as duplicates) as
	// rejected records.
	Rejected uint64 `json:"rejected"`
	// Failures counts batches the store failed to take (redelivered
	// later).
	Failures uint64 `json:"failures"`
}

// Service records the bus into a store. Create it with [New].
type Service struct {
	cfg   Config
	js    jetstream.JetStream
	st    store.Store
	log   *zap.Logger
	stats struct{ received, stored, rejected, failures atomic.Uint64 }
}

// New returns a service; cfg must have passed [Config.Validate]. The
// service does not own st: the caller closes it after Run returns.
func New(cfg Config, js jetstream.JetStream, st store.Store, log *zap.Logger) *Service {
	return &Service{cfg: cfg, js: js, st: st, log: log.With(zap.String("service", "audit"))}
}

// Stats returns the service's counters.
func (s *Service) Stats() Stats {
	return Stats{Received: s.stats.received.Load(), Stored: s.stats.stored.Load(),
		Rejected: s.stats.rejected.Load(), Failures: s.stats.failures.Load()}
}

// Store is the store the service writes.
func (s *Service) Store() store.Store { return s.st }

// Run creates the streams if they are missing (never lowering the replicas
// of existing ones), then records every stream
// until ctx is done. On cancellation it stores what it has already
// received before returning nil. It returns an error only when the
// streams or consumers cannot be set up.
func (s *Service) Run(ctx context.Context) error {
	if err := bus.EnsureStreams(ctx, s.js, s.cfg.Replicas); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, stream := range s.cfg.Streams() {
		cons, err := s.ensureConsumer(ctx, stream)
		if err != nil {
			if ctx.Err() != nil { // stopped while setting up: not a failure
				return g.Wait()
			}
			return err
		}
		g.Go(func() error { return s.consume(gctx, stream, cons) })
	}
	if s.cfg.Retention > 0 {
		g.Go(func() error { s.retain(gctx); return nil })
	}
	s.log.Info("audit service recording", zap.Strings("streams", s.cfg.Streams()), zap.String("durable_prefix", s.cfg.DurablePrefix))
	return g.Wait()
}

func (s *Service) ensureConsumer(ctx context.Context, stream string) (jetstream.Consumer, error) {
	c := topology.AuditConsumer(s.cfg.DurablePrefix, stream, s.cfg.AckWait, s.cfg.BatchSize)
	cons, err := bus.BindOrCreateConsumer(ctx, s.js, stream, c.Config)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return cons, nil
}

// consume records stream until ctx is done, recreating its consumer if the
// server loses it.
func (s *Service) consume(ctx context.Context, stream string, cons jetstream.Consumer) error {
	log := s.log.With(zap.String("stream", stream), zap.String("consumer", s.cfg.Durable(stream)))
	for {
		err := s.consumeOnce(ctx, cons, log)
		if ctx.Err() != nil {
			return nil
		}
		log.Warn("audit consumer stopped, restarting", zap.Error(err))
		if err := sleep(ctx, time.Second); err != nil {
			return nil
		}
		if c, err := s.ensureConsumer(ctx, stream); err == nil {
			cons = c
		} else if ctx.Err() == nil {
			log.Error("recreate audit consumer", zap.Error(err))
		}
	}
}

// consumeOnce serves one message iterator until it closes.
func (s *Service) consumeOnce(ctx context.Context, cons jetstream.Consumer, log *zap.Logger) error {
	it, err := cons.Messages(jetstream.PullMaxMessages(4 * s.cfg.BatchSize))
	if err != nil {
		return fmt.Errorf("open message iterator: %w", err)
	}
	defer it.Stop()
	// Drain, not Stop: what was already delivered is still stored and
	// acknowledged before Run returns.
	stop := context.AfterFunc(ctx, it.Drain)
	defer stop()
	batch := make([]jetstream.Msg, 0, s.cfg.BatchSize)
	fails := 0 // consecutive store failures, for the backoff
	for {
		batch = batch[:0]
		closed := false
		m, err := it.Next()
		switch {
		case errors.Is(err, jetstream.ErrMsgIteratorClosed):
			return err
		case err != nil:
			log.Warn("fetch failed", zap.Error(err))
			_ = sleep(ctx, 100*time.Millisecond)
			continue
		}
		batch = append(batch, m)
		deadline := time.Now().Add(s.cfg.FlushInterval)
		for len(batch) < s.cfg.BatchSize {
			wait := time.Until(deadline)
			if wait <= 0 {
				break
			}
			m, err := it.Next(jetstream.NextMaxWait(wait))
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				closed = true
				break
			}
			if err != nil {
				if !errors.Is(err, nats.ErrTimeout) {
					log.Warn("fetch failed", zap.Error(err))
				}
				break
			}
			batch = append(batch, m)
		}
		if s.flush(ctx, batch, log, fails) {
			fails = 0
		} else {
			fails++
		}
		if closed {
			return jetstream.ErrMsgIteratorClosed
		}
	}
}

// flush stores one batch and acknowledges it, or, when the store fails,
// asks for its redelivery after a backoff that grows with the number of
// consecutive failures before it. It reports whether the batch was stored.
func (s *Service) flush(ctx context.Context, batch []jetstream.Msg, log *zap.Logger, failures int) bool {
	began := time.Now()
	recs := make([]store.Record, len(batch))
	msgs := make([]*message, len(batch))
	published := make([]time.Time, len(batch))
	var rejected uint64
	for i, m := range batch {
		msg := &message{subject: m.Subject(), header: m.Headers(), data: m.Data(), stored: time.Now().UTC()}
		msgs[i] = msg
		if md, err := m.Metadata(); err == nil {
			msg.stream, msg.streamSeq, msg.stored = md.Stream, md.Sequence.Stream, md.Timestamp.UTC()
			published[i] = msg.stored
			if md.NumDelivered > 1 {
				s.cfg.Metrics.Redelivered(md.Stream)
			}
		}
		recs[i] = s.toRecord(msg)
		if recs[i].Rejected {
			rejected++
		}
	}
	s.stats.received.Add(uint64(len(batch)))
	// Whatever happens to ctx, a batch that was received is stored and
	// acknowledged, within bounds.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	n, err := s.append(sctx, recs, log)
	traceStored(msgs, recs, began, err)
	if err != nil {
		s.stats.failures.Add(1)
		log.Error("store audit records; they will be redelivered", zap.Int("records", len(recs)), zap.Error(err))
		delay := min(time.Duration(failures+1)*time.Second, 30*time.Second)
		for _, m := range batch {
			_ = m.NakWithDelay(delay)
		}
		_ = sleep(ctx, delay)
		return false
	}
	s.stats.stored.Add(uint64(n))
	s.stats.rejected.Add(rejected)
	if len(recs) > 0 {
		// a batch is one stream's (one consumer per stream)
		s.cfg.Metrics.AuditIngested(recs[0].Stream, n)
		now := time.Now()
		for i, r := range recs {
			if !published[i].IsZero() {
				s.cfg.Metrics.AuditLag(r.Stream, now.Sub(published[i]))
			}
		}
	}
	if rejected > 0 {
		log.Info("stored rejected messages", zap.Uint64("rejected", rejected))
	}
	for i, m := range batch {
		if i < len(batch)-1 {
			_ = m.Ack()
			continue
		}
		// The last acknowledgement is confirmed, which also confirms the
		// ones before it on this connection.
		if err := m.DoubleAck(sctx); err != nil {
			log.Warn("ack failed; the batch will be redelivered and deduplicated", zap.Error(err))
		}
	}
	return true
}

// traceStored records, in the trace of each event that carries one, an
// "audit.record" span of the batch's storing, failed when the store failed.
func traceStored(msgs []*message, recs []store.Record, began time.Time, err error) {
	if !tracing.Enabled() {
		return
	}
	end := time.Now()
	for i, m := range msgs {
		if m.trace == nil {
			continue
		}
		r := recs[i]
		tracing.RecordSpan(m.trace, "audit.record", trace.SpanKindConsumer, began, end, err,
			attribute.String("messaging.system", "nats"), attribute.String("messaging.destination.name", r.Stream),
			attribute.Int64("ansflow.audit.stream_seq", int64(r.StreamSeq)),
			attribute.String("cloudevents.event_type", r.Type), attribute.String("cloudevents.event_id", r.ID),
			attribute.String("ansflow.run.id", r.RunID), attribute.String("ansflow.step.id", r.StepID))
	}
}

// append stores recs; if the store refuses a record's content, the others
// are stored one by one and the refused one as a rejected record, so one
// bad record cannot hold up a stream.
func (s *Service) append(ctx context.Context, recs []store.Record, log *zap.Logger) (int, error) {
	n, err := s.st.Append(ctx, recs)
	if err == nil || !errors.Is(err, store.ErrInvalidRecord) {
		return n, err
	}
	n = 0
	for _, r := range recs {
		k, err := s.st.Append(ctx, []store.Record{r})
		if errors.Is(err, store.ErrInvalidRecord) {
			log.Warn("store refused a record; keeping it as rejected", zap.String("event_id", r.ID), zap.Error(err))
			fallback := store.Record{Stream: r.Stream, StreamSeq: r.StreamSeq, Source: first(r.Source, BusSourcePrefix+r.Stream),
				ID: first(r.ID, fmt.Sprintf("%d@%d", r.StreamSeq, r.ReceivedAt.UnixNano())), Type: r.Type, Time: r.Time,
				Subject: r.Subject, Rejected: true, Reason: "store refused the record: " + err.Error(), ReceivedAt: r.ReceivedAt}
			k, err = s.st.Append(ctx, []store.Record{fallback})
		}
		if err != nil {
			return n, err
		}
		n += k
	}
	return n, nil
}

// WaitCaughtUp waits until every consumer of the service has nothing left
// to deliver or to be acknowledged, so that every message published before
// the call is stored: call it before stopping a service whose trail must be
// complete, as "ansflow run" does. It polls every 20ms until ctx is done.
func (s *Service) WaitCaughtUp(ctx context.Context) error {
	for {
		idle := true
		for _, stream := range s.cfg.Streams() {
			cons, err := s.js.Consumer(ctx, stream, s.cfg.Durable(stream))
			if err != nil {
				idle = false // not created yet
				break
			}
			info, err := cons.Info(ctx)
			if err != nil || info.NumPending > 0 || info.NumAckPending > 0 {
				idle = false
				break
			}
		}
		if idle {
			return nil
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return fmt.Errorf("wait for the audit trail to catch up: %w", err)
		}
	}
}

// retain prunes old records every RetentionInterval until ctx is done.
func (s *Service) retain(ctx context.Context) {
	t := time.NewTicker(s.cfg.RetentionInterval)
	defer t.Stop()
	for {
		res, err := s.st.Prune(ctx, store.PruneOptions{Before: time.Now().Add(-s.cfg.Retention)})
		switch {
		case err != nil && ctx.Err() == nil:
			s.log.Error("audit retention", zap.Error(err))
		case res.Pruned > 0:
			s.log.Info("audit retention pruned records into a checkpoint", zap.Int64("pruned", res.Pruned), zap.Int64("checkpoint_seq", res.Checkpoint.Seq))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
