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
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
)

// Buckets shared by runners and the pipeline service.
const (
	// AttemptsBucket records each claimed (run, step, attempt) and, once
	// done, its completion, so a redelivered request is never executed
	// twice.
	AttemptsBucket = "ansflow_attempts"
	// CancelsBucket holds one key per cancelled run.
	CancelsBucket = "ansflow_cancels"
)

// Config configures a [Runner].
type Config struct {
	// Kind is event.KindDocker or event.KindK8s.
	Kind string
	// Targets are the pools (docker) or clusters (k8s) served.
	Targets []string
	// ID names this runner instance in events.
	ID string
	// Concurrency bounds attempts executed at once (default 2).
	Concurrency int
	// DefaultTimeout bounds an attempt whose request sets none (default 1h).
	DefaultTimeout time.Duration
	// WorkDir is where sources are unpacked (default os.TempDir()).
	WorkDir string
	// AckWait is the consumer's redelivery timeout (default 30s).
	AckWait time.Duration
	// Grace is how long running steps may finish after Run's context ends
	// (a SIGTERM) before they are stopped and left to be reported abandoned
	// (default 0).
	Grace time.Duration
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
		c.DefaultTimeout = time.Hour
	}
	if c.WorkDir == "" {
		c.WorkDir = os.TempDir()
	}
	if c.AckWait <= 0 {
		c.AckWait = 30 * time.Second
	}
	return nil
}

// DurableName is the durable consumer shared by every runner of kind serving
// target.
func DurableName(kind, target string) string { return "runner-" + kind + "-" + event.Token(target) }

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
	mu        sync.Mutex
	running   map[string]context.CancelCauseFunc // run/step -> cancel
	cancelled map[string]bool                    // run ids (as tokens) cancelled
}

// New returns a runner; cfg must have passed Validate.
func New(cfg Config, nc *nats.Conn, js jetstream.JetStream, eng Engine, fetch SourceFetcher, log *zap.Logger) *Runner {
	r := &Runner{cfg: cfg, nc: nc, js: js, eng: eng, fetch: fetch, log: log.With(zap.String("runner", cfg.ID)),
		types: map[string]bool{}, running: map[string]context.CancelCauseFunc{}, cancelled: map[string]bool{},
		source: "ansflow/" + cfg.Kind + "-runner/" + cfg.ID}
	for _, t := range eng.Types() {
		r.types[t] = true
	}
	return r
}

// Run serves every configured target until ctx is done.
func (r *Runner) Run(ctx context.Context) error {
	if err := bus.EnsureStreams(ctx, r.js, 1); err != nil {
		return err
	}
	attempts, err := r.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: AttemptsBucket, TTL: 14 * 24 * time.Hour})
	if err != nil {
		return fmt.Errorf("attempts bucket: %w", err)
	}
	cancels, err := r.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: CancelsBucket, TTL: 14 * 24 * time.Hour})
	if err != nil {
		return fmt.Errorf("cancels bucket: %w", err)
	}
	if err := r.watchCancels(ctx, cancels); err != nil {
		return err
	}
	sub, err := r.nc.Subscribe("ansflow.events.step.cancel.*", r.onCancel)
	if err != nil {
		return fmt.Errorf("subscribe to cancellations: %w", err)
	}
	defer sub.Unsubscribe()

	g, ctx := errgroup.WithContext(ctx)
	for _, target := range r.cfg.Targets {
		cc := bus.ConsumerConfig{
			Stream:         event.StreamSteps,
			Durable:        DurableName(r.cfg.Kind, target),
			FilterSubjects: []string{event.StepRequestedSubject(r.cfg.Kind, target)},
			MaxDeliver:     5,
			AckWait:        r.cfg.AckWait,
			Concurrency:    r.cfg.Concurrency,
			Grace:          r.cfg.Grace,
		}
		h := func(ctx context.Context, e cloudevents.Event) error { return r.handle(ctx, e, attempts) }
		g.Go(func() error { return bus.Consume(ctx, r.js, cc, bus.Chain(h, bus.KnownTypes()), r.log) })
	}
	r.log.Info("runner ready", zap.String("kind", r.cfg.Kind), zap.Strings("targets", r.cfg.Targets),
		zap.Int("concurrency", r.cfg.Concurrency))
	return g.Wait()
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

type claim struct {
	State     string               `json:"state"` // running or done
	Runner    string               `json:"runner"`
	Completed *event.StepCompleted `json:"completed,omitempty"`
}

func attemptKey(req *event.StepRequested) string {
	return event.Token(req.RunID) + "." + event.Token(req.StepID) + "." + fmt.Sprint(req.Attempt)
}

// watchCancels keeps the set of cancelled runs in memory, so checking a
// request against it costs no round trip. It returns once the bucket's
// current keys are loaded.
func (r *Runner) watchCancels(ctx context.Context, cancels jetstream.KeyValue) error {
	w, err := cancels.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch cancellations: %w", err)
	}
	loaded := make(chan struct{})
	go func() {
		defer w.Stop()
		once := sync.OnceFunc(func() { close(loaded) })
		defer once()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e == nil {
					once()
					continue
				}
				r.mu.Lock()
				if e.Operation() == jetstream.KeyValuePut {
					r.cancelled[e.Key()] = true
				} else {
					delete(r.cancelled, e.Key())
				}
				r.mu.Unlock()
			}
		}
	}()
	select {
	case <-loaded:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
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
	key := attemptKey(&req)
	mine, _ := json.Marshal(claim{State: "running", Runner: r.cfg.ID})
	if _, err := attempts.Create(ctx, key, mine); err != nil {
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("claim attempt %s: %w", key, err) // retryable
		}
		return r.redelivered(ctx, &req, attempts, key, log)
	}

	now := time.Now().UTC()
	done := func(status string, exit *int, outputs map[string]string, msg string, task *Task) error {
		c := &event.StepCompleted{RunID: req.RunID, StepID: req.StepID, Attempt: req.Attempt, Status: status,
			ExitCode: exit, Outputs: outputs, Error: msg, Runner: r.cfg.ID, StartedAt: now, FinishedAt: time.Now().UTC()}
		if task != nil {
			c.StdoutTail, c.StderrTail = task.stdout.Tail(), task.stderr.Tail()
		}
		return r.complete(ctx, c, attempts, key)
	}
	if !r.types[req.Type] {
		return done(event.StatusFailed, nil, nil, fmt.Sprintf("runner %s does not execute step type %q", r.cfg.ID, req.Type), nil)
	}
	r.mu.Lock()
	cancelled := r.cancelled[event.Token(req.RunID)]
	r.mu.Unlock()
	if cancelled {
		return done(event.StatusCancelled, nil, nil, "run was cancelled before the step started", nil)
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
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.running, runKey)
		r.mu.Unlock()
	}()

	started, err := event.New(r.source, event.TypeStepStarted, event.Meta{RunID: req.RunID, StepID: req.StepID, Attempt: req.Attempt},
		event.StepStarted{RunID: req.RunID, StepID: req.StepID, Attempt: req.Attempt, Runner: r.cfg.ID, StartedAt: now})
	if err != nil {
		return bus.Permanent(err)
	}
	started.SetID(fmt.Sprintf("started-%s", key))
	if _, err := bus.PublishAsync(r.js, event.LifecycleSubject(event.TypeStepStarted, req.RunID), started); err != nil {
		log.Warn("publish step.started", zap.Error(err))
	}

	task, workdir := r.newTask(&req, log)
	defer os.RemoveAll(workdir)
	stop := make(chan struct{})
	go flushEvery(200*time.Millisecond, stop, task.stdout, task.stderr)
	outputs, execErr := r.eng.Execute(sctx, &req, task)
	close(stop)
	task.stdout.Flush(true)
	task.stderr.Flush(true)
	if err := task.logs.wait(ctx, 5*time.Second); err != nil {
		log.Warn("log chunks not stored before the completion", zap.Error(err))
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
// finished attempt's completion, or abandon an attempt whose runner died.
func (r *Runner) redelivered(ctx context.Context, req *event.StepRequested, attempts jetstream.KeyValue, key string, log *zap.Logger) error {
	entry, err := attempts.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("read claim %s: %w", key, err)
	}
	var c claim
	if err := json.Unmarshal(entry.Value(), &c); err != nil {
		return bus.Permanent(fmt.Errorf("claim %s is corrupt: %w", key, err))
	}
	if c.State == "done" && c.Completed != nil {
		log.Info("attempt already completed; replaying its completion")
		return r.publishCompleted(ctx, c.Completed)
	}
	r.mu.Lock()
	_, local := r.running[req.RunID+"/"+req.StepID]
	r.mu.Unlock()
	if local {
		return nil // still executing here; heartbeats keep it
	}
	log.Warn("attempt was claimed by a runner that stopped; abandoning it", zap.String("claimed_by", c.Runner))
	if reaper, ok := r.eng.(Reaper); ok {
		if err := reaper.Reap(ctx, req.RunID, req.StepID, req.Attempt); err != nil {
			log.Warn("reap abandoned attempt", zap.Error(err))
		}
	}
	now := time.Now().UTC()
	return r.complete(ctx, &event.StepCompleted{RunID: req.RunID, StepID: req.StepID, Attempt: req.Attempt,
		Status: event.StatusFailed, Runner: r.cfg.ID, StartedAt: now, FinishedAt: now,
		Error: fmt.Sprintf("runner %s stopped while executing attempt %d; the attempt was abandoned", c.Runner, req.Attempt)},
		attempts, key)
}

// complete publishes the attempt's completion, then records it in the
// claim. The order keeps the next step's dispatch off the record's round
// trip; a crash in between leaves a "running" claim whose redelivery
// publishes an "abandoned" completion under the same event id, which the
// stream drops as a duplicate, so the published result stands.
func (r *Runner) complete(ctx context.Context, c *event.StepCompleted, attempts jetstream.KeyValue, key string) error {
	if err := r.publishCompleted(ctx, c); err != nil {
		return err
	}
	b, _ := json.Marshal(claim{State: "done", Runner: r.cfg.ID, Completed: c})
	if _, err := attempts.Put(ctx, key, b); err != nil {
		return fmt.Errorf("record completion of %s: %w", key, err)
	}
	return nil
}

func (r *Runner) publishCompleted(ctx context.Context, c *event.StepCompleted) error {
	e, err := event.New(r.source, event.TypeStepCompleted, event.Meta{RunID: c.RunID, StepID: c.StepID, Attempt: c.Attempt}, c)
	if err != nil {
		return bus.Permanent(err)
	}
	e.SetID(fmt.Sprintf("completed-%s.%s.%d", event.Token(c.RunID), event.Token(c.StepID), c.Attempt))
	return bus.Publish(ctx, r.js, event.LifecycleSubject(event.TypeStepCompleted, c.RunID), e)
}

func (r *Runner) newTask(req *event.StepRequested, log *zap.Logger) (*Task, string) {
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
			f, err := bus.PublishAsync(r.js, event.LogSubject(req.RunID, req.StepID), e)
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
	t := &Task{
		stdout: &logWriter{masker: m, emit: emit(event.Stdout)},
		stderr: &logWriter{masker: m, emit: emit(event.Stderr)},
		masker: m,
		logs:   logs,
	}
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
