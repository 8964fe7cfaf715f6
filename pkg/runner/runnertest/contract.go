package runnertest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/pkg/runner"
)

// Contract is what an engine's tests provide to [EngineContract]: the engine
// and steps of its own kind. The suite serves the engine with the real runner
// loop on a real JetStream server, as a runner does.
type Contract struct {
	// Kind is event.KindDocker or event.KindK8s; Target the pool or cluster
	// the requests name.
	Kind, Target string
	// NewEngine returns an engine; the suite calls it once per runner, as
	// each runner process has its own.
	NewEngine func(t testing.TB) runner.Engine
	// Long returns a request (attempt 1 of a fresh run) of a step that runs
	// for minutes unless stopped.
	Long func(t testing.TB) *event.StepRequested
	// Running reports whether the attempt's work runs (a container, a
	// process); the suite waits for it before it interrupts the step.
	Running func(t testing.TB, req *event.StepRequested) bool
	// Leftover reports whether anything the attempt started still exists;
	// the suite waits for it to turn false after the step was stopped or
	// taken over (nil: Running is used).
	Leftover func(t testing.TB, req *event.StepRequested) bool
	// SourceFetcher, if the engine's steps need one.
	SourceFetcher runner.SourceFetcher
}

// EngineContract checks what the runner loop needs of an engine: that a
// cancelled step stops, that a step past its timeout stops, and that after
// its runner is lost mid-step another runner takes the attempt over and
// nothing the lost attempt started keeps running.
func EngineContract(t *testing.T, c Contract) {
	t.Run("cancellation", func(t *testing.T) {
		h := newContractHarness(t, c)
		h.runner("r1", c.NewEngine(t), 30*time.Second, false)
		req := c.Long(t)
		h.publish(req)
		h.waitRunning(req)
		h.cancel(req)
		got := h.completion(req, "completed", 30*time.Second)
		if got.Status != event.StatusCancelled {
			t.Fatalf("completion = %s (%s), want cancelled", got.Status, got.Error)
		}
		h.waitStopped(req)
	})
	t.Run("timeout", func(t *testing.T) {
		h := newContractHarness(t, c)
		h.runner("r1", c.NewEngine(t), 30*time.Second, false)
		req := c.Long(t)
		req.TimeoutSeconds = 3
		h.publish(req)
		h.waitRunning(req)
		got := h.completion(req, "completed", 30*time.Second)
		if got.Status != event.StatusFailed || !strings.Contains(got.Error, "timed out after 3s") {
			t.Fatalf("completion = %s (%q), want failed: timed out after 3s", got.Status, got.Error)
		}
		h.waitStopped(req)
	})
	t.Run("lost runner", func(t *testing.T) {
		h := newContractHarness(t, c)
		const lease = 2 * time.Second
		// The first runner "dies": its connection closes and its engine is
		// never told to stop, as when its process is killed.
		kill := h.runner("lost", c.NewEngine(t), lease, true)
		req := c.Long(t)
		h.publish(req)
		h.waitRunning(req)
		h.runner("taker", c.NewEngine(t), lease, false)
		kill()
		got := h.completion(req, "lost", 60*time.Second)
		if got.Reason != runner.ReasonRunnerLost || got.Runner != "lost" {
			t.Fatalf("takeover completion = %+v, want reason runner_lost naming the lost runner", got)
		}
		h.waitStopped(req)
		if n := h.completions(req, "completed"); n != 0 {
			t.Fatalf("the lost attempt was also reported completed %d times", n)
		}
	})
}

type contractHarness struct {
	t  *testing.T
	c  Contract
	ns *natstest.Server

	mu   sync.Mutex
	seen map[string]event.StepCompleted // event id -> completion
}

func newContractHarness(t *testing.T, c Contract) *contractHarness {
	h := &contractHarness{t: t, c: c, ns: natstest.Run(t), seen: map[string]event.StepCompleted{}}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := bus.EnsureStreams(ctx, h.ns.JS, 1); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = bus.Consume(ctx, h.ns.JS, bus.ConsumerConfig{Stream: event.StreamEvents, Durable: "contract",
			FilterSubjects: []string{"ansflow.events.step.completed.*"}},
			func(_ context.Context, e cloudevents.Event) error {
				var d event.StepCompleted
				if err := event.DecodeData(e, &d); err != nil {
					return bus.Permanent(err)
				}
				h.mu.Lock()
				h.seen[e.ID()] = d
				h.mu.Unlock()
				return nil
			}, zap.NewNop())
	}()
	return h
}

// detached is an engine whose attempts are never told to stop: what a
// runner process killed mid-step leaves behind.
type detached struct{ runner.Engine }

func (d detached) Execute(ctx context.Context, req *event.StepRequested, task *runner.Task) (map[string]string, error) {
	return d.Engine.Execute(context.WithoutCancel(ctx), req, task)
}

// runner starts a runner loop on its own connection; the returned function
// closes that connection, as a killed process would.
func (h *contractHarness) runner(id string, eng runner.Engine, lease time.Duration, dies bool) (kill func()) {
	h.t.Helper()
	nc, err := nats.Connect(h.ns.ClientURL())
	if err != nil {
		h.t.Fatal(err)
	}
	js, err := natsutil.JetStream(nc)
	if err != nil {
		h.t.Fatal(err)
	}
	if dies {
		eng = detached{eng}
	}
	cfg := runner.Config{Kind: h.c.Kind, Targets: []string{h.c.Target}, ID: id, Concurrency: 2, Lease: lease,
		Heartbeat: 500 * time.Millisecond, WorkDir: h.t.TempDir()}
	if err := cfg.Validate(); err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var running atomic.Bool
	running.Store(true)
	go func() {
		defer running.Store(false)
		_ = runner.New(cfg, nc, js, eng, h.c.SourceFetcher, zap.NewNop()).Run(ctx)
	}()
	kill = sync.OnceFunc(func() { nc.Close(); cancel() })
	h.t.Cleanup(kill)
	h.eventually(15*time.Second, func() bool {
		_, err := h.ns.JS.Consumer(context.Background(), event.StreamSteps, runner.DurableName(h.c.Kind, h.c.Target))
		return err == nil
	}, "runner %s did not start", id)
	return kill
}

func (h *contractHarness) publish(req *event.StepRequested) {
	h.t.Helper()
	e, err := event.New("contract", event.TypeStepRequested, event.Meta{RunID: req.RunID, StepID: req.StepID, Attempt: req.Attempt}, req)
	if err != nil {
		h.t.Fatal(err)
	}
	e.SetID("req-" + runner.AttemptKey(req.RunID, req.StepID, req.Attempt))
	if err := bus.Publish(context.Background(), h.ns.JS, event.StepRequestedSubject(req.Kind, req.Target), e); err != nil {
		h.t.Fatal(err)
	}
}

func (h *contractHarness) cancel(req *event.StepRequested) {
	h.t.Helper()
	c := event.StepCancel{RunID: req.RunID, StepID: req.StepID, Reason: "cancelled by the contract"}
	e, err := event.New("contract", event.TypeStepCancel, event.Meta{RunID: req.RunID, StepID: req.StepID}, c)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := bus.Publish(context.Background(), h.ns.JS, event.LifecycleSubject(event.TypeStepCancel, req.RunID), e); err != nil {
		h.t.Fatal(err)
	}
}

func (h *contractHarness) waitRunning(req *event.StepRequested) {
	h.t.Helper()
	h.eventually(2*time.Minute, func() bool { return h.c.Running(h.t, req) }, "the step of %s never ran", req.RunID)
}

func (h *contractHarness) waitStopped(req *event.StepRequested) {
	h.t.Helper()
	left := h.c.Leftover
	if left == nil {
		left = h.c.Running
	}
	h.eventually(30*time.Second, func() bool { return !left(h.t, req) }, "the step of %s left something behind", req.RunID)
}

// completion waits for req's attempt's completion published under prefix
// ("completed" by its runner, "lost" by a takeover).
func (h *contractHarness) completion(req *event.StepRequested, prefix string, d time.Duration) event.StepCompleted {
	h.t.Helper()
	id := prefix + "-" + runner.AttemptKey(req.RunID, req.StepID, req.Attempt)
	var got event.StepCompleted
	h.eventually(d, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		c, ok := h.seen[id]
		got = c
		return ok
	}, "no %s completion of %s", prefix, req.RunID)
	return got
}

func (h *contractHarness) completions(req *event.StepRequested, prefix string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, ok := h.seen[prefix+"-"+runner.AttemptKey(req.RunID, req.StepID, req.Attempt)]
	if ok {
		return 1
	}
	return 0
}

func (h *contractHarness) eventually(d time.Duration, cond func() bool, format string, args ...any) {
	h.t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("after %s: %s", d, fmt.Sprintf(format, args...))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
