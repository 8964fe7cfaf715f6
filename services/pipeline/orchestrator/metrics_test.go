package orchestrator_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/metrics"
	"github.com/ansflow/ansflow/pkg/metrics/metricstest"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/runner/runnertest"
	"github.com/ansflow/ansflow/services/pipeline/orchestrator"
)

// meteredRunner starts a docker runner of pool "default" with slots
// slots that records into m.
func meteredRunner(t *testing.T, ns *natstest.Server, m *metrics.Metrics, slots int) {
	t.Helper()
	nc, js := ns.Connect(t)
	cfg := runner.Config{Kind: event.KindDocker, Targets: []string{"default"}, ID: "metered", Concurrency: slots,
		Lease: 2 * time.Second, Heartbeat: 200 * time.Millisecond, Metrics: m}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = runner.New(cfg, nc, js, &runnertest.Engine{}, nil, zap.NewNop()).Run(ctx) }()
	waitFor(t, 10*time.Second, func() bool {
		for _, ri := range knownRunners(t, ns) {
			if ri.ID == "metered" {
				return true
			}
		}
		return false
	})
}

var pool = metricstest.Labels{metrics.LabelKind: event.KindDocker, metrics.LabelPool: "default"}

// TestMetricsFollowRealRuns drives real runs through the orchestrator and
// the runner loop on one slot, sharing one registry as the embedded stack
// does: a step queued behind the busy slot shows as queue depth 1 and
// later as queue wait, a failed step counts as failed, the step made due
// by a completion is measured as orchestration latency, and the whole
// exposition lints clean.
func TestMetricsFollowRealRuns(t *testing.T) {
	ns := natstest.Run(t)
	m := metrics.New(metrics.Options{PipelineLabel: true})
	e := startEnvCfg(t, ns, orchestrator.Config{Metrics: m})
	meteredRunner(t, ns, m, 1)
	e.apply(t, writePipeline(t, `
pipeline:
  name: metered
  steps:
    - {name: one, type: docker_run, order: 1, docker_image: busybox, docker_config: {command: "sleep 700ms"}}
    - {name: two, type: docker_run, order: 1, docker_image: busybox, docker_config: {command: "sleep 700ms"}}
    - {name: three, type: docker_run, order: 2, docker_image: busybox, docker_config: {command: "echo done"}}
`))
	e.apply(t, writePipeline(t, `
pipeline:
  name: broken
  steps:
    - {name: fails, type: docker_run, docker_image: busybox, docker_config: {command: "exit 3"}}
`))
	run := trigger(t, e, "metered", orchestrator.GitInfo{})

	// While one step runs, the other waits queued behind the one slot.
	metricstest.WaitFor(t, m, metrics.StepsQueued, pool, 5*time.Second, "one queued step",
		func(s metricstest.Sample) bool { return s.Value == 1 })
	if busy := metricstest.Value(t, m, metrics.RunnerSlotsBusy, pool); busy != 1 {
		t.Errorf("runner slots busy = %v while a step runs, want 1", busy)
	}
	if slots := metricstest.Value(t, m, metrics.RunnerSlots, pool); slots != 1 {
		t.Errorf("runner slots = %v, want 1", slots)
	}
	metricstest.WaitFor(t, m, metrics.PoolSlotsBusy, pool, 5*time.Second, "the busy slot announced",
		func(s metricstest.Sample) bool { return s.Value == 1 })
	if got := e.waitRun(t, run.ID, 30*time.Second); got.Status != event.StatusSucceeded {
		t.Fatalf("run %s: %s (%s)", run.ID, got.Status, got.Error)
	}
	failed := trigger(t, e, "broken", orchestrator.GitInfo{})
	if got := e.waitRun(t, failed.ID, 30*time.Second); got.Status != event.StatusFailed {
		t.Fatalf("run %s: %s, want failed", failed.ID, got.Status)
	}

	pipe := func(p, status string) metricstest.Labels {
		l := metricstest.Labels{metrics.LabelPipeline: p}
		if status != "" {
			l[metrics.LabelStatus] = status
		}
		return l
	}
	for _, c := range []struct {
		name   string
		labels metricstest.Labels
		want   float64
	}{
		{metrics.RunsStarted, pipe("metered", ""), 1},
		{metrics.RunsStarted, pipe("broken", ""), 1},
		{metrics.RunsFinished, pipe("metered", event.StatusSucceeded), 1},
		{metrics.RunsFinished, pipe("metered", event.StatusFailed), 0},
		{metrics.RunsFinished, pipe("broken", event.StatusFailed), 1},
		{metrics.StepsQueued, pool, 0},
		{metrics.PoolRunnersOnline, pool, 1},
		{metrics.PoolSlots, pool, 1},
		{metrics.RunnerSlotsBusy, pool, 0},
	} {
		if got := metricstest.Value(t, m, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if s, _ := metricstest.Get(t, m, metrics.RunDuration, pipe("metered", event.StatusSucceeded)); s.Count != 1 || s.Sum < 1.4 {
		t.Errorf("run duration of metered: %v, want one run of at least 1.4s (two 700ms steps on one slot)", s)
	}
	steps := func(status string) metricstest.Labels {
		return metricstest.Labels{metrics.LabelType: "docker_run", metrics.LabelStatus: status}
	}
	if s, _ := metricstest.Get(t, m, metrics.StepDuration, steps(event.StatusSucceeded)); s.Count != 3 || s.Sum < 1.4 {
		t.Errorf("succeeded step durations: %v, want 3 steps summing to at least 1.4s", s)
	}
	if s, _ := metricstest.Get(t, m, metrics.StepDuration, steps(event.StatusFailed)); s.Count != 1 {
		t.Errorf("failed step durations: %v, want the one failed step", s)
	}
	wait, _ := metricstest.Get(t, m, metrics.StepQueueWait, pool)
	if wait.Count != 4 || wait.Sum < 0.5 {
		t.Errorf("queue wait: %v, want 4 claims, one of which waited about 700ms behind the busy slot", wait)
	}
	if wait.Buckets[0.5] > 3 {
		t.Errorf("queue wait buckets %v: the step behind the busy slot should wait over 0.5s", wait.Buckets)
	}
	if s, _ := metricstest.Get(t, m, metrics.OrchestrationLatency, nil); s.Count < 1 || s.Sum <= 0 || s.Sum > 5 {
		t.Errorf("orchestration latency: %v, want step three's dispatch on step two's completion measured", s)
	}
	metricstest.Lint(t, m)
}

// TestQueueDepthIsTheSameOnEveryInstance runs two pipeline instances on
// one JetStream with no runner: the run's two queued steps show on both,
// though only one dispatched them, with no runner online for their pool;
// cancelling the run empties the queue on both.
func TestQueueDepthIsTheSameOnEveryInstance(t *testing.T) {
	ns := natstest.Run(t)
	ma, mb := metrics.New(metrics.Options{}), metrics.New(metrics.Options{})
	a := startEnvCfg(t, ns, orchestrator.Config{Metrics: ma})
	startEnvCfg(t, ns, orchestrator.Config{Metrics: mb})
	a.apply(t, writePipeline(t, `
pipeline:
  name: stranded
  steps:
    - {name: x, type: docker_run, order: 1, runs_on: nobody, docker_image: busybox, docker_config: {command: "echo"}}
    - {name: y, type: docker_run, order: 1, runs_on: nobody, docker_image: busybox, docker_config: {command: "echo"}}
`))
	run := trigger(t, a, "stranded", orchestrator.GitInfo{})
	nobody := metricstest.Labels{metrics.LabelKind: event.KindDocker, metrics.LabelPool: "nobody"}
	for name, m := range map[string]*metrics.Metrics{"dispatching instance": ma, "other instance": mb} {
		metricstest.WaitFor(t, m, metrics.StepsQueued, nobody, 10*time.Second, name+": two queued steps",
			func(s metricstest.Sample) bool { return s.Value == 2 })
		s, found := metricstest.Get(t, m, metrics.PoolRunnersOnline, nobody)
		if !found || s.Value != 0 {
			t.Errorf("%s: runners online for pool nobody = %v (found %v), want a 0 series", name, s.Value, found)
		}
	}
	if _, err := a.svc.Orc.Cancel(context.Background(), run.ID, "test"); err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]*metrics.Metrics{"dispatching instance": ma, "other instance": mb} {
		metricstest.WaitFor(t, m, metrics.StepsQueued, nobody, 10*time.Second, name+": an empty queue",
			func(s metricstest.Sample) bool { return s.Value == 0 })
	}
	if got := metricstest.Value(t, ma, metrics.RunsFinished, metricstest.Labels{metrics.LabelStatus: event.StatusCancelled}) +
		metricstest.Value(t, mb, metrics.RunsFinished, metricstest.Labels{metrics.LabelStatus: event.StatusCancelled}); got != 1 {
		t.Errorf("cancelled runs counted %v times over both instances, want once", got)
	}
}
