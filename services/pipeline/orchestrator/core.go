package orchestrator

import (
	"fmt"
	"path"
	"time"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// The orchestrator's decisions are one pure function, [Decide]: from a run's
// state, one input and an [Env] (the time, the catalogue, the runner pools,
// the policy, all in memory) to the run's new state and the [Command]s to
// carry out. It does no I/O; the orchestrator reads the run and what Env
// needs beforehand, and writes the run and carries out the commands
// afterwards, each with a deadline.

// Input is what happened to a run: one of [Tick], [Started], [Completed],
// [AttemptLost], [RequestDead] and [CancelRequested].
type Input interface{ input() }

// Tick is the passage of time: timers, retries, queue limits.
type Tick struct{}

// Started is a runner's step.started.
type Started event.StepStarted

// Completed is a runner's step.completed.
type Completed event.StepCompleted

// AttemptLost says an attempt's lease lapsed with nobody to take it over,
// and the orchestrator fenced it.
type AttemptLost struct {
	StepID  string
	Attempt int
	Runner  string
}

// RequestDead says an attempt's step.requested was dead-lettered.
type RequestDead struct {
	StepID  string
	Attempt int
	Reason  string
}

// CancelRequested asks for the run to stop.
type CancelRequested struct{ Reason string }

// Admitted says the run got one of its pipeline's concurrency slots.
type Admitted struct{}

func (Tick) input()            {}
func (Started) input()         {}
func (Completed) input()       {}
func (AttemptLost) input()     {}
func (RequestDead) input()     {}
func (CancelRequested) input() {}
func (Admitted) input()        {}

// Command is something to carry out once the run's new state is stored.
// Exactly one field is set.
type Command struct {
	// Dispatch publishes a step.requested.
	Dispatch *event.StepRequested
	// Cancel publishes a step.cancel to the runners.
	Cancel *event.StepCancel
	// Fence marks an attempt the run moved past without its completion, so
	// no runner starts or reports it.
	Fence *Fence
	// RunDone publishes run.completed and tells runners the run is over.
	RunDone bool
}

// Fence names an attempt to fence.
type Fence struct {
	StepID  string
	Attempt int
	Reason  string
}

// Policy holds the defaults a decision applies.
type Policy struct {
	// DefaultDockerPool is the pool of docker steps without runs_on.
	DefaultDockerPool string
	// DefaultCluster is the cluster of k8s steps without k8s_cluster.
	DefaultCluster string
	// NoRunnerTimeout fails a queued step once no runner of its pool has
	// been online for that long (default 10m).
	NoRunnerTimeout time.Duration
	// StepTimeout bounds a step without a timeout of its own (default 1h).
	StepTimeout time.Duration
	// RunTimeout bounds a run without a timeout of its own (default 24h).
	RunTimeout time.Duration
	// ReportGrace is how long past a step's timeout the orchestrator waits
	// for its runner's report before failing it itself (default 30s).
	ReportGrace time.Duration
}

func (p *Policy) defaults() {
	if p.DefaultDockerPool == "" {
		p.DefaultDockerPool = "default"
	}
	if p.DefaultCluster == "" {
		p.DefaultCluster = "default"
	}
	if p.NoRunnerTimeout <= 0 {
		p.NoRunnerTimeout = 10 * time.Minute
	}
	if p.StepTimeout <= 0 {
		p.StepTimeout = time.Hour
	}
	if p.RunTimeout <= 0 {
		p.RunTimeout = 24 * time.Hour
	}
	if p.ReportGrace <= 0 {
		p.ReportGrace = 30 * time.Second
	}
}

// Env is everything besides the run that a decision reads.
type Env struct {
	Now     time.Time
	Policy  Policy
	Catalog *store.Catalog
	Pools   runner.Pools
	// Watching is when this orchestrator began following the runner pools:
	// a pool never seen counts as offline since then.
	Watching time.Time
}

// Decide applies in to r (which it changes in place) and advances the run
// as far as it can. It reports whether r changed and what to carry out.
func Decide(r *store.Run, in Input, env Env) (changed bool, cmds []Command) {
	if r.Terminal() {
		return false, nil
	}
	if r.Spec == nil || len(r.Spec.Steps) != len(r.Steps) {
		// Every decision indexes the spec's steps by the run's step
		// states: a run whose stored state lost its spec cannot go on,
		// and it fails rather than stalls.
		n := 0
		if r.Spec != nil {
			n = len(r.Spec.Steps)
		}
		return abortRun(r, env, fmt.Sprintf("internal error: the run has %d step states but its spec %d steps", len(r.Steps), n))
	}
	d := decision{r: r, env: env}
	d.apply(in)
	d.reconcile()
	return d.changed, d.cmds
}

// abortRun fails r, which may be in any state (a decision that panicked
// left it half changed): its queued and running steps fail with msg and
// are cancelled, its pending ones are cancelled, and the run ends.
func abortRun(r *store.Run, env Env, msg string) (changed bool, cmds []Command) {
	steps := make([]*apiv1.StepState, 0, len(r.Steps))
	for _, s := range r.Steps {
		if s != nil {
			steps = append(steps, s)
		}
	}
	r.Steps = steps
	d := decision{r: r, env: env}
	d.stopAll(event.StatusFailed, msg)
	d.finish(event.StatusFailed, msg)
	return d.changed, d.cmds
}

type decision struct {
	r       *store.Run
	env     Env
	changed bool
	cmds    []Command
}

func ptr(t time.Time) *time.Time { return &t }

func (d *decision) apply(in Input) {
	r := d.r
	switch in := in.(type) {
	case Started:
		s := r.Step(in.StepID)
		if s == nil || s.Attempts != in.Attempt || s.Status != event.StatusQueued {
			return
		}
		s.Status, s.StartedAt, s.Runner = event.StatusRunning, ptr(in.StartedAt), in.Runner
		s.QueueSeconds = queueWait(s.QueuedAt, in.StartedAt)
		d.changed = true
	case Completed:
		i, s := d.current(in.StepID, in.Attempt)
		if s == nil {
			return
		}
		if in.Reason == runner.ReasonRunnerLost {
			d.lost(s, in.Runner, in.Error)
			return
		}
		if s.StartedAt == nil {
			s.StartedAt = ptr(in.StartedAt)
			s.QueueSeconds = queueWait(s.QueuedAt, in.StartedAt)
		}
		s.ExitCode, s.Runner, s.Logs = in.ExitCode, in.Runner, apiv1.Logs{Stdout: in.StdoutTail, Stderr: in.StderrTail}
		if s.Outputs == nil {
			s.Outputs = map[string]string{}
		}
		for k, v := range in.Outputs {
			s.Outputs[k] = v
		}
		switch in.Status {
		case event.StatusSucceeded:
			s.Status, s.Error, s.FinishedAt, s.QueuedAt = event.StatusSucceeded, "", ptr(in.FinishedAt), nil
		case event.StatusCancelled:
			s.Status, s.Error, s.FinishedAt, s.QueuedAt = event.StatusCancelled, in.Error, ptr(in.FinishedAt), nil
		default:
			d.fail(s, &r.Spec.Steps[i], in.Error)
		}
		d.changed = true
	case AttemptLost:
		if _, s := d.current(in.StepID, in.Attempt); s != nil {
			d.lost(s, in.Runner, fmt.Sprintf("runner %s stopped renewing its lease on attempt %d and no runner took it over", in.Runner, in.Attempt))
		}
	case RequestDead:
		if i, s := d.current(in.StepID, in.Attempt); s != nil {
			d.fail(s, &r.Spec.Steps[i], "the step request was dead-lettered: "+in.Reason)
			d.changed = true
		}
	case SecretsRefused:
		if i, s := d.current(in.StepID, in.Attempt); s != nil {
			d.fail(s, &r.Spec.Steps[i], "secrets: "+in.Reason)
			d.changed = true
		}
	case CancelRequested:
		if r.CancelRequested == "" {
			r.CancelRequested = in.Reason
			d.changed = true
		}
	case Admitted:
		if !r.Admitted {
			r.Admitted = true
			d.changed = true
		}
	case Approved:
		if r.AwaitingApproval() {
			r.Approval.ApprovedBy, r.Approval.ApprovedAt = in.By, ptr(d.env.Now)
			d.changed = true
		}
	}
}

// current returns the step whose attempt is in flight (queued or running)
// with that number, or nil: events of other attempts are stale.
func (d *decision) current(stepID string, attempt int) (int, *apiv1.StepState) {
	for i, s := range d.r.Steps {
		if s.ID == stepID {
			if s.Attempts == attempt && (s.Status == event.StatusQueued || s.Status == event.StatusRunning) {
				return i, s
			}
			return -1, nil
		}
	}
	return -1, nil
}

// lost ends an attempt whose runner is gone; the next attempt starts at once
// and does not count against the retry policy.
func (d *decision) lost(s *apiv1.StepState, runnerID, msg string) {
	s.History = append(s.History, apiv1.AttemptEnd{Attempt: s.Attempts, Status: event.StatusFailed, Reason: runner.ReasonRunnerLost,
		Runner: runnerID, Error: msg, StartedAt: s.StartedAt, FinishedAt: ptr(d.env.Now)})
	s.LostAttempts++
	s.Status, s.Error, s.QueuedAt, s.StartedAt, s.NotBefore = event.StatusPending, msg, nil, nil, nil
	s.NextReason = runner.ReasonRunnerLost
	d.changed = true
}

// reconcile advances the run as far as it can at env.Now.
func (d *decision) reconcile() {
	r, now := d.r, d.env.Now
	if r.Deadline == nil {
		to := d.env.Policy.RunTimeout
		if r.Spec.Timeout > 0 {
			to = time.Duration(r.Spec.Timeout)
		}
		r.Deadline = ptr(r.CreatedAt.Add(to))
		d.changed = true
	}
	if r.StartedAt == nil && r.CancelRequested == "" && !now.After(*r.Deadline) {
		if r.AwaitingApproval() {
			// Wait for an operator: the run's deadline still runs, so an
			// unapproved run ends by timing out.
			if r.Status != event.StatusQueued {
				r.Status = event.StatusQueued
				d.changed = true
			}
			return
		}
		if r.Spec.Concurrency > 0 && !r.Admitted {
			// Wait for a slot of the pipeline's concurrency limit.
			if r.Status != event.StatusQueued {
				r.Status = event.StatusQueued
				d.changed = true
			}
			return
		}
		r.StartedAt, r.Status = ptr(now), event.StatusRunning
		d.changed = true
	}
	if r.CancelRequested != "" {
		d.stopAll(event.StatusCancelled, r.CancelRequested)
		d.finish(event.StatusCancelled, r.CancelRequested)
		return
	}
	if r.Deadline != nil && now.After(*r.Deadline) {
		msg := fmt.Sprintf("run timed out after %s", r.Deadline.Sub(r.CreatedAt).Round(time.Second))
		d.stopAll(event.StatusFailed, msg)
		d.finish(event.StatusFailed, msg)
		return
	}
	g := graphOf(r.Spec)
	for progress := true; progress; {
		progress = false
		for i, s := range r.Steps {
			st := &r.Spec.Steps[i]
			switch s.Status {
			case event.StatusQueued:
				if msg := d.noRunner(s); msg != "" {
					d.abandon(s, st, msg)
					progress = true
				}
			case event.StatusRunning:
				to := d.stepTimeout(st)
				if s.StartedAt != nil && now.Sub(*s.StartedAt) > to+d.env.Policy.ReportGrace {
					d.abandon(s, st, fmt.Sprintf("step timed out after %s (the runner did not report)", to))
					progress = true
				}
			case event.StatusPending:
				if d.start(i, s, st, g) {
					progress = true
				}
			}
		}
	}
	for _, s := range r.Steps {
		if !s.Terminal() {
			return
		}
	}
	status, msg := event.StatusSucceeded, ""
	for i, s := range r.Steps {
		if s.Status == event.StatusFailed && !r.Spec.Steps[i].AllowsFailure() {
			status, msg = event.StatusFailed, fmt.Sprintf("step %q failed", s.Name)
			break
		}
	}
	d.finish(status, msg)
}

// start dispatches, skips or fails a pending step whose turn may have come,
// and reports whether it did any of these.
func (d *decision) start(i int, s *apiv1.StepState, st *spec.Step, g *graph) bool {
	r, now := d.r, d.env.Now
	// A step ends only after the steps it waits for, so when its direct
	// dependencies are over, all upstream steps are.
	for _, u := range g.deps[i] {
		if !r.Steps[u].Terminal() {
			return false
		}
	}
	failedUp := false
	for _, u := range g.upstream[i] {
		us := r.Steps[u]
		if (us.Status == event.StatusFailed && !r.Spec.Steps[u].AllowsFailure()) || us.Status == event.StatusCancelled {
			failedUp = true
		}
	}
	if s.NotBefore != nil && now.Before(*s.NotBefore) {
		return false
	}
	when := st.When
	if when == "" {
		when = spec.WhenOnSuccess
	}
	switch {
	case when == spec.WhenOnSuccess && failedUp:
		d.skip(s, "an earlier step failed")
		return true
	case when == spec.WhenOnFailure && !failedUp:
		d.skip(s, "no earlier step failed (when: on_failure)")
		return true
	}
	if ok, why := conditionsHold(st, r); !ok {
		d.skip(s, why)
		return true
	}
	s.Attempts++
	s.NotBefore = nil
	d.changed = true
	req, err := Request(r, i, d.env)
	if err != nil {
		d.fail(s, st, err.Error())
		return true
	}
	req.Reason, s.NextReason = s.NextReason, ""
	s.Target, s.Image, s.Namespace, s.ResourceName = req.Target, req.Image, req.Namespace, req.ResourceName
	if req.Tag != "" {
		s.Image = req.Image + ":" + req.Tag
	}
	s.Status, s.QueuedAt, s.StartedAt, s.Runner = event.StatusQueued, ptr(now), nil, ""
	d.cmds = append(d.cmds, Command{Dispatch: req})
	return true
}

func (d *decision) stepTimeout(st *spec.Step) time.Duration {
	if st.Timeout > 0 {
		return time.Duration(st.Timeout)
	}
	return d.env.Policy.StepTimeout
}

// noRunner says why a queued step fails for lack of runners, or "".
func (d *decision) noRunner(s *apiv1.StepState) string {
	if d.env.Pools == nil {
		return ""
	}
	p := d.env.Pools.Pool(s.Kind, s.Target, d.env.Now)
	if p.Online > 0 {
		return ""
	}
	if d.env.Now.Sub(d.lastAlive(p)) < d.env.Policy.NoRunnerTimeout {
		return ""
	}
	return fmt.Sprintf("no runner of %s %s %q has been online for %s: start one (e.g. `%s-runner --%s %s`)",
		s.Kind, targetWord(s.Kind), s.Target, d.env.Policy.NoRunnerTimeout, s.Kind,
		map[string]string{event.KindDocker: "pools", event.KindK8s: "clusters"}[s.Kind], s.Target)
}

// lastAlive is when the pool was last known to have a runner: its last
// heartbeat, or, for a pool never seen, when this orchestrator began
// watching.
func (d *decision) lastAlive(p runner.PoolStatus) time.Time {
	if p.LastSeen.After(d.env.Watching) {
		return p.LastSeen
	}
	return d.env.Watching
}

// abandon ends the in-flight attempt of s without its runner's report: it
// is fenced so no runner starts or reports it, told to stop, and failed
// (or retried).
func (d *decision) abandon(s *apiv1.StepState, st *spec.Step, msg string) {
	d.cmds = append(d.cmds,
		Command{Fence: &Fence{StepID: s.ID, Attempt: s.Attempts, Reason: msg}},
		Command{Cancel: &event.StepCancel{RunID: d.r.ID, StepID: s.ID, Reason: msg}})
	d.fail(s, st, msg)
	d.changed = true
}

func (d *decision) stopAll(status, reason string) {
	now := d.env.Now
	for _, s := range d.r.Steps {
		switch s.Status {
		case event.StatusRunning, event.StatusQueued:
			s.Status, s.Error, s.FinishedAt = status, reason, ptr(now)
			d.cmds = append(d.cmds, Command{Cancel: &event.StepCancel{RunID: d.r.ID, StepID: s.ID, Reason: reason}})
		case event.StatusPending:
			s.Status, s.SkipReason, s.FinishedAt = event.StatusCancelled, reason, ptr(now)
		}
	}
	d.changed = true
}

func targetWord(kind string) string {
	if kind == event.KindK8s {
		return "cluster"
	}
	return "pool"
}

func (d *decision) finish(status, msg string) {
	d.r.Status, d.r.Error, d.r.FinishedAt = status, msg, ptr(d.env.Now)
	d.cmds = append(d.cmds, Command{RunDone: true})
	d.changed = true
}

func (d *decision) skip(s *apiv1.StepState, why string) {
	s.Status, s.SkipReason, s.FinishedAt = event.StatusSkipped, why, ptr(d.env.Now)
	d.changed = true
}

// fail ends the current attempt of s; a retry is scheduled when the policy
// allows one. Attempts lost with their runner do not count.
func (d *decision) fail(s *apiv1.StepState, st *spec.Step, msg string) {
	s.Error = msg
	s.QueuedAt = nil
	if s.Attempts-s.LostAttempts < st.MaxAttempts() && d.r.CancelRequested == "" {
		s.History = append(s.History, apiv1.AttemptEnd{Attempt: s.Attempts, Status: event.StatusFailed, Runner: s.Runner,
			Error: msg, StartedAt: s.StartedAt, FinishedAt: ptr(d.env.Now)})
		s.Status, s.StartedAt = event.StatusPending, nil
		s.NotBefore = ptr(d.env.Now.Add(st.RetryDelay(s.Attempts - s.LostAttempts)))
		return
	}
	s.Status, s.FinishedAt = event.StatusFailed, ptr(d.env.Now)
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

// AdmitRetry is how often a run queued behind its pipeline's concurrency
// limit asks for a slot again.
const AdmitRetry = 5 * time.Second

// NextWake is when r next needs a [Tick] without an event, or zero.
func NextWake(r *store.Run, env Env) time.Time {
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
		consider(r.Deadline.Add(time.Millisecond))
	}
	if r.Status == event.StatusQueued {
		// A queued run asks for a slot again now and then, in case the
		// release that should have admitted it was lost with its process.
		consider(env.Now.Add(AdmitRetry))
	}
	d := decision{r: r, env: env}
	for i, s := range r.Steps {
		switch s.Status {
		case event.StatusPending:
			if s.NotBefore != nil {
				consider(*s.NotBefore)
			}
		case event.StatusQueued:
			if env.Pools != nil {
				// The earliest the pool can have been offline long enough,
				// if no runner of it is heard from again.
				p := env.Pools.Pool(s.Kind, s.Target, env.Now)
				last := d.lastAlive(p)
				if p.Online > 0 {
					last = env.Now
				}
				consider(last.Add(env.Policy.NoRunnerTimeout + time.Millisecond))
			}
		case event.StatusRunning:
			if s.StartedAt != nil {
				consider(s.StartedAt.Add(d.stepTimeout(&r.Spec.Steps[i]) + env.Policy.ReportGrace + time.Millisecond))
			}
		}
	}
	return t
}

// queueWait is how long an attempt dispatched at queued waited for a
// runner to start it, in seconds (0 when unknown).
func queueWait(queued *time.Time, started time.Time) float64 {
	if queued == nil || started.Before(*queued) {
		return 0
	}
	return started.Sub(*queued).Seconds()
}
