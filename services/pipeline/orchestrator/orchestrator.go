// Package orchestrator owns pipeline runs: it creates them, decides which
// steps are due (order, needs, conditions, retries, timeouts, cancellation,
// the runner queue), resolves their templates at dispatch, publishes
// step.requested, and folds step.started and step.completed back into the
// run.
//
// Every decision is made by [Decide], a pure function of the run, one input
// and an in-memory [Env]; this package's Orchestrator reads the run, calls
// it, stores the result with compare-and-swap and carries out the commands,
// each with a deadline. All run state lives in the runs bucket, so any
// number of orchestrators may serve the same runs and a restarted one
// continues every run. Step requests carry deterministic event ids, so a
// request republished after a crash is dropped by JetStream's
// deduplication, and runners claim each (run, step, attempt) once, under a
// lease.
package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/metrics"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/source"
	"github.com/ansflow/ansflow/pkg/tmpl"
	"github.com/ansflow/ansflow/pkg/topology"
	"github.com/ansflow/ansflow/pkg/tracing"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// Source is the CloudEvents source of the pipeline service's events.
const Source = "ansflow/pipeline"

// Config configures an [Orchestrator].
type Config struct {
	// Policy holds the decision defaults: pools, timeouts, the queue's
	// no-runner limit.
	Policy Policy
	// Concurrency bounds lifecycle events handled at once (default 64).
	Concurrency int
	// LeaseCheck is how often the claims of running steps are checked for
	// lapsed leases nobody took over (default 15s).
	LeaseCheck time.Duration
	// IOTimeout bounds each store read or write and each publish (default
	// 10s); transient failures are retried within it.
	IOTimeout time.Duration
	// Replicas of the buckets the orchestrator creates (default 1).
	Replicas int
	// PoolKeys pins the secrets public keys of runner pools, by
	// [PoolKeyID] ("docker/default"): a pool listed here gets its steps'
	// secrets sealed to these keys only, whatever its runners announce.
	PoolKeys map[string][]string
	// Clone is the policy for the repositories the pipeline service reads
	// itself: resolving a run's branch or tag to its commit and reading a
	// from_repository pipeline's file (file:// only with AllowLocal).
	Clone source.CloneOptions
	// Metrics records runs started and finished, run durations, the
	// orchestration latency, the pools' queued steps, runners and slots,
	// and the lifecycle consumer's redeliveries and dead letters; nil
	// records nothing.
	Metrics *metrics.Metrics
}

// PoolKeyID names a pool in [Config.PoolKeys]: "KIND/TARGET".
func PoolKeyID(kind, target string) string { return kind + "/" + target }

// ErrInvalid is wrapped by errors caused by the caller's input.
var ErrInvalid = errors.New("invalid request")

// ErrFinished is returned when cancelling a run that is already over.
var ErrFinished = errors.New("run already finished")

// Orchestrator drives runs. Create it with [New] and serve it with Run.
type Orchestrator struct {
	cfg      Config
	js       jetstream.JetStream
	store    *store.Store
	log      *zap.Logger
	attempts jetstream.KeyValue
	cancels  jetstream.KeyValue
	slots    jetstream.KeyValue
	pools    atomic.Pointer[runner.Directory]
	watching time.Time

	mu       sync.Mutex
	wakeAt   map[string]wake
	runLocks map[string]*runLock
	// unpublished holds step requests whose publish failed within the I/O
	// deadline, by attempt key, until a later try stores them or they are
	// no longer current.
	unpublished map[string]*event.StepRequested

	fold folder
	// queue counts queued steps per pool over every run, for the metrics.
	queue queueDepth

	secrets SecretStore
}

// New returns an orchestrator over st, creating the buckets it shares with
// runners.
func New(ctx context.Context, cfg Config, js jetstream.JetStream, st *store.Store, log *zap.Logger) (*Orchestrator, error) {
	cfg.Policy.defaults()
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 64
	}
	if cfg.LeaseCheck <= 0 {
		cfg.LeaseCheck = 15 * time.Second
	}
	if cfg.IOTimeout <= 0 {
		cfg.IOTimeout = 10 * time.Second
	}
	o := &Orchestrator{cfg: cfg, js: js, store: st, log: log, wakeAt: map[string]wake{}, runLocks: map[string]*runLock{},
		unpublished: map[string]*event.StepRequested{},
		fold:        folder{waiting: map[string]chan struct{}{}}, watching: time.Now().UTC()}
	var err error
	if o.attempts, err = bus.EnsureKeyValue(ctx, js, topology.MustBucket(runner.AttemptsBucket, cfg.Replicas)); err != nil {
		return nil, fmt.Errorf("attempts bucket: %w", err)
	}
	if o.cancels, err = bus.EnsureKeyValue(ctx, js, topology.MustBucket(runner.CancelsBucket, cfg.Replicas)); err != nil {
		return nil, fmt.Errorf("cancels bucket: %w", err)
	}
	if o.slots, err = bus.EnsureKeyValue(ctx, js, topology.MustBucket(SlotsBucket, cfg.Replicas)); err != nil {
		return nil, fmt.Errorf("slots bucket: %w", err)
	}
	if _, err = bus.EnsureKeyValue(ctx, js, topology.MustBucket(runner.RunnersBucket, cfg.Replicas)); err != nil {
		return nil, fmt.Errorf("runners bucket: %w", err)
	}
	return o, nil
}

// env is the in-memory world a decision reads, as of now.
func (o *Orchestrator) env() Env {
	e := Env{Now: time.Now().UTC(), Policy: o.cfg.Policy, Catalog: o.store.Catalog(), Watching: o.watching}
	if d := o.pools.Load(); d != nil {
		e.Pools = d
	}
	return e
}

// Runners lists the runners the runners bucket knows, or nil before Run
// began watching it.
func (o *Orchestrator) Runners() []runner.RunnerInfo {
	if d := o.pools.Load(); d != nil {
		return d.Runners()
	}
	return nil
}

// Resolved returns the request step id of run r was dispatched with (for
// its current attempt): every template resolved from the run's variables
// and the outputs of the steps before it, the registry and cluster from
// the catalogue, as a runner receives it but without the sealed secrets,
// which are added only when it is published.
func (o *Orchestrator) Resolved(r *store.Run, id string) (*event.StepRequested, error) {
	if r.Spec == nil {
		return nil, fmt.Errorf("run %s has no pipeline spec", r.ID)
	}
	i := r.Spec.StepIndex(id)
	if i < 0 || i >= len(r.Steps) {
		return nil, fmt.Errorf("run %s has no step %q", r.ID, id)
	}
	return Request(r, i, o.env())
}

// Annotate fills in why r, or each of its queued steps, is still waiting.
func (o *Orchestrator) Annotate(r *store.Run) {
	if r.Status == event.StatusQueued && r.AwaitingApproval() {
		r.Waiting = WaitingApproval
	} else if r.Status == event.StatusQueued && r.Spec != nil && r.Spec.Concurrency > 0 {
		r.Waiting = fmt.Sprintf("waiting for one of the %d concurrency slots of pipeline %q", r.Spec.Concurrency, r.Pipeline)
	}
	d := o.pools.Load()
	if d == nil {
		return
	}
	now := time.Now()
	for _, s := range r.Steps {
		if s.Status == event.StatusQueued {
			s.Waiting = d.Pool(s.Kind, s.Target, now).Reason()
		}
	}
}

// Run consumes lifecycle events, watches runs and runners, and fires timers
// until ctx is done.
func (o *Orchestrator) Run(ctx context.Context) error {
	kv, err := o.js.KeyValue(ctx, runner.RunnersBucket)
	if err != nil {
		return fmt.Errorf("runners bucket: %w", err)
	}
	dir, err := runner.WatchRunners(ctx, kv)
	if err != nil {
		return err
	}
	o.pools.Store(dir)
	o.cfg.Metrics.SetPoolSource(o.poolStats)
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		cc := bus.ConsumerConfig{
			Stream:  event.StreamEvents,
			Durable: topology.DurableOrchestrator,
			FilterSubjects: []string{
				"ansflow.events.step.started.*",
				"ansflow.events.step.completed.*",
			},
			Concurrency: o.cfg.Concurrency,
			MaxDeliver:  10,
			RetryDelay:  100 * time.Millisecond,
			Metrics:     o.cfg.Metrics,
		}
		return bus.Consume(ctx, o.js, cc, bus.Chain(o.handle, bus.KnownTypes()), o.log)
	})
	g.Go(func() error { return o.consumeDeadRequests(ctx) })
	g.Go(func() error { return o.watch(ctx) })
	g.Go(func() error { return o.sweep(ctx) })
	g.Go(func() error { return o.checkLeases(ctx) })
	g.Go(func() error { return o.republish(ctx) })
	return g.Wait()
}

// TriggerRequest asks for a new run.
type TriggerRequest struct {
	Pipeline string
	// Vars override declared pipeline variables; they are trusted.
	Vars map[string]string
	Git  GitInfo
	// Source is the uploaded tree or repository the runners build.
	Source  *apiv1.Source
	Trigger apiv1.Trigger
	// Approval, when set, holds the run queued until [Orchestrator.Approve].
	Approval *apiv1.Approval
	// RunID, when set, is the new run's id. A trigger that must happen at
	// most once (a webhook delivery, a cron minute) derives it from what
	// identifies the firing, so a retry after a failure creates the run and
	// a retry after a success finds it: Trigger then returns the existing
	// run with an error wrapping [ErrRunExists].
	RunID string
}

// ErrRunExists is wrapped by [Orchestrator.Trigger] when a run with the
// requested RunID already exists; the existing run is returned with it.
var ErrRunExists = errors.New("run already exists")

// GitInfo is what a trigger knows about the commit.
type GitInfo struct {
	Commit, Branch, Tag, RepoURL, Author, Message string
	// Untrusted marks values from a webhook payload.
	Untrusted bool
}

// Trigger creates a run of the latest version of a stored pipeline and
// dispatches its first steps.
//
// The run is created in a "run.trigger" span, child of ctx's (the webhook
// delivery, API request or cron firing), whose trace context the run keeps.
func (o *Orchestrator) Trigger(ctx context.Context, req TriggerRequest) (_ *store.Run, err error) {
	ctx, span := tracing.StartSpan(ctx, "run.trigger", trace.SpanKindInternal,
		attribute.String("ansflow.pipeline", req.Pipeline), attribute.String("ansflow.trigger.kind", req.Trigger.Kind))
	defer func() { tracing.RecordError(span, err); span.End() }()
	if req.RunID != "" {
		if r, err := o.store.GetRun(ctx, req.RunID); err == nil {
			return r, fmt.Errorf("%w: %s", ErrRunExists, req.RunID)
		} else if !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
	}
	rec, err := o.store.GetPipeline(ctx, req.Pipeline)
	if err != nil {
		return nil, err
	}
	g := req.Git
	if req.Source == nil {
		if g.RepoURL == "" {
			g.RepoURL = rec.Spec.Repository
		}
		if g.RepoURL != "" {
			if err := o.resolveCommit(ctx, &g); err != nil {
				return nil, err
			}
			req.Source = &apiv1.Source{RepoURL: g.RepoURL, Commit: g.Commit}
		}
	}
	pipelineSpec, specErr := rec.Spec, error(nil)
	if rec.Spec.FromRepository {
		if pipelineSpec, specErr = o.repositorySpec(ctx, rec.Spec, req.Source); specErr != nil {
			pipelineSpec = rec.Spec // the run fails before any step
		}
	}
	vars := map[string]apiv1.Var{}
	for _, declared := range []map[string]string{rec.Spec.Variables, pipelineSpec.Variables} {
		for k, v := range declared {
			vars[k] = apiv1.Var{Value: v}
		}
	}
	for k, v := range req.Vars {
		if _, ok := vars[k]; !ok {
			return nil, fmt.Errorf("%w: variable %q is not declared under pipeline.variables of %q", ErrInvalid, k, rec.Name)
		}
		vars[k] = apiv1.Var{Value: v}
	}
	for k, v := range map[string]string{"git_commit": g.Commit, "git_branch": g.Branch, "git_tag": g.Tag,
		"git_repo_url": g.RepoURL, "git_author": g.Author, "git_message": g.Message} {
		vars[k] = apiv1.Var{Value: v, Untrusted: g.Untrusted && v != ""}
	}
	n, err := o.store.NextBuildNumber(ctx, rec.Name)
	if err != nil {
		return nil, err
	}
	id := req.RunID
	if id == "" {
		u, err := uuid.NewV7()
		if err != nil {
			return nil, fmt.Errorf("run id: %w", err)
		}
		id = u.String()
	}
	now := time.Now().UTC()
	r := &store.Run{Run: apiv1.Run{ID: id, Pipeline: rec.Name, PipelineVersion: rec.Version, BuildNumber: n,
		Status: event.StatusPending, CreatedAt: now, Trigger: req.Trigger, Vars: vars, Spec: pipelineSpec, Source: req.Source, Approval: req.Approval}}
	r.Vars["build_number"] = apiv1.Var{Value: fmt.Sprint(n)}
	r.Vars["run_id"] = apiv1.Var{Value: r.ID}
	r.Vars["pipeline_name"] = apiv1.Var{Value: rec.Name}
	r.Trace = tracing.TraceParent(ctx)
	if span.IsRecording() {
		span.SetAttributes(attribute.String("ansflow.run.id", r.ID), attribute.Int("ansflow.build_number", n))
	}
	if specErr != nil {
		// The run exists, failed, with the file's errors: the user sees
		// them where they look for the run (runs get, the UI, the forge).
		return r, o.startFailed(ctx, r, specErr)
	}
	if pipelineSpec.Timeout > 0 {
		r.Deadline = ptr(now.Add(time.Duration(pipelineSpec.Timeout)))
	}
	for i := range pipelineSpec.Steps {
		st := &pipelineSpec.Steps[i]
		r.Steps = append(r.Steps, &apiv1.StepState{Name: st.Name, ID: st.ID(), Type: st.Type, Status: event.StatusPending,
			Kind: st.Kind(), Outputs: map[string]string{}})
	}
	if err := o.checkSecrets(ctx, r); err != nil {
		return nil, err
	}
	return r, o.start(ctx, r)
}

// Rerun starts a new run of a finished, unsuccessful run that keeps the
// steps that succeeded and runs the others again, from the failed ones on.
func (o *Orchestrator) Rerun(ctx context.Context, id string, trig apiv1.Trigger) (*store.Run, error) {
	return o.rerun(ctx, id, trig, false)
}

// RerunAll starts a new run of a finished run's pipeline version with its
// variables and source in which every step runs again, whatever its
// status was (a succeeded run too).
func (o *Orchestrator) RerunAll(ctx context.Context, id string, trig apiv1.Trigger) (*store.Run, error) {
	return o.rerun(ctx, id, trig, true)
}

func (o *Orchestrator) rerun(ctx context.Context, id string, trig apiv1.Trigger, all bool) (_ *store.Run, err error) {
	ctx, span := tracing.StartSpan(ctx, "run.trigger", trace.SpanKindInternal,
		attribute.String("ansflow.rerun_of", id), attribute.String("ansflow.trigger.kind", trig.Kind))
	defer func() { tracing.RecordError(span, err); span.End() }()
	old, err := o.store.GetRun(ctx, id)
	if err != nil {
		return nil, err
	}
	if !old.Terminal() {
		return nil, fmt.Errorf("%w: run %s is %s; only a finished run can be re-run", ErrInvalid, id, old.Status)
	}
	if len(old.Steps) == 0 {
		// A run that failed before any step (a from_repository file that
		// does not parse, a missing file) has nothing to run again: its
		// re-run would "succeed" with no step.
		return nil, fmt.Errorf("%w: run %s failed before any step (%s); fix that and trigger a new run", ErrInvalid, id, old.Error)
	}
	if !all && old.Status == event.StatusSucceeded {
		return nil, fmt.Errorf("%w: run %s succeeded, so it has no failed step to re-run from; re-run all of it instead", ErrInvalid, id)
	}
	n, err := o.store.NextBuildNumber(ctx, old.Pipeline)
	if err != nil {
		return nil, err
	}
	nid, err := uuid.NewV7()
	if err != nil {
		return nil, fmt.Errorf("run id: %w", err)
	}
	now := time.Now().UTC()
	r := *old
	r.ID, r.BuildNumber, r.Status, r.Error, r.RerunOf = nid.String(), n, event.StatusPending, "", old.ID
	r.Trace = tracing.TraceParent(ctx)
	// A re-run builds what its original built, so it keeps what the forge
	// said of it: a fork's run stays a fork's (no secret its filters do not
	// allow forks), and its commit statuses go to the same commit.
	trig.Provider, trig.Event, trig.Fork, trig.Repo = old.Trigger.Provider, old.Trigger.Event, old.Trigger.Fork, old.Trigger.Repo
	r.CreatedAt, r.StartedAt, r.FinishedAt, r.CancelRequested, r.Trigger = now, nil, nil, "", trig
	r.Admitted, r.Deadline = false, nil
	r.Vars = map[string]apiv1.Var{}
	for k, v := range old.Vars {
		r.Vars[k] = v
	}
	r.Vars["build_number"] = apiv1.Var{Value: fmt.Sprint(n)}
	r.Vars["run_id"] = apiv1.Var{Value: r.ID}
	if r.Spec.Timeout > 0 {
		r.Deadline = ptr(now.Add(time.Duration(r.Spec.Timeout)))
	}
	r.Steps = nil
	for _, s := range old.Steps {
		c := *s
		if all || c.Status != event.StatusSucceeded {
			c = apiv1.StepState{Name: s.Name, ID: s.ID, Type: s.Type, Kind: s.Kind, Status: event.StatusPending, Outputs: map[string]string{}}
		}
		r.Steps = append(r.Steps, &c)
	}
	return &r, o.start(ctx, &r)
}

func (o *Orchestrator) start(ctx context.Context, r *store.Run) error {
	_, cmds := o.decide(r, Tick{})
	ictx, cancel := context.WithTimeout(ctx, o.cfg.IOTimeout)
	defer cancel()
	if err := o.store.CreateRun(ictx, r); errors.Is(err, store.ErrExists) {
		return fmt.Errorf("%w: %s", ErrRunExists, r.ID)
	} else if err != nil {
		return err
	}
	o.cfg.Metrics.RunStarted(r.Pipeline)
	o.queue.observe(r, o.cfg.Policy)
	o.publish(ctx, event.TypeRunCreated, event.Meta{RunID: r.ID}, "created-"+r.ID, event.RunCreated{RunID: r.ID,
		Pipeline: r.Pipeline, Version: r.PipelineVersion, BuildNumber: r.BuildNumber, Trigger: r.Trigger.Kind, Actor: r.Trigger.Actor})
	o.carryOut(ctx, r, cmds, time.Time{})
	if r.Spec.CancelPrevious {
		o.cancelPrevious(ctx, r)
	}
	if r.Status == event.StatusQueued {
		o.admit(ctx, r.Pipeline)
		if nr, err := o.store.GetRun(ctx, r.ID); err == nil {
			*r = *nr
		}
	}
	return nil
}

// Cancel asks for a run to stop: in-flight steps are told to stop and the
// rest will not start.
func (o *Orchestrator) Cancel(ctx context.Context, id, reason string) (*store.Run, error) {
	if reason == "" {
		reason = "cancelled by request"
	}
	if r, err := o.store.GetRun(ctx, id); err != nil {
		return nil, err
	} else if r.Terminal() {
		return r, fmt.Errorf("%w: run %s is %s", ErrFinished, id, r.Status)
	}
	o.markStopped(ctx, id, "cancelled: "+reason)
	return o.update(ctx, id, CancelRequested{Reason: reason})
}

// markStopped tells runners that run id is over, so they drop its requests.
func (o *Orchestrator) markStopped(ctx context.Context, id, why string) {
	ctx, cancel := context.WithTimeout(ctx, o.cfg.IOTimeout)
	defer cancel()
	if err := bus.Retry(ctx, func(ctx context.Context) error {
		_, err := o.cancels.Put(ctx, event.Token(id), []byte(why))
		return err
	}); err != nil {
		o.log.Warn("mark run stopped for runners", zap.String("run_id", id), zap.Error(err))
	}
}

func (o *Orchestrator) handle(ctx context.Context, e cloudevents.Event) error {
	switch e.Type() {
	case event.TypeStepStarted:
		var d event.StepStarted
		if err := event.DecodeData(e, &d); err != nil {
			return bus.Permanent(err)
		}
		if o.fold.started(ctx, attemptID(d.RunID, d.StepID, d.Attempt)) {
			return nil // the completion records the start
		}
		_, err := o.update(ctx, d.RunID, Started(d))
		return notFoundIsPermanent(err)
	case event.TypeStepCompleted:
		var d event.StepCompleted
		if err := event.DecodeData(e, &d); err != nil {
			return bus.Permanent(err)
		}
		received := time.Now()
		o.fold.completing(attemptID(d.RunID, d.StepID, d.Attempt))
		_, err := o.updateAt(ctx, d.RunID, Completed(d), received)
		return notFoundIsPermanent(err)
	}
	return nil
}

func notFoundIsPermanent(err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return bus.Permanent(err)
	}
	return err
}

// decide is [Decide] for this orchestrator's environment, except that a
// decision that panics (a bug) fails the run with the panic as its error
// and logs the stack, the way Argo's controller ends a workflow it cannot
// operate on: the service keeps serving its other runs, and the run is
// not retried into the same panic by every instance after every restart.
func (o *Orchestrator) decide(r *store.Run, in Input) (changed bool, cmds []Command) {
	env := o.env()
	return decideRecovering(r, in, env, func(p any, stack []byte) {
		o.log.Error("deciding a run panicked; the run fails", zap.String("run_id", r.ID),
			zap.String("panic", fmt.Sprint(p)), zap.ByteString("stack", stack))
	})
}

func decideRecovering(r *store.Run, in Input, env Env, report func(p any, stack []byte)) (changed bool, cmds []Command) {
	defer func() {
		if p := recover(); p != nil {
			report(p, debug.Stack())
			changed, cmds = abortRun(r, env, fmt.Sprintf("internal error deciding the run: %v", p))
		}
	}()
	return Decide(r, in, env)
}

// update reads the run, lets [Decide] apply in, stores the result with
// compare-and-swap (retrying on concurrent changes) and carries out the
// commands. Every read and write has a deadline.
func (o *Orchestrator) update(ctx context.Context, id string, in Input) (*store.Run, error) {
	return o.updateAt(ctx, id, in, time.Time{})
}

// updateAt is update for an input received at received (a completion),
// from when the orchestration latency of the requests it makes due is
// measured; zero measures none.
func (o *Orchestrator) updateAt(ctx context.Context, id string, in Input, received time.Time) (*store.Run, error) {
	unlock := o.lockRun(id)
	defer unlock()
	for try := 0; ; try++ {
		get := o.store.GetRunCached
		if try > 0 {
			get = o.store.GetRun
		}
		ictx, cancel := context.WithTimeout(ctx, o.cfg.IOTimeout)
		r, err := get(ictx, id)
		cancel()
		if err != nil {
			return nil, err
		}
		changed, cmds := o.decide(r, in)
		if !changed {
			if _, tick := in.(Tick); try == 0 && !tick {
				continue // decide nothing on a possibly stale cached copy
			}
			o.queue.observe(r, o.cfg.Policy)
			o.setWake(r)
			return r, nil
		}
		ictx, cancel = context.WithTimeout(ctx, o.cfg.IOTimeout)
		err = o.store.UpdateRun(ictx, r)
		cancel()
		if errors.Is(err, store.ErrConflict) && try < 100 {
			continue
		}
		if err != nil {
			return nil, err
		}
		o.queue.observe(r, o.cfg.Policy)
		o.carryOut(ctx, r, cmds, received)
		return r, nil
	}
}

// carryOut executes the commands of a committed decision and re-arms the
// run's timer. A decision on a completion received at received (non-zero)
// records the orchestration latency of each request it publishes.
//
// The events it publishes join the run's trace (r.Trace).
func (o *Orchestrator) carryOut(ctx context.Context, r *store.Run, cmds []Command, received time.Time) {
	ctx = tracing.WithTraceParent(ctx, r.Trace)
	for _, c := range cmds {
		switch {
		case c.Dispatch != nil:
			if o.dispatch(ctx, r, c.Dispatch) && !received.IsZero() {
				o.cfg.Metrics.Orchestrated(time.Since(received))
			}
		case c.Cancel != nil:
			o.publish(ctx, event.TypeStepCancel, event.Meta{RunID: r.ID, StepID: c.Cancel.StepID}, "", c.Cancel)
		case c.Fence != nil:
			o.fence(ctx, r.ID, c.Fence)
		case c.RunDone:
			o.runFinished(r)
			o.publish(ctx, event.TypeRunCompleted, event.Meta{RunID: r.ID}, "completed-"+r.ID, event.RunCompleted{
				RunID: r.ID, Pipeline: r.Pipeline, Status: r.Status, Error: r.Error, FinishedAt: *r.FinishedAt})
			o.markStopped(ctx, r.ID, r.Status)
			if r.Spec.Concurrency > 0 {
				// Free the run's slot for the next queued run.
				go o.admit(context.WithoutCancel(ctx), r.Pipeline)
			}
		}
	}
	o.setWake(r)
}

// fence marks an attempt the run moved past, so a runner neither starts it
// (its request may still be queued) nor reports it.
func (o *Orchestrator) fence(ctx context.Context, runID string, f *Fence) {
	ctx, cancel := context.WithTimeout(ctx, o.cfg.IOTimeout)
	defer cancel()
	key := runner.AttemptKey(runID, f.StepID, f.Attempt)
	if _, err := runner.Fence(ctx, o.attempts, key, "orchestrator", f.Reason, time.Now()); err != nil && !errors.Is(err, runner.ErrLeaseHeld) {
		o.log.Warn("fence attempt", zap.String("attempt", key), zap.Error(err))
	}
}

// dispatch publishes a step request, retrying transient failures within
// the I/O deadline. A request that still could not be published is kept
// and tried again every second by republish while its attempt is current.
// It reports whether the request was published.
//
// The request is published in a "step.dispatch" producer span in the run's
// trace, which the runner's spans of the request descend from.
func (o *Orchestrator) dispatch(ctx context.Context, r *store.Run, req *event.StepRequested) bool {
	if tracing.Enabled() {
		var span trace.Span
		ctx, span = tracing.StartSpan(tracing.WithTraceParent(ctx, r.Trace), "step.dispatch", trace.SpanKindProducer,
			attribute.String("ansflow.run.id", req.RunID), attribute.String("ansflow.pipeline", r.Pipeline),
			attribute.String("ansflow.step.id", req.StepID), attribute.Int("ansflow.step.attempt", req.Attempt),
			attribute.String("ansflow.step.type", req.Type), attribute.String("ansflow.runner.kind", req.Kind),
			attribute.String("ansflow.runner.target", req.Target), attribute.String("messaging.destination.name", event.StepRequestedSubject(req.Kind, req.Target)))
		defer span.End()
	}
	if err := o.seal(ctx, r, req); err != nil {
		o.refuse(ctx, req, err)
		return false
	}
	var perm *bus.PermanentError
	err := o.publishRequest(ctx, req)
	if errors.As(err, &perm) {
		o.log.Error("publish step request", zap.String("run_id", req.RunID), zap.String("step_id", req.StepID), zap.Error(err))
	} else if err != nil {
		o.log.Error("publish step request; will try again", zap.String("run_id", req.RunID), zap.String("step_id", req.StepID), zap.Error(err))
		o.mu.Lock()
		o.unpublished[runner.AttemptKey(req.RunID, req.StepID, req.Attempt)] = req
		o.mu.Unlock()
	}
	return err == nil
}

// republish tries the requests dispatch could not publish again, every
// second, dropping those whose attempt is no longer queued.
func (o *Orchestrator) republish(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		o.mu.Lock()
		reqs := make(map[string]*event.StepRequested, len(o.unpublished))
		for k, r := range o.unpublished {
			reqs[k] = r
		}
		o.mu.Unlock()
		for key, req := range reqs {
			current := false
			ictx, cancel := context.WithTimeout(ctx, o.cfg.IOTimeout)
			r, err := o.store.GetRunCached(ictx, req.RunID)
			cancel()
			if err == nil {
				if s := r.Step(req.StepID); s != nil && s.Attempts == req.Attempt && s.Status == event.StatusQueued {
					current = true
				}
			} else if !errors.Is(err, store.ErrNotFound) {
				continue // cannot tell yet
			}
			if current {
				if err := o.publishRequest(tracing.WithTraceParent(ctx, r.Trace), req); err != nil {
					continue
				}
			}
			o.mu.Lock()
			delete(o.unpublished, key)
			o.mu.Unlock()
		}
	}
}

func (o *Orchestrator) publishRequest(ctx context.Context, req *event.StepRequested) error {
	e, err := event.New(Source, event.TypeStepRequested, event.Meta{RunID: req.RunID, StepID: req.StepID, Attempt: req.Attempt}, req)
	if err != nil {
		return bus.Permanent(fmt.Errorf("encode step request: %w", err))
	}
	e.SetID(fmt.Sprintf("req-%s", runner.AttemptKey(req.RunID, req.StepID, req.Attempt)))
	ctx, cancel := context.WithTimeout(ctx, o.cfg.IOTimeout)
	defer cancel()
	return bus.Publish(ctx, o.js, event.StepRequestedSubject(req.Kind, req.Target), e)
}

func (o *Orchestrator) publish(ctx context.Context, typ string, meta event.Meta, id string, data any) {
	e, err := event.New(Source, typ, meta, data)
	if err != nil {
		o.log.Error("encode event", zap.String("type", typ), zap.Error(err))
		return
	}
	if id != "" {
		e.SetID(id)
	}
	ctx, cancel := context.WithTimeout(ctx, o.cfg.IOTimeout)
	defer cancel()
	if err := bus.Publish(ctx, o.js, event.LifecycleSubject(typ, meta.RunID), e); err != nil {
		o.log.Error("publish event", zap.String("type", typ), zap.Error(err))
	}
}

// lockRun serialises this instance's updates of one run, so that its own
// events (a step's started and completed arriving together) do not collide
// in compare-and-swap retries. Other instances still race through CAS.
func (o *Orchestrator) lockRun(id string) func() {
	o.mu.Lock()
	l, ok := o.runLocks[id]
	if !ok {
		l = &runLock{}
		o.runLocks[id] = l
	}
	l.users++
	o.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		o.mu.Lock()
		if l.users--; l.users == 0 {
			delete(o.runLocks, id)
		}
		o.mu.Unlock()
	}
}

// updating reports whether an update of run id is in progress here.
func (o *Orchestrator) updating(id string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	_, ok := o.runLocks[id]
	return ok
}

type runLock struct {
	sync.Mutex
	users int
}

// wake is when an active run next needs a [Tick] (zero: not before an
// event), computed from the run at revision rev.
type wake struct {
	at  time.Time
	rev uint64
}

// setWake arms r's timer from r. A copy older than the one the timer was
// computed from (a watcher lagging behind this instance's own writes) is
// ignored, so it cannot disarm a newer timer.
func (o *Orchestrator) setWake(r *store.Run) {
	at := NextWake(r, o.env())
	o.mu.Lock()
	defer o.mu.Unlock()
	if w, ok := o.wakeAt[r.ID]; ok && w.rev > r.Revision {
		return
	}
	if r.Terminal() {
		delete(o.wakeAt, r.ID)
		return
	}
	o.wakeAt[r.ID] = wake{at: at, rev: r.Revision}
}

// watch follows the runs bucket so this instance arms timers for runs other
// instances changed, and, on start, republishes requests of queued steps in
// case a previous instance died between committing and publishing.
func (o *Orchestrator) watch(ctx context.Context) error {
	w, err := o.store.Runs().WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch runs: %w", err)
	}
	defer w.Stop()
	initial := true
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return nil
			}
			if e == nil {
				initial = false
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				o.mu.Lock()
				delete(o.wakeAt, e.Key())
				o.mu.Unlock()
				o.queue.forget(e.Key())
				continue
			}
			if !initial && (o.store.Cached(e.Key()) >= e.Revision() || o.updating(e.Key())) {
				// Cache: this process wrote it (or is writing it: the
				// watcher can see a write before the writer sees its ack)
				// and arms the timer itself, so decoding it again would only
				// cost time; a concurrent write from elsewhere makes that
				// update retry on a fresh read.
				continue
			}
			r, err := o.store.DecodeRun(ctx, e)
			if err != nil {
				o.log.Warn("undecodable run", zap.String("key", e.Key()), zap.Error(err))
				continue
			}
			o.store.Observe(r)
			o.queue.observe(r, o.cfg.Policy)
			o.setWake(r)
			if initial && !r.Terminal() {
				o.recover(ctx, r)
			}
		}
	}
}

// recover republishes the requests of r's queued steps; deduplication and
// the runners' claims make a republished request harmless.
func (o *Orchestrator) recover(ctx context.Context, r *store.Run) {
	env := o.env()
	for i, s := range r.Steps {
		if s.Status == event.StatusQueued {
			req, err := Request(r, i, env)
			if err != nil {
				continue
			}
			o.dispatch(ctx, r, req)
		}
	}
}

// sweep gives due runs a [Tick].
func (o *Orchestrator) sweep(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			var due []string
			o.mu.Lock()
			for id, w := range o.wakeAt {
				if !w.at.IsZero() && !w.at.After(now) {
					due = append(due, id)
					o.wakeAt[id] = wake{rev: w.rev}
				}
			}
			o.mu.Unlock()
			for _, id := range due {
				r, err := o.update(ctx, id, Tick{})
				if err != nil && ctx.Err() == nil {
					o.log.Warn("timer update", zap.String("run_id", id), zap.Error(err))
					o.retryWake(id)
					continue
				}
				if r != nil && r.Status == event.StatusQueued {
					o.admit(ctx, r.Pipeline)
				}
			}
		}
	}
}

// retryWake re-arms a run whose timed update failed, a second from now.
func (o *Orchestrator) retryWake(id string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if w, ok := o.wakeAt[id]; ok && w.at.IsZero() {
		o.wakeAt[id] = wake{at: time.Now().Add(time.Second), rev: w.rev}
	}
}

// Vars returns the template variables visible to step i of r.
func Vars(r *store.Run, i int) tmpl.Vars {
	vars := tmpl.Vars{}
	for k, v := range r.Vars {
		vars[k] = tmpl.Value{S: v.Value, Untrusted: v.Untrusted}
	}
	for _, u := range graphOf(r.Spec).upstream[i] {
		us := r.Steps[u]
		if us.Status != event.StatusSucceeded {
			continue
		}
		for k, v := range us.Outputs {
			vars["steps."+us.ID+".outputs."+k] = tmpl.Value{S: v}
		}
		if img := us.Outputs["image"]; img != "" && strings.HasPrefix(us.Type, "docker_") && us.Type != "docker_run" {
			vars["docker_image"] = tmpl.Value{S: img}
		}
		if us.Kind == event.KindK8s {
			if us.Namespace != "" {
				vars["k8s_namespace"] = tmpl.Value{S: us.Namespace}
			}
			if us.ResourceName != "" {
				vars["k8s_resource_name"] = tmpl.Value{S: us.ResourceName}
			}
		}
	}
	return vars
}
