package runner_test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/runner/runnertest"
	"github.com/ansflow/ansflow/pkg/secret"
)

type reapingEngine struct {
	runnertest.Engine
	reaped atomic.Int64
}

func (e *reapingEngine) Reap(context.Context, *event.StepRequested, int) error {
	e.reaped.Add(1)
	return nil
}

func startRunner(t *testing.T, s *natstest.Server, eng runner.Engine, id string) (*nats.Conn, context.CancelFunc) {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	js, _ := natsutil.JetStream(nc)
	cfg := runner.Config{Kind: event.KindDocker, Targets: []string{"default"}, ID: id, Lease: time.Second, Concurrency: 2}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _ = runner.New(cfg, nc, js, eng, nil, zap.NewNop()).Run(ctx) }()
	t.Cleanup(func() { cancel(); nc.Close() })
	return nc, cancel
}

// completions collects step.completed events.
type completions struct {
	mu  sync.Mutex
	got []event.StepCompleted
}

func (c *completions) list() []event.StepCompleted {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]event.StepCompleted(nil), c.got...)
}

func watchCompleted(t *testing.T, s *natstest.Server) *completions {
	c := &completions{}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		_ = bus.Consume(ctx, s.JS, bus.ConsumerConfig{Stream: event.StreamEvents, Durable: "watch", FilterSubjects: []string{"ansflow.events.step.completed.*"}},
			func(_ context.Context, e cloudevents.Event) error {
				var d event.StepCompleted
				if err := event.DecodeData(e, &d); err != nil {
					return err
				}
				c.mu.Lock()
				c.got = append(c.got, d)
				c.mu.Unlock()
				return nil
			}, zap.NewNop())
	}()
	return c
}

func request(t *testing.T, s *natstest.Server, run, script string) {
	t.Helper()
	req := event.StepRequested{RunID: run, StepID: "step", Attempt: 1, Type: "docker_run", Kind: event.KindDocker, Target: "default", Command: script}
	e, err := event.New("test", event.TypeStepRequested, event.Meta{RunID: run, StepID: "step", Attempt: 1}, req)
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Publish(context.Background(), s.JS, event.StepRequestedSubject(event.KindDocker, "default"), e); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestKilledRunnerAttemptIsAbandonedNotRerun(t *testing.T) {
	s := natstest.Run(t)
	if err := bus.EnsureStreams(context.Background(), s.JS, 1); err != nil {
		t.Fatal(err)
	}
	done := watchCompleted(t, s)
	first := &reapingEngine{}
	nc1, _ := startRunner(t, s, first, "first")
	waitFor(t, 5*time.Second, func() bool {
		_, err := s.JS.Consumer(context.Background(), event.StreamSteps, runner.DurableName(event.KindDocker, "default"))
		return err == nil
	})
	request(t, s, "run-kill", "sleep 3s; echo finished")
	waitFor(t, 5*time.Second, func() bool { return first.Executed.Load() == 1 })
	nc1.Close() // the runner's process dies: no ack, no completion

	second := &reapingEngine{}
	startRunner(t, s, second, "second")
	waitFor(t, 15*time.Second, func() bool { return len(done.list()) >= 1 })
	got := done.list()[0]
	if got.Status != event.StatusFailed || got.Reason != runner.ReasonRunnerLost || got.Runner != "first" ||
		second.Executed.Load() != 0 || second.reaped.Load() != 1 {
		t.Fatalf("completion = %+v, second executed %d, reaped %d; want the attempt reported lost with the first runner, reaped by the second, not re-executed",
			got, second.Executed.Load(), second.reaped.Load())
	}
}

func TestRedeliveredFinishedAttemptReplaysItsCompletion(t *testing.T) {
	s := natstest.Run(t)
	if err := bus.EnsureStreams(context.Background(), s.JS, 1); err != nil {
		t.Fatal(err)
	}
	done := watchCompleted(t, s)
	eng := &reapingEngine{}
	startRunner(t, s, eng, "r")
	waitFor(t, 5*time.Second, func() bool {
		_, err := s.JS.Consumer(context.Background(), event.StreamSteps, runner.DurableName(event.KindDocker, "default"))
		return err == nil
	})
	request(t, s, "run-replay", "echo once; output k=v")
	waitFor(t, 5*time.Second, func() bool { return len(done.list()) == 1 })
	// the same attempt requested again (a new event id, as after a lost ack)
	request(t, s, "run-replay", "echo once; output k=v")
	time.Sleep(500 * time.Millisecond)
	if n := eng.Executed.Load(); n != 1 {
		t.Fatalf("attempt executed %d times, want once", n)
	}
	c := done.list()[0]
	if c.Status != event.StatusSucceeded || c.Outputs["k"] != "v" || c.StdoutTail != "once\n" {
		t.Errorf("completion = %+v", c)
	}
}

func TestMaskerHidesSecretsInLogs(t *testing.T) {
	m := &runner.Masker{}
	m.Add("s3cr3t-pass")
	m.Add("ab") // too short to mask
	if got := m.Mask("login with s3cr3t-pass ab"); got != "login with **** ab" {
		t.Errorf("Mask = %q", got)
	}
}

// chattyEngine writes chunks × 20 KiB lines to stdout, each write large
// enough to be published as its own log chunk, then a partial line that
// only the runner's final flush publishes.
type chattyEngine struct{ chunks int }

func (chattyEngine) Types() []string { return []string{"docker_run"} }

func (e chattyEngine) Execute(_ context.Context, _ *event.StepRequested, task *runner.Task) (map[string]string, error) {
	line := []byte(strings.Repeat("x", 20<<10) + "\n")
	for i := 0; i < e.chunks; i++ {
		if _, err := task.Stdout().Write(line); err != nil {
			return nil, err
		}
	}
	_, err := task.Stdout().Write([]byte("done, no newline"))
	return nil, err
}

// TestCompletionIsPublishedAfterTheAttemptsLogsAndStart checks the order
// consumers rely on: when a step.completed is delivered, every log chunk of
// the attempt is already in the logs stream, and its step.started precedes
// it in the events stream.
func TestCompletionIsPublishedAfterTheAttemptsLogsAndStart(t *testing.T) {
	s := natstest.Run(t)
	ctx := context.Background()
	if err := bus.EnsureStreams(ctx, s.JS, 1); err != nil {
		t.Fatal(err)
	}
	const chunks = 200
	startRunner(t, s, chattyEngine{chunks: chunks}, "chatty")
	waitFor(t, 5*time.Second, func() bool {
		_, err := s.JS.Consumer(ctx, event.StreamSteps, runner.DurableName(event.KindDocker, "default"))
		return err == nil
	})
	logs, err := s.JS.Stream(ctx, event.StreamLogs)
	if err != nil {
		t.Fatal(err)
	}
	type seen struct {
		logs    uint64
		started bool
	}
	got := make(chan seen, 1)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var startedSeen atomic.Bool
	go func() {
		_ = bus.Consume(cctx, s.JS, bus.ConsumerConfig{Stream: event.StreamEvents, Durable: "order",
			FilterSubjects: []string{"ansflow.events.step.started.*", "ansflow.events.step.completed.*"}},
			func(ctx context.Context, e cloudevents.Event) error {
				if e.Type() == event.TypeStepStarted {
					startedSeen.Store(true)
					return nil
				}
				info, err := logs.Info(ctx, jetstream.WithSubjectFilter(event.LogSubject("run-chatty", "step")))
				if err != nil {
					return err
				}
				got <- seen{logs: info.State.Subjects[event.LogSubject("run-chatty", "step")], started: startedSeen.Load()}
				return nil
			}, zap.NewNop())
	}()
	request(t, s, "run-chatty", "")
	select {
	case g := <-got:
		if g.logs != chunks+1 || !g.started {
			t.Fatalf("at the completion: %d of %d log chunks stored, step.started delivered first: %v", g.logs, chunks+1, g.started)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no completion within 20s")
	}
}

// claimOf reads the claim of attempt 1 of run's step.
func claimOf(t *testing.T, s *natstest.Server, run string) *runner.Claim {
	t.Helper()
	kv, err := s.JS.KeyValue(context.Background(), runner.AttemptsBucket)
	if err != nil {
		return nil
	}
	c, _, err := runner.ReadClaim(context.Background(), kv, runner.AttemptKey(run, "step", 1))
	if err != nil {
		return nil
	}
	return c
}

// TestRunnerThatLostItsLeaseDoesNotReport takes an attempt over while its
// runner still executes it (as after a network partition): the runner's
// next renewal finds the claim changed, stops the step, and publishes no
// completion, so the taker's result is the only one.
func TestRunnerThatLostItsLeaseDoesNotReport(t *testing.T) {
	s := natstest.Run(t)
	ctx := context.Background()
	if err := bus.EnsureStreams(ctx, s.JS, 1); err != nil {
		t.Fatal(err)
	}
	done := watchCompleted(t, s)
	eng := &runnertest.Engine{}
	startRunner(t, s, eng, "partitioned")
	waitFor(t, 5*time.Second, func() bool {
		_, err := s.JS.Consumer(ctx, event.StreamSteps, runner.DurableName(event.KindDocker, "default"))
		return err == nil
	})
	request(t, s, "run-fenced", "sleep 30s; echo finished")
	waitFor(t, 5*time.Second, func() bool { c := claimOf(t, s, "run-fenced"); return c != nil && c.State == runner.ClaimRunning })
	kv, _ := s.JS.KeyValue(ctx, runner.AttemptsBucket)
	// Take it over as if its lease had lapsed: Fence with a clock past it.
	fc, err := runner.Fence(ctx, kv, runner.AttemptKey("run-fenced", "step", 1), "taker", runner.ReasonRunnerLost, time.Now().Add(time.Hour))
	if err != nil || fc.State != runner.ClaimLost {
		t.Fatalf("fence = %+v, %v", fc, err)
	}
	// The runner notices within a renewal period (a third of its 1 s lease)
	// and frees its slot: a second request runs.
	request(t, s, "run-after", "echo next")
	waitFor(t, 10*time.Second, func() bool {
		for _, c := range done.list() {
			if c.RunID == "run-after" {
				return true
			}
		}
		return false
	})
	for _, c := range done.list() {
		if c.RunID == "run-fenced" {
			t.Fatalf("a runner that lost its lease reported the attempt: %+v", c)
		}
	}
	if c := claimOf(t, s, "run-fenced"); c.State != runner.ClaimLost {
		t.Fatalf("claim = %+v, want it left lost", c)
	}
}

// TestRequestsThatAreNotCurrentAreDropped checks that a request of a run
// that is over, or of an attempt the orchestrator fenced, is acknowledged
// without executing.
func TestRequestsThatAreNotCurrentAreDropped(t *testing.T) {
	s := natstest.Run(t)
	ctx := context.Background()
	if err := bus.EnsureStreams(ctx, s.JS, 1); err != nil {
		t.Fatal(err)
	}
	cancels, err := s.JS.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: runner.CancelsBucket})
	if err != nil {
		t.Fatal(err)
	}
	attempts, err := s.JS.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: runner.AttemptsBucket})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cancels.Put(ctx, event.Token("run-over"), []byte("failed")); err != nil {
		t.Fatal(err)
	}
	if _, err := runner.Fence(ctx, attempts, runner.AttemptKey("run-superseded", "step", 1), "orchestrator", "timed out", time.Now()); err != nil {
		t.Fatal(err)
	}
	done := watchCompleted(t, s)
	eng := &runnertest.Engine{}
	startRunner(t, s, eng, "r")
	request(t, s, "run-over", "echo stale")
	request(t, s, "run-superseded", "echo stale")
	request(t, s, "run-current", "echo fresh")
	waitFor(t, 10*time.Second, func() bool { return len(done.list()) >= 1 })
	cons, err := s.JS.Consumer(ctx, event.StreamSteps, runner.DurableName(event.KindDocker, "default"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
	if n := eng.Executed.Load(); n != 1 {
		t.Fatalf("executed %d requests, want only the current one", n)
	}
	if got := done.list(); len(got) != 1 || got[0].RunID != "run-current" {
		t.Fatalf("completions = %+v, want only run-current's", got)
	}
}

// TestRunnerAnnouncesItself checks the presence entry a runner keeps and
// what a Directory makes of it.
func TestRunnerAnnouncesItself(t *testing.T) {
	s := natstest.Run(t)
	ctx := context.Background()
	if err := bus.EnsureStreams(ctx, s.JS, 1); err != nil {
		t.Fatal(err)
	}
	eng := &runnertest.Engine{}
	_, stop := startRunner(t, s, eng, "announced")
	var kv jetstream.KeyValue
	waitFor(t, 5*time.Second, func() bool {
		var err error
		kv, err = s.JS.KeyValue(ctx, runner.RunnersBucket)
		return err == nil
	})
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dir, err := runner.WatchRunners(dctx, kv)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() bool { return dir.Pool(event.KindDocker, "default", time.Now()).Online == 1 })
	request(t, s, "run-busy", "sleep 30s")
	p := dir.Pool(event.KindDocker, "default", time.Now())
	if p.Slots != 2 || p.Reason() == "" {
		t.Fatalf("pool = %+v", p)
	}
	if other := dir.Pool(event.KindDocker, "gpu", time.Now()); other.Online != 0 || other.Reason() != `no runner of docker pool "gpu" online` {
		t.Fatalf("unserved pool = %+v (%s)", other, other.Reason())
	}
	stop()
	waitFor(t, 10*time.Second, func() bool { return dir.Pool(event.KindDocker, "default", time.Now()).Online == 0 })
	rs := dir.Runners()
	if len(rs) != 1 || rs[0].ID != "announced" || !rs[0].Stopped || rs[0].Slots != 2 {
		t.Fatalf("runners = %+v", rs)
	}
}

// A runner without a secrets identity fails a step that asks for secrets,
// naming the flag that would let it, and never executes it.
func TestStepWithSecretsNeedsAnIdentity(t *testing.T) {
	s := natstest.Run(t)
	eng := &runnertest.Engine{}
	startRunner(t, s, eng, "no-identity")
	done := watchCompleted(t, s)
	other, err := secret.GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	b := secret.Binding{RunID: "r-secrets", StepID: "step", Attempt: 1, Name: "T", Env: "T"}
	boxes, err := secret.Seal([]byte("value"), b, []string{other.PublicKey()})
	if err != nil {
		t.Fatal(err)
	}
	req := event.StepRequested{RunID: b.RunID, StepID: b.StepID, Attempt: 1, Type: "docker_run", Kind: event.KindDocker, Target: "default",
		Command: "echo hi", Secrets: []event.SealedSecret{{Name: "T", Env: "T", Boxes: boxes}}}
	e, err := event.New("test", event.TypeStepRequested, event.Meta{RunID: req.RunID, StepID: req.StepID, Attempt: 1}, req)
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Publish(context.Background(), s.JS, event.StepRequestedSubject(event.KindDocker, "default"), e); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() bool { return len(done.list()) == 1 })
	c := done.list()[0]
	if c.Status != event.StatusFailed || !strings.Contains(c.Error, "--secrets-identity") || eng.Executed.Load() != 0 {
		t.Fatalf("completion %s %q, executed %d; want failed naming --secrets-identity, not executed", c.Status, c.Error, eng.Executed.Load())
	}
}
