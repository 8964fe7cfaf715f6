package bus

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// backoff is the pause before retry n (0 for the first retry): base
// doubled n times, capped at ceiling, less up to a fifth at random so that
// instances retrying together spread out.
func backoff(n int, base, ceiling time.Duration) time.Duration {
	d := ceiling
	if n < 30 {
		d = min(base<<n, ceiling)
	}
	return d - time.Duration(rand.Int64N(int64(d)/5+1))
}

// sleep waits d or until ctx is done, returning ctx's error then.
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

// transient reports whether a failed JetStream publish may succeed if sent
// again: nobody answered (no stream yet, or a stream without a leader), the
// answer did not come in time, the connection is reconnecting, or the
// server says JetStream is unavailable for now (a 503, as during a leader
// change). A rejected message (too large, a bad subject, a wrong expected
// sequence) or a closed connection is not.
func transient(err error) bool {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, jetstream.ErrNoStreamResponse), errors.Is(err, nats.ErrNoResponders),
		errors.Is(err, nats.ErrTimeout), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, nats.ErrConnectionReconnecting), errors.Is(err, nats.ErrDisconnected):
		return true
	case errors.As(err, &apiErr):
		return apiErr.Code == 503 || apiErr.Code == 408
	}
	return false
}

// Retry calls f until it succeeds, returns a [PermanentError], or ctx ends,
// pausing between tries with a capped exponential backoff (20 ms to 1 s),
// and returns f's last error. It is for writes other than [Publish], which
// retries on its own.
func Retry(ctx context.Context, f func(context.Context) error) error {
	for n := 0; ; n++ {
		err := f(ctx)
		if err == nil || ctx.Err() != nil {
			return err
		}
		var perm *PermanentError
		if errors.As(err, &perm) {
			return err
		}
		if sleep(ctx, backoff(n, 20*time.Millisecond, time.Second)) != nil {
			return err
		}
	}
}
