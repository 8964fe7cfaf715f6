package orchestrator

import (
	"fmt"
	"path"
	"time"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// effect is something to publish once a run update is committed.
type effect struct {
	dispatch *event.StepRequested // publish step.requested
	cancel   *event.StepCancel
	done     bool // publish run.completed
}

// planner decides a run's next moves. It is pure: given a run and the time,
// it mutates the run and returns effects; the orchestrator commits and
// publishes them.
type planner struct {
	dispatchTimeout time.Duration
	// prepare resolves a step about to be dispatched; an error fails it.
	prepare func(r *store.Run, i int) (*event.StepRequested, error)
}

func ptr(t time.Time) *time.Time { return &t }

// reconcile advances r as far as it can at now.
func (p *planner) reconcile(r *store.Run, now time.Time) []effect {
	if r.Terminal() {
		return nil
	}
	var fx []effect
	if r.StartedAt == nil {
		r.StartedAt = ptr(now)
		r.Status = event.StatusRunning
	}
	stopAll := func(status, reason string) {
		for _, s := range r.Steps {
			switch s.Status {
			case event.StatusRunning:
				s.Status, s.Error, s.FinishedAt = status, reason, ptr(now)
				fx = append(fx, effect{cancel: &event.StepCancel{RunID: r.ID, StepID: s.ID, Reason: reason}})
			case event.StatusPending:
				if s.QueuedAt != nil {
					s.Status, s.Error, s.FinishedAt = status, reason, ptr(now)
					fx = append(fx, effect{cancel: &event.StepCancel{RunID: r.ID, StepID: s.ID, Reason: reason}})
					continue
				}
				s.Status, s.SkipReason, s.FinishedAt = event.StatusCancelled, reason, ptr(now)
			}
		}
	}
	if r.CancelRequested != "" {
		stopAll(event.StatusCancelled, r.CancelRequested)
		return append(fx, p.finish(r, now, event.StatusCancelled, r.CancelRequested)...)
	}
	if r.Deadline != nil && now.After(*r.Deadline) {
		msg := fmt.Sprintf("run timed out after %s", time.Duration(r.Spec.Timeout))
		stopAll(event.StatusFailed, msg)
		return append(fx, p.finish(r, now, event.StatusFailed, msg)...)
	}
	deps := r.Spec.Deps()
	for changed := true; changed; {
		changed = false
		for i, s := range r.Steps {
			st := &r.Spec.Steps[i]
			switch {
			case s.Status == event.StatusPending && s.QueuedAt != nil:
				if p.dispatchTimeout > 0 && s.QueuedAt != nil && now.Sub(*s.QueuedAt) > p.dispatchTimeout {
					msg := fmt.Sprintf("no %s runner picked up the step within %s: is a runner serving %s %q running?",
						s.Kind, p.dispatchTimeout, targetWord(s.Kind), s.Target)
					p.fail(r, s, st, now, msg)
					fx = append(fx, effect{cancel: &event.StepCancel{RunID: r.ID, StepID: s.ID, Reason: msg}})
					changed = true
				}
			case s.Status == event.StatusRunning:
				if st.Timeout > 0 && s.StartedAt != nil && now.Sub(*s.StartedAt) > time.Duration(st.Timeout)+30*time.Second {
					msg := fmt.Sprintf("step timed out after %s (the runner did not report)", time.Duration(st.Timeout))
					p.fail(r, s, st, now, msg)
					fx = append(fx, effect{cancel: &event.StepCancel{RunID: r.ID, StepID: s.ID, Reason: msg}})
					changed = true
				}
			case s.Status == event.StatusPending:
				// A step ends only after the steps it waits for, so when its
				// direct dependencies are over, all upstream steps are.
				ready := true
				for _, u := range deps[i] {
					if !r.Steps[u].Terminal() {
						ready = false
						break
					}
				}
				if !ready {
					continue
				}
				failedUp := false
				for _, u := range spec.Upstream(deps, i) {
					us := r.Steps[u]
					if (us.Status == event.StatusFailed && !r.Spec.Steps[u].AllowsFailure()) || us.Status == event.StatusCancelled {
						failedUp = true
					}
				}
				if s.NotBefore != nil && now.Before(*s.NotBefore) {
					continue
				}
				when := st.When
				if when == "" {
					when = spec.WhenOnSuccess
				}
				switch {
				case when == spec.WhenOnSuccess && failedUp:
					p.skip(s, now, "an earlier step failed")
					changed = true
					continue
				case when == spec.WhenOnFailure && !failedUp:
					p.skip(s, now, "no earlier step failed (when: on_failure)")
					changed = true
					continue
				}
				if ok, why := conditionsHold(st, r); !ok {
					p.skip(s, now, why)
					changed = true
					continue
				}
				s.Attempts++
				s.NotBefore = nil
				req, err := p.prepare(r, i)
				if err != nil {
					p.fail(r, s, st, now, err.Error())
					changed = true
					continue
				}
				s.QueuedAt = ptr(now)
				fx = append(fx, effect{dispatch: req})
			}
		}
	}
	for _, s := range r.Steps {
		if !s.Terminal() {
			return fx
		}
	}
	status, msg := event.StatusSucceeded, ""
	for i, s := range r.Steps {
		if s.Status == event.StatusFailed && !r.Spec.Steps[i].AllowsFailure() {
			status, msg = event.StatusFailed, fmt.Sprintf("step %q failed", s.Name)
			break
		}
	}
	return append(fx, p.finish(r, now, status, msg)...)
}

func targetWord(kind string) string {
	if kind == event.KindK8s {
		return "cluster"
	}
	return "pool"
}

func (p *planner) finish(r *store.Run, now time.Time, status, msg string) []effect {
	r.Status, r.Error, r.FinishedAt = status, msg, ptr(now)
	return []effect{{done: true}}
}

func (p *planner) skip(s *store.StepState, now time.Time, why string) {
	s.Status, s.SkipReason, s.FinishedAt = event.StatusSkipped, why, ptr(now)
}

// fail ends the current attempt of s; a retry is scheduled when the policy
// allows one.
func (p *planner) fail(r *store.Run, s *store.StepState, st *spec.Step, now time.Time, msg string) {
	s.Error = msg
	s.QueuedAt = nil
	if s.Attempts < st.MaxAttempts() && r.CancelRequested == "" {
		s.Status = event.StatusPending
		s.NotBefore = ptr(now.Add(st.RetryDelay(s.Attempts)))
		return
	}
	s.Status, s.FinishedAt = event.StatusFailed, ptr(now)
}

// conditionsHold evaluates a step's conditions against the run's variables.
func conditionsHold(st *spec.Step, r *store.Run) (bool, string) {
	for _, c := range st.Conditions {
		var ok bool
		switch c.Type {
		case spec.CondBranchEquals:
			ok = r.Vars["git_branch"].Value == c.Value
		case spec.CondBranchMatches:
			ok, _ = path.Match(c.Value, r.Vars["git_branch"].Value)
		case spec.CondEnvEquals:
			name := c.Name
			if name == "" {
				name = "environment"
			}
			ok = r.Vars[name].Value == c.Value
		case spec.CondVariableEquals:
			ok = r.Vars[c.Name].Value == c.Value
		}
		if !ok {
			return false, fmt.Sprintf("condition %s %q not met", c.Type, c.Value)
		}
	}
	return true, ""
}

// nextWake is when r next needs attention without an event, or zero.
func (p *planner) nextWake(r *store.Run) time.Time {
	if r.Terminal() {
		return time.Time{}
	}
	var t time.Time
	consider := func(c time.Time) {
		if !c.IsZero() && (t.IsZero() || c.Before(t)) {
			t = c
		}
	}
	if r.Deadline != nil {
		consider(*r.Deadline)
	}
	for i, s := range r.Steps {
		switch s.Status {
		case event.StatusPending:
			if s.NotBefore != nil {
				consider(*s.NotBefore)
			}
			if p.dispatchTimeout > 0 && s.QueuedAt != nil {
				consider(s.QueuedAt.Add(p.dispatchTimeout + time.Millisecond))
			}
		case event.StatusRunning:
			if to := r.Spec.Steps[i].Timeout; to > 0 && s.StartedAt != nil {
				consider(s.StartedAt.Add(time.Duration(to) + 30*time.Second + time.Millisecond))
			}
		}
	}
	return t
}
