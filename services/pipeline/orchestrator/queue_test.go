package orchestrator_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/runner/runnertest"
	"github.com/ansflow/ansflow/services/pipeline/orchestrator"
	"github.com/ansflow/ansflow/services/pipeline/service"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// countingEngine records how many attempts execute at once, and which.
type countingEngine struct {
	runnertest.Engine
	mu       sync.Mutex
	now, max int
	attempts map[string]int // step -> attempts executed
}

func (e *countingEngine) Execute(ctx context.Context, req *event.StepRequested, task *runner.Task) (map[string]string, error) {
	e.mu.Lock()
	e.now++
	e.max = max(e.max, e.now)
	if e.attempts == nil {
		e.attempts = map[string]int{}
	}
	e.attempts[req.RunID+"/"+req.StepID]++
	e.mu.Unlock()
	defer func() { e.mu.Lock(); e.now--; e.mu.Unlock() }()
	return e.Engine.Execute(ctx, req, task)
}

func (e *countingEngine) peak() int { e.mu.Lock(); defer e.mu.Unlock(); return e.max }

func (e *countingEngine) executed(key string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.attempts[key]
}

// startEnvCfg is a pipeline service with orchestrator cfg on real
// JetStream, without runners: tests start them with runnerAt.
func startEnvCfg(t testing.TB, ns *natstest.Server, cfg orchestrator.Config) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	svc, err := service.New(ctx, service.Config{HTTPAddr: "127.0.0.1:0", Orchestrator: cfg}, ns.JS, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	e := &env{ns: ns, svc: svc}
	done := make(chan struct{})
	go func() { defer close(done); _ = svc.Orc.Run(ctx) }()
	e.stop = func() { cancel(); <-done }
	t.Cleanup(e.stop)
	return e
}

// runnerAt starts a docker runner of pool "default" on its own connection
// and returns a function that kills it: its connection closes at once, as
// when its process dies, so it can neither renew nor report.
func runnerAt(t testing.TB, ns *natstest.Server, eng runner.Engine, id string, slots int, lease time.Duration) (kill func()) {
	t.Helper()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	js, err := natsutil.JetStream(nc)
	if err != nil {
		t.Fatal(err)
	}
	cfg := runner.Config{Kind: event.KindDocker, Targets: []string{"default"}, ID: id, Concurrency: slots, Lease: lease, Heartbeat: 200 * time.Millisecond}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _ = runner.New(cfg, nc, js, eng, nil, zap.NewNop()).Run(ctx) }()
	kill = sync.OnceFunc(func() { nc.Close(); cancel() })
	t.Cleanup(kill)
	waitFor(t, 10*time.Second, func() bool {
		for _, ri := range knownRunners(t, ns) {
			if ri.ID == id {
				return true
			}
		}
		return false
	})
	return kill
}

// knownRunners lists the runners the runners bucket holds.
func knownRunners(t testing.TB, ns *natstest.Server) []runner.RunnerInfo {
	kv, err := ns.JS.KeyValue(context.Background(), runner.RunnersBucket)
	if err != nil {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, err := runner.WatchRunners(ctx, kv)
	if err != nil {
		return nil
	}
	return d.Runners()
}

// TestMoreParallelStepsThanSlotsWaitInTheQueue is the new user's case: six
// parallel steps on a pool with two slots. The steps wait queued, saying
// why, and all succeed once slots free up; never more than two run at once.
func TestMoreParallelStepsThanSlotsWaitInTheQueue(t *testing.T) {
	ns := natstest.Run(t)
	e := startEnvCfg(t, ns, orchestrator.Config{})
	eng := &countingEngine{}
	runnerAt(t, ns, eng, "two-slots", 2, 2*time.Second)
	var steps strings.Builder
	for i := 1; i <= 6; i++ {
		fmt.Fprintf(&steps, "    - {name: s%d, type: docker_run, order: 1, docker_image: busybox, docker_config: {command: \"sleep 1500ms\"}}\n", i)
	}
	e.apply(t, writePipeline(t, "pipeline:\n  name: wide\n  steps:\n"+steps.String()))
	run := trigger(t, e, "wide", orchestrator.GitInfo{})
	sawWhy := false
	waitFor(t, 10*time.Second, func() bool {
		r, err := e.svc.Store.GetRun(context.Background(), run.ID)
		if err != nil {
			return false
		}
		e.svc.Orc.Annotate(r)
		for _, s := range r.Steps {
			if s.Status == event.StatusQueued && s.QueuedAt != nil && s.Waiting == `2 of 2 slots busy in docker pool "default"` {
				sawWhy = true
			}
		}
		return sawWhy
	})
	got := e.waitRun(t, run.ID, 30*time.Second)
	if got.Status != event.StatusSucceeded {
		t.Fatalf("run = %s (%s), want succeeded", got.Status, got.Error)
	}
	for _, s := range got.Steps {
		if s.Attempts != 1 || s.Status != event.StatusSucceeded {
			t.Errorf("step %s: %s after %d attempts (%s)", s.Name, s.Status, s.Attempts, s.Error)
		}
	}
	if p := eng.peak(); p > 2 {
		t.Errorf("%d steps ran at once on a runner with 2 slots", p)
	}
}

// TestALostRunnersStepIsTakenOver kills a runner mid-step: after its lease
// lapses the other runner of the pool takes the step over, and the step's
// new attempt is recorded as runner_lost without counting against its
// retry policy (it has none).
func TestALostRunnersStepIsTakenOver(t *testing.T) {
	ns := natstest.Run(t)
	e := startEnvCfg(t, ns, orchestrator.Config{})
	first, second := &countingEngine{}, &countingEngine{}
	kill := runnerAt(t, ns, first, "first", 1, time.Second)
	e.apply(t, writePipeline(t, `
pipeline:
  name: takeover
  steps:
    - {name: long, type: docker_run, docker_image: busybox, docker_config: {command: "sleep 3s; echo done"}}
`))
	run := trigger(t, e, "takeover", orchestrator.GitInfo{})
	waitFor(t, 10*time.Second, func() bool { return first.peak() == 1 })
	runnerAt(t, ns, second, "second", 1, time.Second)
	kill()
	got := e.waitRun(t, run.ID, 30*time.Second)
	s := got.Steps[0]
	if got.Status != event.StatusSucceeded || s.Attempts != 2 || s.LostAttempts != 1 || s.Runner != "second" {
		t.Fatalf("run %s, step %s attempts %d lost %d runner %s (%s); want success on the second runner's attempt 2",
			got.Status, s.Status, s.Attempts, s.LostAttempts, s.Runner, s.Error)
	}
	if len(s.History) != 1 || s.History[0].Reason != runner.ReasonRunnerLost || s.History[0].Runner != "first" {
		t.Fatalf("history = %+v, want attempt 1 lost with runner first", s.History)
	}
	if n := second.executed(run.ID + "/long"); n != 1 {
		t.Errorf("second runner executed the step %d times, want once", n)
	}
}

// TestTheOrchestratorTakesOverWhenNoRunnerIsLeft kills the pool's only
// runner mid-step: the orchestrator's lease check fences the attempt and
// queues a new one, which a runner started later executes; the old request
// it is also handed is dropped.
func TestTheOrchestratorTakesOverWhenNoRunnerIsLeft(t *testing.T) {
	ns := natstest.Run(t)
	e := startEnvCfg(t, ns, orchestrator.Config{LeaseCheck: 500 * time.Millisecond})
	first := &countingEngine{}
	kill := runnerAt(t, ns, first, "only", 1, time.Second)
	e.apply(t, writePipeline(t, `
pipeline:
  name: backstop
  steps:
    - {name: long, type: docker_run, docker_image: busybox, docker_config: {command: "sleep 20s"}}
`))
	run := trigger(t, e, "backstop", orchestrator.GitInfo{})
	waitFor(t, 10*time.Second, func() bool { return first.peak() == 1 })
	kill()
	waitFor(t, 20*time.Second, func() bool {
		r, err := e.svc.Store.GetRun(context.Background(), run.ID)
		return err == nil && r.Steps[0].Attempts == 2 && r.Steps[0].Status == event.StatusQueued
	})
	later := &countingEngine{}
	runnerAt(t, ns, later, "later", 2, time.Second)
	got := e.waitRun(t, run.ID, 40*time.Second)
	s := got.Steps[0]
	if got.Status != event.StatusSucceeded || s.Attempts != 2 || s.LostAttempts != 1 {
		t.Fatalf("run %s, step attempts %d lost %d (%s)", got.Status, s.Attempts, s.LostAttempts, s.Error)
	}
	if n := later.executed(run.ID + "/long"); n != 1 {
		t.Errorf("the later runner executed the step %d times, want once (attempt 2 only)", n)
	}
}

// TestPipelineConcurrencyLimitQueuesRuns triggers three runs of a pipeline
// limited to one at a time: they run one after the other, oldest first.
func TestPipelineConcurrencyLimitQueuesRuns(t *testing.T) {
	ns := natstest.Run(t)
	e := startEnvCfg(t, ns, orchestrator.Config{})
	eng := &countingEngine{}
	runnerAt(t, ns, eng, "r", 4, 2*time.Second)
	e.apply(t, writePipeline(t, `
pipeline:
  name: serial
  concurrency: 1
  steps:
    - {name: work, type: docker_run, docker_image: busybox, docker_config: {command: "sleep 2s"}}
`))
	var runs []*store.Run
	for i := 0; i < 3; i++ {
		runs = append(runs, trigger(t, e, "serial", orchestrator.GitInfo{}))
	}
	if runs[1].Status != event.StatusQueued || runs[2].Status != event.StatusQueued {
		t.Errorf("later runs are %s and %s, want queued", runs[1].Status, runs[2].Status)
	}
	e.svc.Orc.Annotate(runs[2])
	if want := `waiting for one of the 1 concurrency slots of pipeline "serial"`; runs[2].Waiting != want {
		t.Errorf("queued run waiting = %q, want %q", runs[2].Waiting, want)
	}
	var done []*store.Run
	for _, r := range runs {
		done = append(done, e.waitRun(t, r.ID, 30*time.Second))
	}
	for i, r := range done {
		if r.Status != event.StatusSucceeded {
			t.Fatalf("run %d: %s (%s)", i, r.Status, r.Error)
		}
		if i > 0 && r.StartedAt.Before(*done[i-1].FinishedAt) {
			t.Errorf("run %d started at %s, before run %d finished at %s", i, r.StartedAt, i-1, done[i-1].FinishedAt)
		}
	}
	if p := eng.peak(); p != 1 {
		t.Errorf("%d runs' steps ran at once, want 1", p)
	}
}

// TestCancelPreviousCancelsOlderRunsOfTheBranch checks cancel_previous: a
// new run cancels the older active run of its branch, not another branch's.
func TestCancelPreviousCancelsOlderRunsOfTheBranch(t *testing.T) {
	ns := natstest.Run(t)
	e := startEnvCfg(t, ns, orchestrator.Config{})
	runnerAt(t, ns, &countingEngine{}, "r", 4, 2*time.Second)
	e.apply(t, writePipeline(t, `
pipeline:
  name: interruptible
  cancel_previous: true
  steps:
    - {name: work, type: docker_run, docker_image: busybox, docker_config: {command: "sleep 2s"}}
`))
	oldMain := trigger(t, e, "interruptible", orchestrator.GitInfo{Branch: "main"})
	other := trigger(t, e, "interruptible", orchestrator.GitInfo{Branch: "feature"})
	newMain := trigger(t, e, "interruptible", orchestrator.GitInfo{Branch: "main"})
	if r := e.waitRun(t, oldMain.ID, 20*time.Second); r.Status != event.StatusCancelled || !strings.Contains(r.Error, "cancel_previous") {
		t.Errorf("older main run = %s (%s), want cancelled by cancel_previous", r.Status, r.Error)
	}
	for _, id := range []string{other.ID, newMain.ID} {
		if r := e.waitRun(t, id, 20*time.Second); r.Status != event.StatusSucceeded {
			t.Errorf("run %s = %s (%s), want succeeded", id, r.Status, r.Error)
		}
	}
}
