package orchestrator

import (
	"testing"
	"time"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// TestApprovalHoldsARun drives the decision core: a run held for approval
// stays queued and dispatches nothing, whatever happens, until Approved;
// then it starts; an unapproved run ends at its deadline.
func TestApprovalHoldsARun(t *testing.T) {
	env := func(at time.Duration) Env {
		e := Env{Now: t0.Add(at), Pools: busyPool, Watching: t0}
		e.Policy.defaults()
		return e
	}
	held := func() *store.Run {
		r := newRun(t, twoSteps)
		r.Approval = &apiv1.Approval{Reason: "pull request from fork mallory/app"}
		return r
	}

	r := held()
	changed, cmds := Decide(r, Tick{}, env(0))
	if !changed || r.Status != event.StatusQueued || len(cmds) != 0 || r.StartedAt != nil {
		t.Fatalf("held run: changed %v status %s cmds %v", changed, r.Status, cmds)
	}
	if _, cmds = Decide(r, Admitted{}, env(time.Minute)); len(cmds) != 0 || r.Status != event.StatusQueued {
		t.Fatalf("a concurrency slot started a held run: %s %v", r.Status, cmds)
	}
	if changed, cmds = Decide(r, Tick{}, env(2*time.Minute)); changed || len(cmds) != 0 {
		t.Fatalf("tick on a held run: changed %v cmds %v", changed, cmds)
	}

	changed, cmds = Decide(r, Approved{By: "token ops"}, env(3*time.Minute))
	if !changed || r.Status != event.StatusRunning || len(cmds) != 1 || cmds[0].Dispatch == nil || cmds[0].Dispatch.StepID != "build" {
		t.Fatalf("approved run: changed %v status %s cmds %+v", changed, r.Status, cmds)
	}
	if r.Approval.ApprovedBy != "token ops" || r.Approval.ApprovedAt == nil || !r.Approval.ApprovedAt.Equal(t0.Add(3*time.Minute)) {
		t.Errorf("approval record %+v", r.Approval)
	}
	before := *r.Approval
	if Decide(r, Approved{By: "someone else"}, env(4*time.Minute)); r.Approval.ApprovedBy != before.ApprovedBy {
		t.Errorf("a second approval rewrote the first: %+v", r.Approval)
	}

	r = held()
	Decide(r, Tick{}, env(0))
	if Decide(r, Tick{}, env(25*time.Hour)); r.Status != event.StatusFailed {
		t.Errorf("unapproved run past its deadline is %s, want failed", r.Status)
	}

	r = held()
	Decide(r, Tick{}, env(0))
	if Decide(r, CancelRequested{Reason: "nope"}, env(time.Minute)); r.Status != event.StatusCancelled {
		t.Errorf("cancelled held run is %s", r.Status)
	}
}
