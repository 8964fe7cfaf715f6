package orchestrator

import (
	"context"
	"fmt"

	"github.com/ansflow/ansflow/services/pipeline/store"
)

// WaitingApproval is the Waiting of a run held for an operator's approval
// (a pull request from a fork).
const WaitingApproval = "approval"

// Approved says an operator approved a run held for approval.
type Approved struct{ By string }

func (Approved) input() {}

// Approve lets a run held for approval ([TriggerRequest].Approval) start,
// recording by as the approver. It returns an error wrapping [ErrFinished]
// for a run that is over and [ErrInvalid] for one that is not waiting for
// approval; approving twice is such an error too, so the answer says who
// approved first.
func (o *Orchestrator) Approve(ctx context.Context, id, by string) (*store.Run, error) {
	r, err := o.store.GetRun(ctx, id)
	if err != nil {
		return nil, err
	}
	if r.Terminal() {
		return r, fmt.Errorf("%w: run %s is %s", ErrFinished, id, r.Status)
	}
	if r.Approval == nil {
		return r, fmt.Errorf("%w: run %s does not need approval", ErrInvalid, id)
	}
	if !r.AwaitingApproval() {
		return r, fmt.Errorf("%w: run %s was already approved by %s", ErrInvalid, id, r.Approval.ApprovedBy)
	}
	r, err = o.update(ctx, id, Approved{By: by})
	if err != nil {
		return nil, err
	}
	// a pipeline with a concurrency limit admits the run now it may start
	if r.Spec != nil && r.Spec.Concurrency > 0 {
		o.admit(ctx, r.Pipeline)
	}
	return r, nil
}
