package bus

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/event"
)

// Dead-letter headers added to a message copied to the DLQ stream.
const (
	// HeaderDLQReason says why the message was dead-lettered.
	HeaderDLQReason = "Ansflow-Dlq-Reason"
	// HeaderDLQStream is the stream the message came from.
	HeaderDLQStream = "Ansflow-Dlq-Stream"
	// HeaderDLQSubject is the subject the message was published on.
	HeaderDLQSubject = "Ansflow-Dlq-Subject"
	// HeaderDLQDeliveries is how often the message had been delivered.
	HeaderDLQDeliveries = "Ansflow-Dlq-Deliveries"
	// HeaderDLQSequence is the message's sequence in its stream.
	HeaderDLQSequence = "Ansflow-Dlq-Sequence"
	// HeaderDLQConsumer is the durable consumer that gave up on it.
	HeaderDLQConsumer = "Ansflow-Dlq-Consumer"
	// HeaderDLQBodyDropped is set, to the original body's size and the
	// reason, when the body could not be kept (the copy was too large for
	// the server); the headers still are.
	HeaderDLQBodyDropped = "Ansflow-Dlq-Body-Dropped"
)

// deadLetter is one message on its way to the dead-letter stream.
type deadLetter struct {
	c          *consumer
	msg        jetstream.Msg
	hb         *heartbeat
	deliveries int
	seq        uint64
}

// send copies the message to the dead-letter stream and then terminates
// it. The copy's Nats-Msg-Id names the consumer and the stream sequence, so
// a message dead-lettered twice (by an instance that died between the copy
// and the term, say) is stored once. A failed copy is retried with backoff
// for as long as ctx lasts, with the message kept by its heartbeats; if ctx
// ends first the message is nak'd, and since the server's MaxDeliver is
// unlimited, its next delivery dead-letters it again. It is never
// terminated before its copy is stored.
func (d deadLetter) send(ctx context.Context, reason string) {
	cfg, msg := d.c.cfg, d.msg
	out := nats.NewMsg(event.DLQSubject(cfg.Stream))
	for k, v := range msg.Headers() {
		if k != event.HeaderMsgID {
			out.Header[k] = v
		}
	}
	out.Header.Set(HeaderDLQReason, truncate(reason, 1024))
	out.Header.Set(HeaderDLQStream, cfg.Stream)
	out.Header.Set(HeaderDLQSubject, msg.Subject())
	out.Header.Set(HeaderDLQDeliveries, strconv.Itoa(d.deliveries))
	out.Header.Set(HeaderDLQConsumer, cfg.Durable)
	if d.seq > 0 {
		out.Header.Set(HeaderDLQSequence, strconv.FormatUint(d.seq, 10))
		out.Header.Set(event.HeaderMsgID, fmt.Sprintf("dlq:%s:%s:%d", cfg.Stream, cfg.Durable, d.seq))
	}
	out.Data = msg.Data()
	log := d.c.log.With(zap.String("subject", msg.Subject()), zap.Uint64("stream_seq", d.seq))

	failures := 0
	retryable := func(err error) bool {
		if tooLarge(err) && out.Data != nil {
			return false // dropped below, then sent again
		}
		// Anything else is retried, permanent or not: the message must
		// not be lost, and an operator can fix what is wrong while it is
		// held.
		if failures%20 == 0 {
			log.Error("dead-letter publish failed; retrying while the message is held", zap.Int("failures", failures+1), zap.Error(err))
		}
		failures++
		return true
	}
	err := publishMsg(ctx, d.c.js, out, retryable)
	if err != nil && tooLarge(err) && ctx.Err() == nil {
		log.Warn("dead letter too large for the server; keeping its headers only", zap.Int("bytes", len(out.Data)), zap.Error(err))
		out.Header.Set(HeaderDLQBodyDropped, truncate(fmt.Sprintf("%d bytes: %v", len(out.Data), err), 512))
		out.Data = nil
		err = publishMsg(ctx, d.c.js, out, retryable)
	}
	d.hb.stop()
	if err != nil {
		// ctx ended first: the next delivery, here or elsewhere, tries
		// again.
		log.Error("dead-letter publish gave up at shutdown; the message is nak'd for redelivery", zap.Error(err))
		_ = msg.Nak()
		return
	}
	d.c.cfg.Metrics.DeadLettered(cfg.Stream)
	if err := msg.TermWithReason(truncate(reason, 200)); err != nil {
		log.Warn("term failed; the message will be redelivered and dead-lettered again, deduplicated", zap.Error(err))
	}
}

// tooLarge reports whether a publish failed because the message is larger
// than the server or the stream accepts.
func tooLarge(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, nats.ErrMaxPayload) ||
		errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
