package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/event"
)

// Claim states of an attempt in [AttemptsBucket].
const (
	// ClaimRunning: a runner executes the attempt and renews its lease.
	ClaimRunning = "running"
	// ClaimDone: the attempt ended; Completed holds its completion.
	ClaimDone = "done"
	// ClaimLost: the attempt's lease expired and it was taken over; its
	// runner must neither go on nor report it.
	ClaimLost = "lost"
	// ClaimSuperseded: the orchestrator moved past the attempt before any
	// runner claimed it (a timeout, a cancellation); it must not run.
	ClaimSuperseded = "superseded"
)

// ReasonRunnerLost is the [event.StepCompleted] reason of an attempt whose
// runner stopped renewing its lease. The orchestrator starts a new attempt
// that does not count against the step's retry policy.
const ReasonRunnerLost = "runner_lost"

// Claim is the record of one (run, step, attempt) in [AttemptsBucket]. The
// runner that creates it holds a lease until LeaseUntil and renews it with
// compare-and-swap while it executes; whoever changes the claim's state
// first (the runner completing, another runner or the orchestrator taking
// over an expired lease) wins, so a lost runner learns it lost on its next
// renewal and never reports the attempt.
type Claim struct {
	State      string               `json:"state"`
	Runner     string               `json:"runner"`
	LeaseUntil time.Time            `json:"lease_until,omitzero"`
	Reason     string               `json:"reason,omitempty"`
	Completed  *event.StepCompleted `json:"completed,omitempty"`
}

// AttemptKey is the key of an attempt's claim.
func AttemptKey(runID, stepID string, attempt int) string {
	return event.Token(runID) + "." + event.Token(stepID) + "." + fmt.Sprint(attempt)
}

// ErrLeaseHeld is returned by [Fence] when the attempt's lease has not
// expired: its runner is alive.
var ErrLeaseHeld = errors.New("lease held by a live runner")

// errLeaseLost is the cancellation cause of an attempt whose claim was taken
// over while it ran.
var errLeaseLost = errors.New("lease lost: the attempt was taken over")

// ReadClaim returns the claim stored under key and its revision, or
// jetstream.ErrKeyNotFound.
func ReadClaim(ctx context.Context, kv jetstream.KeyValue, key string) (*Claim, uint64, error) {
	e, err := kv.Get(ctx, key)
	if err != nil {
		return nil, 0, err
	}
	var c Claim
	if err := json.Unmarshal(e.Value(), &c); err != nil {
		return nil, 0, fmt.Errorf("claim %s is corrupt: %w", key, err)
	}
	return &c, e.Revision(), nil
}

// Fence makes sure the attempt under key will neither run nor be reported
// by anyone but the caller: an unclaimed attempt is marked superseded, an
// attempt whose lease expired before now is marked lost (state and reason
// given). It returns the claim as it stands afterwards: a done claim
// carries the attempt's completion, which the caller should use instead.
// An attempt whose lease is still held returns [ErrLeaseHeld].
func Fence(ctx context.Context, kv jetstream.KeyValue, key, by, reason string, now time.Time) (*Claim, error) {
	for try := 0; try < 20; try++ {
		c, rev, err := ReadClaim(ctx, kv, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			nc := &Claim{State: ClaimSuperseded, Runner: by, Reason: reason}
			b, _ := json.Marshal(nc)
			if _, err := kv.Create(ctx, key, b); err == nil {
				return nc, nil
			} else if !errors.Is(err, jetstream.ErrKeyExists) {
				return nil, fmt.Errorf("fence attempt %s: %w", key, err)
			}
			continue // claimed meanwhile: look again
		}
		if err != nil {
			return nil, fmt.Errorf("fence attempt %s: %w", key, err)
		}
		if c.State != ClaimRunning {
			return c, nil
		}
		if c.LeaseUntil.After(now) {
			return c, fmt.Errorf("attempt %s (runner %s, lease until %s): %w", key, c.Runner, c.LeaseUntil.Format(time.RFC3339Nano), ErrLeaseHeld)
		}
		nc := &Claim{State: ClaimLost, Runner: c.Runner, Reason: reason}
		b, _ := json.Marshal(nc)
		if _, err := kv.Update(ctx, key, b, rev); err == nil {
			return nc, nil
		} else if !isWrongRevision(err) {
			return nil, fmt.Errorf("fence attempt %s: %w", key, err)
		}
	}
	return nil, fmt.Errorf("fence attempt %s: too many concurrent changes", key)
}

func isWrongRevision(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// lease is a running attempt's claim, renewed by the executing runner.
type lease struct {
	kv     jetstream.KeyValue
	key    string
	runner string
	d      time.Duration
	rev    uint64
}

// renew extends the lease by d from now. It returns errLeaseLost when the
// claim changed under it.
func (l *lease) renew(ctx context.Context) error {
	b, _ := json.Marshal(Claim{State: ClaimRunning, Runner: l.runner, LeaseUntil: time.Now().Add(l.d)})
	rev, err := l.kv.Update(ctx, l.key, b, l.rev)
	if isWrongRevision(err) {
		// A renewal whose ack was lost may have moved the revision: the
		// claim is still ours if it is running under our name.
		cur, crev, rerr := ReadClaim(ctx, l.kv, l.key)
		if rerr == nil && (cur.State != ClaimRunning || cur.Runner != l.runner) {
			return errLeaseLost
		}
		if rerr != nil {
			return fmt.Errorf("renew lease of %s: %w", l.key, rerr)
		}
		l.rev = crev
		return nil
	}
	if err != nil {
		return fmt.Errorf("renew lease of %s: %w", l.key, err)
	}
	l.rev = rev
	return nil
}

// complete records c in the claim. It returns errLeaseLost when the claim
// was taken over, in which case c must not be published.
func (l *lease) complete(ctx context.Context, c *event.StepCompleted) error {
	b, _ := json.Marshal(Claim{State: ClaimDone, Runner: l.runner, Completed: c})
	var err error
	for try := 0; try < 5; try++ {
		var rev uint64
		rev, err = l.kv.Update(ctx, l.key, b, l.rev)
		if isWrongRevision(err) {
			// A renewal whose ack was lost may have moved the revision:
			// it is still ours if the claim is running under our name.
			cur, crev, rerr := ReadClaim(ctx, l.kv, l.key)
			if rerr != nil || cur.State != ClaimRunning || cur.Runner != l.runner {
				return errLeaseLost
			}
			l.rev = crev
			continue
		}
		if err == nil {
			l.rev = rev
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(try+1) * 100 * time.Millisecond):
		}
	}
	return fmt.Errorf("record completion of %s: %w", l.key, err)
}
