package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/topology"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// checkLeases is the backstop of running steps: every LeaseCheck it reads
// the claims of the running steps of the runs this instance tracks. A claim
// that is done gives the completion its runner could not deliver; a lease
// that lapsed more than a LeaseCheck ago, which no runner of the pool took
// over meanwhile, is fenced here and the step gets a new attempt.
func (o *Orchestrator) checkLeases(ctx context.Context) error {
	t := time.NewTicker(o.cfg.LeaseCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			o.mu.Lock()
			ids := make([]string, 0, len(o.wakeAt))
			for id := range o.wakeAt {
				ids = append(ids, id)
			}
			o.mu.Unlock()
			for _, id := range ids {
				if ctx.Err() != nil {
					return nil
				}
				o.checkRunLeases(ctx, id)
			}
		}
	}
}

func (o *Orchestrator) checkRunLeases(ctx context.Context, id string) {
	ictx, cancel := context.WithTimeout(ctx, o.cfg.IOTimeout)
	r, err := o.store.GetRunCached(ictx, id)
	cancel()
	if err != nil || r.Terminal() {
		return
	}
	now := time.Now()
	for _, s := range r.Steps {
		// Running steps, and queued ones a runner may have claimed without
		// its step.started arriving (or whose events were dead-lettered).
		since := s.StartedAt
		if s.Status == event.StatusQueued {
			since = s.QueuedAt
		} else if s.Status != event.StatusRunning {
			continue
		}
		if since == nil || now.Sub(*since) < o.cfg.LeaseCheck {
			continue
		}
		in, err := o.leaseInput(ctx, r.ID, s, now)
		if err != nil {
			o.log.Warn("check lease", zap.String("run_id", r.ID), zap.String("step_id", s.ID), zap.Error(err))
			continue
		}
		if in == nil {
			continue
		}
		if _, err := o.update(ctx, r.ID, in); err != nil && ctx.Err() == nil {
			o.log.Warn("lease backstop update", zap.String("run_id", r.ID), zap.Error(err))
		}
	}
}

// leaseInput reads the claim of s's attempt and says what it means for the
// run, or nil when its runner holds it.
func (o *Orchestrator) leaseInput(ctx context.Context, runID string, s *apiv1.StepState, now time.Time) (Input, error) {
	ctx, cancel := context.WithTimeout(ctx, o.cfg.IOTimeout)
	defer cancel()
	key := runner.AttemptKey(runID, s.ID, s.Attempts)
	c, _, err := runner.ReadClaim(ctx, o.attempts, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil // not claimed: still waiting for a runner's free slot
	}
	if err != nil {
		return nil, err
	}
	switch c.State {
	case runner.ClaimDone:
		if c.Completed != nil {
			return Completed(*c.Completed), nil
		}
		return nil, nil
	case runner.ClaimLost:
		return AttemptLost{StepID: s.ID, Attempt: s.Attempts, Runner: c.Runner}, nil
	case runner.ClaimRunning:
		// Give the pool's runners a LeaseCheck to take it over first: they
		// can clean up after the lost runner on its host.
		fc, err := runner.Fence(ctx, o.attempts, key, "orchestrator", runner.ReasonRunnerLost, now.Add(-o.cfg.LeaseCheck))
		if errors.Is(err, runner.ErrLeaseHeld) {
			if s.Status == event.StatusQueued {
				// Its runner holds it: the step.started was lost.
				return Started{RunID: runID, StepID: s.ID, Attempt: s.Attempts, Runner: c.Runner, StartedAt: now}, nil
			}
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		switch fc.State {
		case runner.ClaimDone:
			if fc.Completed != nil {
				return Completed(*fc.Completed), nil
			}
		case runner.ClaimLost:
			return AttemptLost{StepID: s.ID, Attempt: s.Attempts, Runner: c.Runner}, nil
		}
	}
	return nil, nil
}

// consumeDeadRequests ends the attempts whose step.requested was
// dead-lettered, so the step does not stay queued for ever.
func (o *Orchestrator) consumeDeadRequests(ctx context.Context) error {
	dc := topology.DeadRequestsConsumer()
	cons, err := bus.BindOrCreateConsumer(ctx, o.js, dc.Stream, dc.Config)
	if err != nil {
		return fmt.Errorf("dead requests consumer: %w", err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		if err := o.deadRequest(ctx, m); err != nil {
			o.log.Warn("dead-lettered request", zap.Error(err))
			_ = m.NakWithDelay(time.Second)
			return
		}
		_ = m.Ack()
	})
	if err != nil {
		return fmt.Errorf("consume dead requests: %w", err)
	}
	<-ctx.Done()
	cc.Stop()
	return nil
}

func (o *Orchestrator) deadRequest(ctx context.Context, m jetstream.Msg) error {
	var req event.StepRequested
	if err := json.Unmarshal(m.Data(), &req); err != nil || req.RunID == "" {
		return nil // not a request this service can act on
	}
	reason := m.Headers().Get(bus.HeaderDLQReason)
	_, err := o.update(ctx, req.RunID, RequestDead{StepID: req.StepID, Attempt: req.Attempt, Reason: reason})
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	return err
}
