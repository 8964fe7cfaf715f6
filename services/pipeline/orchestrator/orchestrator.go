// Package orchestrator owns pipeline runs: it creates them, decides which
// steps are due (order, needs, conditions, retries, timeouts, cancellation),
// resolves their templates at dispatch, publishes step.requested, and folds
// step.started and step.completed back into the run.
//
// All run state lives in the runs bucket and is changed with compare-and-swap,
// so any number of orchestrators may serve the same runs and a restarted one
// continues every run. Step requests carry deterministic event ids, so a
// request republished after a crash is dropped by JetStream's deduplication,
// and runners claim each (run, step, attempt) once.
package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/pkg/tmpl"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// Source is the CloudEvents source of the pipeline service's events.
const Source = "ansflow/pipeline"

// Config configures an [Orchestrator].
type Config struct {
	// DispatchTimeout fails a step no runner has started within it
	// (default 30s).
	DispatchTimeout time.Duration
	// Concurrency bounds lifecycle events handled at once (default 64).
	Concurrency int
	// DefaultDockerPool is the pool of docker steps without runs_on.
	DefaultDockerPool string
	// DefaultCluster is the cluster name of k8s steps without k8s_cluster.
	DefaultCluster string
}

// ErrInvalid is wrapped by errors caused by the caller's input.
var ErrInvalid = errors.New("invalid request")

// ErrFinished is returned when cancelling a run that is already over.
var ErrFinished = errors.New("run already finished")

// Orchestrator drives runs. Create it with [New] and serve it with Run.
type Orchestrator struct {
	cfg   Config
	js    jetstream.JetStream
	store *store.Store
	log   *zap.Logger
	plan  planner

	mu       sync.Mutex
	wakeAt   map[string]wake
	runLocks map[string]*runLock

	servedMu sync.Mutex
	served   map[string]time.Time

	fold folder
}

// New returns an orchestrator over st.
func New(cfg Config, js jetstream.JetStream, st *store.Store, log *zap.Logger) *Orchestrator {
	if cfg.DispatchTimeout == 0 {
		cfg.DispatchTimeout = 30 * time.Second
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 64
	}
	if cfg.DefaultDockerPool == "" {
		cfg.DefaultDockerPool = "default"
	}
	if cfg.DefaultCluster == "" {
		cfg.DefaultCluster = "default"
	}
	o := &Orchestrator{cfg: cfg, js: js, store: st, log: log, wakeAt: map[string]wake{}, runLocks: map[string]*runLock{}, served: map[string]time.Time{},
		fold: folder{waiting: map[string]chan struct{}{}}}
	o.plan = planner{dispatchTimeout: cfg.DispatchTimeout, prepare: o.prepare}
	return o
}

// Run consumes lifecycle events, watches runs and fires timers until ctx is
// done.
func (o *Orchestrator) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		cc := bus.ConsumerConfig{
			Stream:  event.StreamEvents,
			Durable: "pipeline-orchestrator",
			FilterSubjects: []string{
				"ansflow.events.step.started.*",
				"ansflow.events.step.completed.*",
			},
			Concurrency: o.cfg.Concurrency,
			MaxDeliver:  10,
			RetryDelay:  100 * time.Millisecond,
		}
		return bus.Consume(ctx, o.js, cc, bus.Chain(o.handle, bus.KnownTypes()), o.log)
	})
	g.Go(func() error { return o.watch(ctx) })
	g.Go(func() error { return o.sweep(ctx) })
	return g.Wait()
}

// TriggerRequest asks for a new run.
type TriggerRequest struct {
	Pipeline string
	// Vars override declared pipeline variables; they are trusted.
	Vars map[string]string
	Git  GitInfo
	// Source is the uploaded tree or repository the runners build.
	Source  *store.Source
	Trigger store.Trigger
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
func (o *Orchestrator) Trigger(ctx context.Context, req TriggerRequest) (*store.Run, error) {
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
	vars := map[string]store.Var{}
	for k, v := range rec.Spec.Variables {
		vars[k] = store.Var{Value: v}
	}
	for k, v := range req.Vars {
		if _, ok := rec.Spec.Variables[k]; !ok {
			return nil, fmt.Errorf("%w: variable %q is not declared under pipeline.variables of %q", ErrInvalid, k, rec.Name)
		}
		vars[k] = store.Var{Value: v}
	}
	g := req.Git
	for k, v := range map[string]string{"git_commit": g.Commit, "git_branch": g.Branch, "git_tag": g.Tag,
		"git_repo_url": g.RepoURL, "git_author": g.Author, "git_message": g.Message} {
		vars[k] = store.Var{Value: v, Untrusted: g.Untrusted && v != ""}
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
	r := &store.Run{ID: id, Pipeline: rec.Name, PipelineVersion: rec.Version, BuildNumber: n,
		Status: event.StatusPending, CreatedAt: now, Trigger: req.Trigger, Vars: vars, Spec: rec.Spec, Source: req.Source}
	r.Vars["build_number"] = store.Var{Value: fmt.Sprint(n)}
	r.Vars["run_id"] = store.Var{Value: r.ID}
	r.Vars["pipeline_name"] = store.Var{Value: rec.Name}
	if rec.Spec.Timeout > 0 {
		r.Deadline = ptr(now.Add(time.Duration(rec.Spec.Timeout)))
	}
	for i := range rec.Spec.Steps {
		st := &rec.Spec.Steps[i]
		r.Steps = append(r.Steps, &store.StepState{Name: st.Name, ID: st.ID(), Type: st.Type, Status: event.StatusPending,
			Kind: st.Kind(), Outputs: map[string]string{}})
	}
	return r, o.start(ctx, r)
}

// Rerun starts a new run of a finished, unsuccessful run that keeps the
// steps that succeeded and runs the others again, from the failed ones on.
func (o *Orchestrator) Rerun(ctx context.Context, id string, trig store.Trigger) (*store.Run, error) {
	old, err := o.store.GetRun(ctx, id)
	if err != nil {
		return nil, err
	}
	if !old.Terminal() || old.Status == event.StatusSucceeded {
		return nil, fmt.Errorf("%w: run %s is %s; only a failed or cancelled run can be re-run", ErrInvalid, id, old.Status)
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
	r.CreatedAt, r.StartedAt, r.FinishedAt, r.CancelRequested, r.Trigger = now, nil, nil, "", trig
	r.Vars = map[string]store.Var{}
	for k, v := range old.Vars {
		r.Vars[k] = v
	}
	r.Vars["build_number"] = store.Var{Value: fmt.Sprint(n)}
	r.Vars["run_id"] = store.Var{Value: r.ID}
	if r.Spec.Timeout > 0 {
		r.Deadline = ptr(now.Add(time.Duration(r.Spec.Timeout)))
	}
	r.Steps = nil
	for _, s := range old.Steps {
		c := *s
		if c.Status != event.StatusSucceeded {
			c = store.StepState{Name: s.Name, ID: s.ID, Type: s.Type, Kind: s.Kind, Status: event.StatusPending, Outputs: map[string]string{}}
		}
		r.Steps = append(r.Steps, &c)
	}
	return &r, o.start(ctx, &r)
}

func (o *Orchestrator) start(ctx context.Context, r *store.Run) error {
	fx := o.plan.reconcile(r, time.Now().UTC())
	if err := o.store.CreateRun(ctx, r); errors.Is(err, store.ErrExists) {
		return fmt.Errorf("%w: %s", ErrRunExists, r.ID)
	} else if err != nil {
		return err
	}
	o.publish(ctx, event.TypeRunCreated, event.Meta{RunID: r.ID}, "created-"+r.ID, event.RunCreated{RunID: r.ID,
		Pipeline: r.Pipeline, Version: r.PipelineVersion, BuildNumber: r.BuildNumber, Trigger: r.Trigger.Kind, Actor: r.Trigger.Actor})
	o.apply(ctx, r, fx)
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
	if kv, err := o.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: runner.CancelsBucket, TTL: 14 * 24 * time.Hour}); err == nil {
		_, _ = kv.Put(ctx, event.Token(id), []byte(reason))
	}
	return o.update(ctx, id, func(r *store.Run) bool {
		r.CancelRequested = reason
		return true
	})
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
		_, err := o.update(ctx, d.RunID, func(r *store.Run) bool {
			s := r.Step(d.StepID)
			if s == nil || s.Attempts != d.Attempt || s.Status != event.StatusPending || s.QueuedAt == nil {
				return false
			}
			s.Status, s.StartedAt, s.Runner = event.StatusRunning, ptr(d.StartedAt), d.Runner
			return true
		})
		return notFoundIsPermanent(err)
	case event.TypeStepCompleted:
		var d event.StepCompleted
		if err := event.DecodeData(e, &d); err != nil {
			return bus.Permanent(err)
		}
		o.fold.completing(attemptID(d.RunID, d.StepID, d.Attempt))
		_, err := o.update(ctx, d.RunID, func(r *store.Run) bool { return o.completed(r, &d) })
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

// completed folds a step.completed into r; stale attempts are ignored.
func (o *Orchestrator) completed(r *store.Run, d *event.StepCompleted) bool {
	i := -1
	for k, s := range r.Steps {
		if s.ID == d.StepID {
			i = k
		}
	}
	if i < 0 {
		return false
	}
	s := r.Steps[i]
	if s.Attempts != d.Attempt || (s.Status != event.StatusRunning && !(s.Status == event.StatusPending && s.QueuedAt != nil)) {
		return false
	}
	if s.StartedAt == nil {
		s.StartedAt = ptr(d.StartedAt)
	}
	s.ExitCode, s.Runner, s.Logs = d.ExitCode, d.Runner, store.Logs{Stdout: d.StdoutTail, Stderr: d.StderrTail}
	if s.Outputs == nil {
		s.Outputs = map[string]string{}
	}
	for k, v := range d.Outputs {
		s.Outputs[k] = v
	}
	now := d.FinishedAt
	switch d.Status {
	case event.StatusSucceeded:
		s.Status, s.Error, s.FinishedAt, s.QueuedAt = event.StatusSucceeded, "", ptr(now), nil
	case event.StatusCancelled:
		s.Status, s.Error, s.FinishedAt, s.QueuedAt = event.StatusCancelled, d.Error, ptr(now), nil
	default:
		o.plan.fail(r, s, &r.Spec.Steps[i], time.Now().UTC(), d.Error)
	}
	return true
}

// update applies mutate to the run and reconciles it, retrying on
// concurrent changes, then publishes the resulting effects.
func (o *Orchestrator) update(ctx context.Context, id string, mutate func(*store.Run) bool) (*store.Run, error) {
	unlock := o.lockRun(id)
	defer unlock()
	for try := 0; ; try++ {
		get := o.store.GetRunCached
		if try > 0 {
			get = o.store.GetRun
		}
		r, err := get(ctx, id)
		if err != nil {
			return nil, err
		}
		if r.Terminal() || (mutate != nil && !mutate(r)) {
			if try == 0 {
				continue // decide nothing on a possibly stale cached copy
			}
			o.setWake(r)
			return r, nil
		}
		fx := o.plan.reconcile(r, time.Now().UTC())
		err = o.store.UpdateRun(ctx, r)
		if errors.Is(err, store.ErrConflict) && try < 100 {
			continue
		}
		if err != nil {
			return nil, err
		}
		o.apply(ctx, r, fx)
		return r, nil
	}
}

// apply publishes effects of a committed run change and re-arms its timer.
func (o *Orchestrator) apply(ctx context.Context, r *store.Run, fx []effect) {
	for _, f := range fx {
		switch {
		case f.dispatch != nil:
			o.dispatch(ctx, f.dispatch)
		case f.cancel != nil:
			o.publish(ctx, event.TypeStepCancel, event.Meta{RunID: r.ID, StepID: f.cancel.StepID}, "", f.cancel)
		case f.done:
			o.publish(ctx, event.TypeRunCompleted, event.Meta{RunID: r.ID}, "completed-"+r.ID, event.RunCompleted{
				RunID: r.ID, Pipeline: r.Pipeline, Status: r.Status, Error: r.Error, FinishedAt: *r.FinishedAt})
		}
	}
	o.setWake(r)
}

func (o *Orchestrator) dispatch(ctx context.Context, req *event.StepRequested) {
	e, err := event.New(Source, event.TypeStepRequested, event.Meta{RunID: req.RunID, StepID: req.StepID, Attempt: req.Attempt}, req)
	if err != nil {
		o.log.Error("encode step request", zap.Error(err))
		return
	}
	e.SetID(fmt.Sprintf("req-%s.%s.%d", event.Token(req.RunID), event.Token(req.StepID), req.Attempt))
	if err := bus.Publish(ctx, o.js, event.StepRequestedSubject(req.Kind, req.Target), e); err != nil {
		// The run says the step is dispatched; the sweeper's recovery pass
		// republishes on restart, and the dispatch timeout bounds the wait.
		o.log.Error("publish step request", zap.String("run_id", req.RunID), zap.String("step_id", req.StepID), zap.Error(err))
	}
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

// wake is when an active run next needs the sweeper (zero: not before an
// event), computed from the run at revision rev.
type wake struct {
	at  time.Time
	rev uint64
}

// setWake arms r's timer from r. A copy older than the one the timer was
// computed from (a watcher lagging behind this instance's own writes) is
// ignored, so it cannot disarm a newer timer.
func (o *Orchestrator) setWake(r *store.Run) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if w, ok := o.wakeAt[r.ID]; ok && w.rev > r.Revision {
		return
	}
	if r.Terminal() {
		delete(o.wakeAt, r.ID)
		return
	}
	o.wakeAt[r.ID] = wake{at: o.plan.nextWake(r), rev: r.Revision}
}

// watch follows the runs bucket so this instance arms timers for runs other
// instances changed, and, on start, republishes requests of dispatched steps
// in case a previous instance died between committing and publishing.
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
				continue
			}
			if !initial && (o.store.Cached(e.Key()) >= e.Revision() || o.updating(e.Key())) {
				// This process wrote it (or is writing it: the watcher can
				// see a write before the writer sees its ack) and arms the
				// timer itself; a concurrent write from elsewhere makes that
				// update retry on a fresh read.
				continue
			}
			r, err := o.store.DecodeRun(ctx, e)
			if err != nil {
				o.log.Warn("undecodable run", zap.String("key", e.Key()), zap.Error(err))
				continue
			}
			o.store.Observe(r)
			o.setWake(r)
			if initial && !r.Terminal() {
				o.recover(ctx, r)
			}
		}
	}
}

func (o *Orchestrator) recover(ctx context.Context, r *store.Run) {
	for i, s := range r.Steps {
		if s.Status == event.StatusPending && s.QueuedAt != nil {
			req, err := o.request(r, i)
			if err != nil {
				continue
			}
			o.dispatch(ctx, req)
		}
	}
}

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
				if _, err := o.update(ctx, id, nil); err != nil && ctx.Err() == nil {
					o.log.Warn("timer update", zap.String("run_id", id), zap.Error(err))
				}
			}
		}
	}
}

// Vars returns the template variables visible to step i of r.
func Vars(r *store.Run, i int) tmpl.Vars {
	vars := tmpl.Vars{}
	for k, v := range r.Vars {
		vars[k] = tmpl.Value{S: v.Value, Untrusted: v.Untrusted}
	}
	deps := r.Spec.Deps()
	for _, u := range spec.Upstream(deps, i) {
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
