package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/metrics"
	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/pkg/topology"
	"github.com/ansflow/ansflow/pkg/tracing"
)

// Buckets shared by runners and the pipeline service.
const (
	// AttemptsBucket holds each attempt's [Claim]: who executes it, until
	// when its lease runs, and, once done, its completion, so a redelivered
	// request is never executed twice.
	AttemptsBucket = topology.BucketAttempts
	// CancelsBucket holds one key per run that was cancelled or is over
	// (the value says why), so runners drop its requests without executing
	// them.
	CancelsBucket = topology.BucketCancels
)

// BucketTTL is how long the attempts and cancels buckets keep an entry: at
// least as long as the steps stream keeps a request.
const BucketTTL = topology.AttemptsTTL

// Config configures a [Runner].
type Config struct {
	// Kind is event.KindDocker or event.KindK8s.
	Kind string
	// Targets are the pools (docker) or clusters (k8s) served.
	Targets []string
	// ID names this runner instance in events.
	ID string
	// Concurrency bounds attempts executed at once for each pool or
	// cluster served (default 2).
	Concurrency int
	// DefaultTimeout bounds an attempt whose request sets none (default 1h).
	DefaultTimeout time.Duration
	// WorkDir is where sources are unpacked (default os.TempDir()).
	WorkDir string
	// Lease is how long an attempt's claim, and the request's delivery,
	// stay held without a renewal; renewals go out every third of it. Once
	// it has lapsed, another runner (or the orchestrator) may take the
	// attempt over (default 30s).
	Lease time.Duration
	// Heartbeat is how often the runner rewrites its presence entry in
	// [RunnersBucket] (default 5s).
	Heartbeat time.Duration
	// Replicas of the buckets the runner creates (default 1); existing
	// buckets keep theirs.
	Replicas int
	// Grace is how long running steps may finish after Run's context ends
	// (a SIGTERM) before they are stopped and left to another runner, which takes them over once their lease lapses
	// (default 0).
	Grace time.Duration
	// MaxLogBytes bounds the log one step attempt publishes, stdout and
	// stderr together; past it the log is cut with a marker line (default
	// [DefaultMaxLogBytes]).
	MaxLogBytes int64
	// Identity is the pool's secrets identity: the private key that opens
	// the secrets sealed to the pool, whose public key the runner
	// announces. Without it the runner fails steps that ask for secrets.
	Identity *secret.Identity
	// Metrics records queue waits, step durations, this runner's slots
	// and its consumers' redeliveries and dead letters; nil records
	// nothing.
	Metrics *metrics.Metrics
}

// Validate checks cfg and fills defaults.
func (c *Config) Validate() error {
	if c.Kind != event.KindDocker && c.Kind != event.KindK8s {
		return fmt.Errorf("runner kind %q: want %q or %q", c.Kind, event.KindDocker, event.KindK8s)
	}
	if len(c.Targets) == 0 {
		return errors.New("runner serves no pool or cluster")
	}
	if c.ID == "" {
		host, _ := os.Hostname()
		c.ID = fmt.Sprintf("%s-runner@%s-%d", c.Kind, host, os.Getpid())
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 2
	}
	if c.DefaultTimeout <= 0 {
		c.DefaultTimeout = DefaultTimeout
	}
	if c.WorkDir == "" {
		c.WorkDir = os.TempDir()
	}
	if c.Lease <= 0 {
		c.Lease = DefaultLease
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	return nil
}

// Defaults of [Config] (DefaultGrace is the runner binaries' default of
// --grace; a Config without Grace stops its steps at once).
const (
	// DefaultTimeout bounds an attempt whose request sets no timeout.
	DefaultTimeout = time.Hour
	// DefaultLease is how long a claim stays held without renewal.
	DefaultLease = 30 * time.Second
	// DefaultHeartbeat is how often a runner rewrites its presence.
	DefaultHeartbeat = 5 * time.Second
	// DefaultGrace is how long running steps may finish after a SIGTERM.
	DefaultGrace = 30 * time.Second
)

// DurableName is the durable consumer shared by every runner of kind serving
// target.
func DurableName(kind, target string) string { return topology.RunnerDurable(kind, target) }

// Runner executes step requests with an engine. Create it with [New].
type Runner struct {
	cfg       Config
	nc        *nats.Conn
	js        jetstream.JetStream
	eng       Engine
	fetch     SourceFetcher
	log       *zap.Logger
	types     map[string]bool
	source    string
	started   time.Time
	mu        sync.Mutex
	running   map[string]context.CancelCauseFunc // run/step -> cancel
	busy      map[string]int                     // target -> attempts executing
	changed   chan struct{}                      // busy changed: announce soon
	cancelled map[string]string                  // run ids (as tokens) cancelled or over -> why
}

// New returns a runner; cfg must have passed Validate.
func New(cfg Config, nc *nats.Conn, js jetstream.JetStream, eng Engine, fetch SourceFetcher, log *zap.Logger) *Runner {
	r := &Runner{cfg: cfg, nc: nc, js: js, eng: eng, fetch: fetch, log: log.With(zap.String("runner", cfg.ID)),
		types: map[string]bool{}, running: map[string]context.CancelCauseFunc{}, busy: map[string]int{}, changed: make(chan struct{}, 1), cancelled: map[string]string{},
		source: "ansflow/" + cfg.Kind + "-runner/" + cfg.ID, started: time.Now().UTC()}
	for _, t := range eng.Types() {
		r.types[t] = true
	}
	return r
}

// Run serves every configured target until ctx is done.
func (r *Runner) Run(ctx context.Context) error {
	if err := bus.EnsureStreams(ctx, r.js, r.cfg.Replicas); err != nil {
		return err
	}
	attempts, err := bus.EnsureKeyValue(ctx, r.js, topology.MustBucket(AttemptsBucket, r.cfg.Replicas))
	if err != nil {
		return fmt.Errorf("attempts bucket: %w", err)
	}
	cancels, err := bus.EnsureKeyValue(ctx, r.js, topology.MustBucket(CancelsBucket, r.cfg.Replicas))
	if err != nil {
		return fmt.Errorf("cancels bucket: %w", err)
	}
	presence, err := bus.EnsureKeyValue(ctx, r.js, topology.MustBucket(RunnersBucket, r.cfg.Replicas))
	if err != nil {
		return fmt.Errorf("runners bucket: %w", err)
	}
	if err := r.watchCancels(ctx, cancels); err != nil {
		return err
	}
	sub, err := r.nc.Subscribe("ansflow.events.step.cancel.*", r.onCancel)
	if err != nil {
		return fmt.Errorf("subscribe to cancellations: %w", err)
	}
	defer sub.Unsubscribe()
	if err := r.announce(ctx, presence, false); err != nil {
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { r.heartbeat(gctx, presence); return nil })
	for _, target := range r.cfg.Targets {
		r.cfg.Metrics.RunnerSlots(r.cfg.Kind, target, r.cfg.Concurrency, 0)
		cc := bus.ConsumerConfig{
			Stream:         event.StreamSteps,
			Durable:        DurableName(r.cfg.Kind, target),
			FilterSubjects: []string{event.StepRequestedSubject(r.cfg.Kind, target)},
			MaxDeliver:     5,
			AckWait:        r.cfg.Lease,
			Concurrency:    r.cfg.Concurrency,
			Grace:          r.cfg.Grace,
			Metrics:        r.cfg.Metrics,
		}
		h := func(ctx context.Context, e cloudevents.Event) error { return r.handle(ctx, e, attempts) }
		g.Go(func() error { return bus.Consume(gctx, r.js, cc, bus.Chain(h, bus.KnownTypes()), r.log) })
	}
	r.log.Info("runner ready", zap.String("kind", r.cfg.Kind), zap.Strings("targets", r.cfg.Targets),
		zap.Int("concurrency", r.cfg.Concurrency), zap.Duration("lease", r.cfg.Lease))
	err = g.Wait()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	_ = r.announce(sctx, presence, true)
	return err
}

// announce writes this runner's presence entry.
func (r *Runner) announce(ctx context.Context, kv jetstream.KeyValue, stopped bool) error {
	r.mu.Lock()
	busy, byPool := 0, map[string]int{}
	for t, n := range r.busy {
		if n > 0 {
			busy += n
			byPool[t] = n
		}
	}
	r.mu.Unlock()
	ri := RunnerInfo{ID: r.cfg.ID, Kind: r.cfg.Kind, Pools: r.cfg.Targets, Slots: r.cfg.Concurrency * len(r.cfg.Targets), Busy: busy,
		PoolSlots: r.cfg.Concurrency, BusyByPool: byPool,
		Version: Version, StartedAt: r.started, LastSeen: time.Now().UTC(), Interval: r.cfg.Heartbeat, Stopped: stopped}
	if r.cfg.Identity != nil {
		ri.SecretsKey = r.cfg.Identity.PublicKey()
	}
	b, _ := json.Marshal(ri)
	if _, err := kv.Put(ctx, presenceKey(r.cfg.Kind, r.cfg.ID), b); err != nil {
		return fmt.Errorf("announce runner %s: %w", r.cfg.ID, err)
	}
	return nil
}

// busyChanged asks the heartbeat to announce the new slot use soon.
func (r *Runner) busyChanged() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// announceGap is the least time between two announcements made because
// slot use changed, so a busy runner does not write its entry per step.
const announceGap = 500 * time.Millisecond

// heartbeat rewrites the presence entry every cfg.Heartbeat, and soon after
// its slot use changes, until ctx ends.
func (r *Runner) heartbeat(ctx context.Context, kv jetstream.KeyValue) {
	t := time.NewTicker(r.cfg.Heartbeat)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.changed:
			if wait := announceGap - time.Since(last); wait > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
			}
		case <-t.C:
		}
		last = time.Now()
		actx, cancel := context.WithTimeout(ctx, r.cfg.Heartbeat)
		if err := r.announce(actx, kv, false); err != nil && ctx.Err() == nil {
			r.log.Warn("heartbeat", zap.Error(err))
		}
		cancel()
	}
}

func (r *Runner) onCancel(m *nats.Msg) {
	e, err := event.FromMsg(m)
	if err != nil {
		return
	}
	var c event.StepCancel
	if event.DecodeData(e, &c) != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for key, cancel := range r.running {
		if key == c.RunID+"/"+c.StepID || (c.StepID == "" && strings.HasPrefix(key, c.RunID+"/")) {
			cancel(fmt.Errorf("%w: %s", errCancelled, c.Reason))
		}
	}
}

var errCancelled = errors.New("cancelled")

// watchCancels keeps the set of cancelled or finished runs in memory, so
// checking a request against it costs no round trip. It returns once the
// bucket's current keys are loaded.
func (r *Runner) watchCancels(ctx context.Context, cancels jetstream.KeyValue) error {
	return bus.Follow(ctx, cancels, func(e jetstream.KeyValueEntry) {
		r.mu.Lock()
		defer r.mu.Unlock()
		if e.Operation() == jetstream.KeyValuePut {
			r.cancelled[e.Key()] = string(e.Value())
		} else {
			delete(r.cancelled, e.Key())
		}
	})
}

func (r *Runner) handle(ctx context.Context, e cloudevents.Event, attempts jetstream.KeyValue) error {
	if e.Type() != event.TypeStepRequested {
		return bus.Permanent(fmt.Errorf("runner got %s, want %s", e.Type(), event.TypeStepRequested))
	}
	var req event.StepRequested
	if err := event.DecodeData(e, &req); err != nil {
		return bus.Permanent(err)
	}
	if req.RunID == "" || req.StepID == "" || req.Attempt < 1 {
		return bus.Permanent(fmt.Errorf("step request %s lacks run id, step id or attempt", e.ID()))
	}
	log := r.log.With(zap.String("run_id", req.RunID), zap.String("step_id", req.StepID), zap.Int("attempt", req.Attempt))
	ctx, span := r.startSpan(ctx, &req)
	defer span.End()
	r.mu.Lock()
	stopped, isStopped := r.cancelled[event.Token(req.RunID)]
	r.mu.Unlock()
	if isStopped {
		// The orchestrator already settled every step of a cancelled or
		// finished run: the request is not current.
		log.Info("dropping the request of a run that is over", zap.String("why", stopped))
		return nil
	}
	key := AttemptKey(req.RunID, req.StepID, req.Attempt)
	mine, _ := json.Marshal(Claim{State: ClaimRunning, Runner: r.cfg.ID, LeaseUntil: time.Now().Add(r.cfg.Lease)})
	rev, err := attempts.Create(ctx, key, mine)
	if err != nil {
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("claim attempt %s: %w", key, err) // retryable
		}
		return r.redelivered(ctx, &req, attempts, key, log)
	}
	l := &lease{kv: attempts, key: key, runner: r.cfg.ID, d: r.cfg.Lease, rev: rev}
	if !req.RequestedAt.IsZero() {
		r.cfg.Metrics.StepClaimed(r.cfg.Kind, req.Target, time.Since(req.RequestedAt))
	}
	if req.Reason == ReasonRunnerLost && req.Attempt > 1 {
		r.reap(ctx, &req, req.Attempt-1, log)
	}

	now := time.Now().UTC()
	done := func(status string, exit *int, outputs map[string]string, msg string, task *Task) error {
		c := &event.StepCompleted{RunID: req.RunID, StepID: req.StepID, Attempt: req.Attempt, Status: status,
			ExitCode: exit, Outputs: outputs, Error: msg, Runner: r.cfg.ID, StartedAt: now, FinishedAt: time.Now().UTC()}
		if task != nil {
			c.StdoutTail, c.StderrTail = task.stdout.Tail(), task.stderr.Tail()
		}
		r.cfg.Metrics.StepFinished(req.Type, status, c.FinishedAt.Sub(now))
		if span.IsRecording() {
			span.SetAttributes(attribute.String("ansflow.step.status", status))
			if status != event.StatusSucceeded {
				span.SetStatus(codes.Error, msg)
			}
		}
		return r.complete(ctx, c, l, log)
	}
	if !r.types[req.Type] {
		return done(event.StatusFailed, nil, nil, fmt.Sprintf("runner %s does not execute step type %q", r.cfg.ID, req.Type), nil)
	}

	timeout := r.cfg.DefaultTimeout
	if req.TimeoutSeconds > 0 {
		timeout = time.Duration(req.TimeoutSeconds * float64(time.Second))
	}
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sctx, cancelTimeout := context.WithTimeoutCause(sctx, timeout, fmt.Errorf("step timed out after %s", timeout))
	defer cancelTimeout()
	runKey := req.RunID + "/" + req.StepID
	r.mu.Lock()
	r.running[runKey] = cancel
	r.busy[req.Target]++
	r.cfg.Metrics.RunnerSlots(r.cfg.Kind, req.Target, r.cfg.Concurrency, r.busy[req.Target])
	r.mu.Unlock()
	r.busyChanged()
	defer func() {
		r.mu.Lock()
		delete(r.running, runKey)
		r.busy[req.Target]--
		r.cfg.Metrics.RunnerSlots(r.cfg.Kind, req.Target, r.cfg.Concurrency, r.busy[req.Target])
		r.mu.Unlock()
		r.busyChanged()
	}()
	stopRenewing := r.renew(ctx, l, cancel, log)
	defer stopRenewing()

	started, err := event.New(r.source, event.TypeStepStarted, event.Meta{RunID: req.RunID, StepID: req.StepID, Attempt: req.Attempt},
		event.StepStarted{RunID: req.RunID, StepID: req.StepID, Attempt: req.Attempt, Runner: r.cfg.ID, StartedAt: now})
	if err != nil {
		return bus.Permanent(err)
	}
	started.SetID(fmt.Sprintf("started-%s", key))
	if _, err := bus.PublishAsync(ctx, r.js, event.LifecycleSubject(event.TypeStepStarted, req.RunID), started); err != nil {
		log.Warn("publish step.started", zap.Error(err))
	}

	task, workdir := r.newTask(ctx, &req, log)
	defer os.RemoveAll(workdir)
	if err := r.openSecrets(&req, task); err != nil {
		stopRenewing()
		log.Info("step did not succeed", zap.String("status", event.StatusFailed), zap.String("error", err.Error()))
		return done(event.StatusFailed, nil, nil, err.Error(), task)
	}
	stop := make(chan struct{})
	go flushEvery(200*time.Millisecond, stop, task.stdout, task.stderr)
	outputs, execErr := r.eng.Execute(sctx, &req, task)
	close(stop)
	task.flushLogs()
	if err := task.logs.wait(ctx, 5*time.Second); err != nil {
		log.Warn("log chunks not stored before the completion", zap.Error(err))
	}
	stopRenewing()
	if errors.Is(context.Cause(sctx), errLeaseLost) {
		log.Warn("attempt was taken over after this runner lost its lease; not reporting it")
		return nil
	}

	for k, v := range outputs {
		outputs[k] = task.masker.Mask(v)
	}
	if execErr == nil {
		// an engine that ignored a cancellation still loses the step
		if cause := context.Cause(sctx); cause != nil && sctx.Err() != nil {
			execErr = cause
		}
	}
	if execErr == nil {
		zero := 0
		log.Info("step succeeded")
		return done(event.StatusSucceeded, &zero, outputs, "", task)
	}
	status := event.StatusFailed
	msg := task.masker.Mask(execErr.Error())
	if cause := context.Cause(sctx); cause != nil && sctx.Err() != nil {
		msg = task.masker.Mask(cause.Error())
		if errors.Is(cause, errCancelled) {
			status = event.StatusCancelled
		}
	}
	var exit *int
	if code, ok := ExitCode(execErr); ok {
		exit = &code
	}
	log.Info("step did not succeed", zap.String("status", status), zap.String("error", msg))
	return done(status, exit, outputs, msg, task)
}

// startSpan starts the span of req's execution, "step.execute", child of
// ctx's (the consumer span of the request, itself a child of the
// orchestrator's dispatch); a no-op span while tracing is off.
func (r *Runner) startSpan(ctx context.Context, req *event.StepRequested) (context.Context, trace.Span) {
	if !tracing.Enabled() {
		return ctx, trace.SpanFromContext(ctx)
	}
	return tracing.Tracer().Start(ctx, "step.execute", trace.WithAttributes(
		attribute.String("ansflow.run.id", req.RunID), attribute.String("ansflow.step.id", req.StepID),
		attribute.Int("ansflow.step.attempt", req.Attempt), attribute.String("ansflow.step.type", req.Type),
		attribute.String("ansflow.runner.kind", r.cfg.Kind), attribute.String("ansflow.runner.target", req.Target),
		attribute.String("ansflow.runner.id", r.cfg.ID)))
}

// renew renews l every third of the lease until the returned stop is
// called; a renewal that finds the claim taken over cancels the attempt
// with errLeaseLost. A renewal that fails otherwise (NATS unreachable) is
// retried; the lease lapses if it keeps failing, as it should.
func (r *Runner) renew(ctx context.Context, l *lease, cancel context.CancelCauseFunc, log *zap.Logger) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(r.cfg.Lease / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				rctx, rcancel := context.WithTimeout(ctx, r.cfg.Lease/3)
				err := l.renew(rctx)
				rcancel()
				if errors.Is(err, errLeaseLost) {
					cancel(errLeaseLost)
					return
				}
				if err != nil {
					log.Warn("lease renewal failed", zap.Error(err))
				}
			}
		}
	}()
	once := sync.OnceFunc(func() { close(done); <-finished })
	return once
}

// reap removes what an earlier attempt of req's step left behind.
func (r *Runner) reap(ctx context.Context, req *event.StepRequested, attempt int, log *zap.Logger) {
	reaper, ok := r.eng.(Reaper)
	if !ok {
		return
	}
	if err := reaper.Reap(ctx, req, attempt); err != nil {
		log.Warn("reap the lost attempt", zap.Int("lost_attempt", attempt), zap.Error(err))
	}
}

// pendingLogs tracks the acknowledgements of one attempt's log chunks, so
// its completion is published after its logs are stored without waiting for
// other attempts' logs or its own step.started (which shares the completion's
// stream and connection, so it is stored first anyway).
type pendingLogs struct {
	mu   sync.Mutex
	acks []jetstream.PubAckFuture
}

func (p *pendingLogs) add(f jetstream.PubAckFuture) {
	p.mu.Lock()
	p.acks = append(p.acks, f)
	p.mu.Unlock()
}

// wait returns once every chunk is acknowledged or refused, or after d.
func (p *pendingLogs) wait(ctx context.Context, d time.Duration) error {
	p.mu.Lock()
	acks := p.acks
	p.acks = nil
	p.mu.Unlock()
	if len(acks) == 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	var failed int
	for _, f := range acks {
		select {
		case <-f.Ok():
		case <-f.Err():
			failed++
		case <-t.C:
			return fmt.Errorf("%d log chunks unacknowledged after %s", len(acks), d)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d log chunks refused by the stream", failed, len(acks))
	}
	return nil
}

// redelivered handles a request whose attempt was already claimed: replay a
// finished attempt's completion, drop a request that is not current, leave
// an attempt whose lease is alive to its runner, and take over one whose
// lease lapsed.
func (r *Runner) redelivered(ctx context.Context, req *event.StepRequested, attempts jetstream.KeyValue, key string, log *zap.Logger) error {
	for {
		c, _, err := ReadClaim(ctx, attempts, key)
		if err != nil {
			return fmt.Errorf("read claim %s: %w", key, err)
		}
		switch c.State {
		case ClaimDone:
			if c.Completed == nil {
				return bus.Permanent(fmt.Errorf("claim %s is done without a completion", key))
			}
			log.Info("attempt already completed; replaying its completion")
			return r.publishCompleted(ctx, c.Completed, "completed")
		case ClaimLost, ClaimSuperseded:
			log.Info("dropping a request whose attempt is not current", zap.String("claim", c.State), zap.String("reason", c.Reason))
			return nil
		}
		r.mu.Lock()
		_, local := r.running[req.RunID+"/"+req.StepID]
		r.mu.Unlock()
		if local && c.Runner == r.cfg.ID {
			// Executing here (its delivery lapsed, as in a NATS failover):
			// this runner renews the lease and reports the attempt.
			return nil
		}
		now := time.Now()
		if c.LeaseUntil.After(now) {
			// Wait out the lease: a runner that is alive renews it, one that
			// is gone lets it lapse. The consumer's heartbeats hold the
			// message meanwhile.
			wait := time.NewTimer(c.LeaseUntil.Sub(now) + 50*time.Millisecond)
			select {
			case <-ctx.Done():
				wait.Stop()
				return ctx.Err()
			case <-wait.C:
			}
			if nc, _, err := ReadClaim(ctx, attempts, key); err == nil && nc.State == ClaimRunning && nc.LeaseUntil.After(c.LeaseUntil) {
				log.Info("attempt is held by a live runner; leaving it to it", zap.String("claimed_by", nc.Runner))
				return nil
			}
			continue
		}
		fc, err := Fence(ctx, attempts, key, r.cfg.ID, ReasonRunnerLost, time.Now())
		if errors.Is(err, ErrLeaseHeld) {
			continue
		}
		if err != nil {
			return err
		}
		if fc.State != ClaimLost || fc.Runner != c.Runner {
			continue // someone else settled it first: look again
		}
		log.Warn("runner stopped renewing its lease; taking the attempt over", zap.String("lost_runner", c.Runner))
		r.reap(ctx, req, req.Attempt, log)
		now = time.Now().UTC()
		return r.publishCompleted(ctx, &event.StepCompleted{RunID: req.RunID, StepID: req.StepID, Attempt: req.Attempt,
			Status: event.StatusFailed, Reason: ReasonRunnerLost, Runner: c.Runner, StartedAt: now, FinishedAt: now,
			Error: fmt.Sprintf("runner %s stopped renewing its lease on attempt %d; %s took the step over", c.Runner, req.Attempt, r.cfg.ID)}, "lost")
	}
}

// complete records the attempt's completion in its claim, then publishes
// it. A runner that lost its lease meanwhile finds the claim taken over and
// publishes nothing; a crash between the two leaves a done claim whose
// redelivered request replays the completion.
func (r *Runner) complete(ctx context.Context, c *event.StepCompleted, l *lease, log *zap.Logger) error {
	if err := l.complete(ctx, c); errors.Is(err, errLeaseLost) {
		log.Warn("attempt was taken over after this runner lost its lease; not reporting it")
		return nil
	} else if err != nil {
		return err
	}
	return r.publishCompleted(ctx, c, "completed")
}

// publishCompleted publishes c under an id made of prefix and the attempt:
// "completed" for the attempt's own end, "lost" for a takeover's, so the
// two never deduplicate each other.
func (r *Runner) publishCompleted(ctx context.Context, c *event.StepCompleted, prefix string) error {
	e, err := event.New(r.source, event.TypeStepCompleted, event.Meta{RunID: c.RunID, StepID: c.StepID, Attempt: c.Attempt}, c)
	if err != nil {
		return bus.Permanent(err)
	}
	e.SetID(fmt.Sprintf("%s-%s", prefix, AttemptKey(c.RunID, c.StepID, c.Attempt)))
	return bus.Publish(ctx, r.js, event.LifecycleSubject(event.TypeStepCompleted, c.RunID), e)
}

// openSecrets opens the request's sealed secrets and credentials with the runner's
// identity into task, registering every value with its masking. The error
// names what is missing; it never holds a value.
func (r *Runner) openSecrets(req *event.StepRequested, task *Task) error {
	var regPassword *event.SealedSecret
	if req.Registry != nil {
		regPassword = req.Registry.Password
	}
	if len(req.Secrets) == 0 && regPassword == nil && req.ClusterToken == nil {
		return nil
	}
	if r.cfg.Identity == nil {
		return fmt.Errorf("the step asks for secrets but runner %s has no secrets identity (start it with --secrets-identity FILE)", r.cfg.ID)
	}
	open := func(s *event.SealedSecret, env string) (string, error) {
		v, err := r.cfg.Identity.Open(s.Boxes, secret.Binding{RunID: req.RunID, StepID: req.StepID, Attempt: req.Attempt, Name: s.Name, Env: env})
		if err != nil {
			return "", fmt.Errorf("secrets: %w", err)
		}
		task.Mask(string(v))
		return string(v), nil
	}
	var err error
	if regPassword != nil {
		if task.registryPassword, err = open(regPassword, secret.EnvRegistryPassword); err != nil {
			return err
		}
	}
	if req.ClusterToken != nil {
		if task.clusterToken, err = open(req.ClusterToken, secret.EnvClusterToken); err != nil {
			return err
		}
	}
	env := make(map[string]string, len(req.Secrets))
	for _, s := range req.Secrets {
		if !secret.ValidName(s.Env) {
			return fmt.Errorf("secrets: %q is not a valid environment variable name", s.Env)
		}
		v, err := open(&s, s.Env)
		if err != nil {
			return err
		}
		env[s.Env] = v
	}
	task.secretEnv = env
	return nil
}

// newTask prepares the task of req, whose log chunks carry the trace
// context of ctx.
func (r *Runner) newTask(ctx context.Context, req *event.StepRequested, log *zap.Logger) (*Task, string) {
	m := &Masker{}
	logs := &pendingLogs{}
	var seq int
	var seqMu sync.Mutex
	emit := func(stream string) func(string) {
		return func(text string) {
			seqMu.Lock()
			seq++
			n := seq
			seqMu.Unlock()
			e, err := event.New(r.source, event.TypeStepLog, event.Meta{RunID: req.RunID, StepID: req.StepID, Attempt: req.Attempt},
				event.StepLog{RunID: req.RunID, StepID: req.StepID, Attempt: req.Attempt, Stream: stream, Seq: n, Text: text, Time: time.Now().UTC()})
			if err != nil {
				return
			}
			f, err := bus.PublishAsync(ctx, r.js, event.LogSubject(req.RunID, req.StepID), e)
			if err != nil {
				log.Warn("publish log chunk", zap.Error(err))
				return
			}
			logs.add(f)
		}
	}
	workdir := fmt.Sprintf("%s/ansflow-%s-%s-%d", r.cfg.WorkDir, event.Token(req.RunID), event.Token(req.StepID), req.Attempt)
	var once sync.Once
	var srcErr error
	budget := newLogBudget(r.cfg.MaxLogBytes)
	t := &Task{
		stdout: &logWriter{masker: m, emit: emit(event.Stdout), budget: budget},
		stderr: &logWriter{masker: m, emit: emit(event.Stderr), budget: budget},
		masker: m,
		logs:   logs,
	}
	t.maskOut, t.maskErr = &maskWriter{m: m, w: t.stdout}, &maskWriter{m: m, w: t.stderr}
	t.source = func(ctx context.Context) (string, error) {
		once.Do(func() {
			if err := os.MkdirAll(workdir, 0o755); err != nil {
				srcErr = err
				return
			}
			if r.fetch == nil {
				srcErr = errors.New("runner has no source fetcher")
				return
			}
			srcErr = r.fetch.Fetch(ctx, req.Source, workdir)
		})
		return workdir, srcErr
	}
	return t, workdir
}
