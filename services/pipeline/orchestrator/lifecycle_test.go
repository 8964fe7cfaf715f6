package orchestrator_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/pkg/runner/runnertest"
	"github.com/ansflow/ansflow/services/pipeline/orchestrator"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

func writePipeline(t *testing.T, text string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "p.yaml")
	if err := os.WriteFile(f, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

func trigger(t *testing.T, e *env, name string, git orchestrator.GitInfo) *store.Run {
	t.Helper()
	run, err := e.svc.Orc.Trigger(context.Background(), orchestrator.TriggerRequest{Pipeline: name, Git: git, Trigger: apiv1.Trigger{Kind: "test"}})
	if err != nil {
		t.Fatal(err)
	}
	return run
}

func TestCancelStopsInFlightStepsAndSkipsTheRest(t *testing.T) {
	ns := natstest.Run(t)
	e := startEnv(t, ns, true)
	e.apply(t, writePipeline(t, "pipeline:\n  name: cancel-me\n  steps:\n    - name: long\n      type: docker_run\n      command: sleep 60s\n    - name: after\n      type: docker_run\n"))
	run := trigger(t, e, "cancel-me", orchestrator.GitInfo{})
	waitFor(t, 10*time.Second, func() bool {
		r, _ := e.svc.Store.GetRun(context.Background(), run.ID)
		return r.Steps[0].Status == event.StatusRunning
	})
	start := time.Now()
	if _, err := e.svc.Orc.Cancel(context.Background(), run.ID, "test says stop"); err != nil {
		t.Fatal(err)
	}
	r := e.waitRun(t, run.ID, 10*time.Second)
	if r.Status != event.StatusCancelled || r.Steps[0].Status != event.StatusCancelled || r.Steps[1].Status != event.StatusCancelled {
		t.Fatalf("after cancel: run %s, steps %s/%s", r.Status, r.Steps[0].Status, r.Steps[1].Status)
	}
	// the runner was told: the engine's step returned long before its 60s
	waitFor(t, 5*time.Second, func() bool {
		_, err := ns.JS.KeyValue(context.Background(), "ansflow_attempts")
		return err == nil
	})
	if time.Since(start) > 5*time.Second {
		t.Errorf("cancel took %s", time.Since(start))
	}
	if _, err := e.svc.Orc.Cancel(context.Background(), run.ID, "again"); err == nil {
		t.Error("cancelling a finished run succeeded")
	}
}

// TestARerunKeepsWhatTheForgeSaid: a re-run of a fork's pull request run
// is still a fork's run (secret filters see Fork), of the same event and
// repository, so statuses go to the same commit.
func TestARerunKeepsWhatTheForgeSaid(t *testing.T) {
	ns := natstest.Run(t)
	e := startEnv(t, ns, true)
	e.apply(t, writePipeline(t, "pipeline:\n  name: forked\n  steps:\n    - name: a\n      type: docker_run\n      command: exit 1\n"))
	repo := &apiv1.ForgeRepo{APIURL: "https://git.example.com/api/v1/repos/o/r", Owner: "o", Name: "r"}
	run, err := e.svc.Orc.Trigger(context.Background(), orchestrator.TriggerRequest{Pipeline: "forked",
		Trigger: apiv1.Trigger{Kind: "webhook", Provider: "gitea", Event: "pull_request", Fork: true, Repo: repo}})
	if err != nil {
		t.Fatal(err)
	}
	e.waitRun(t, run.ID, 10*time.Second)
	re, err := e.svc.Orc.Rerun(context.Background(), run.ID, apiv1.Trigger{Kind: "rerun", Actor: "user:ada"})
	if err != nil {
		t.Fatal(err)
	}
	if tr := re.Trigger; tr.Kind != "rerun" || tr.Actor != "user:ada" || !tr.Fork || tr.Event != "pull_request" || tr.Provider != "gitea" || tr.Repo == nil || *tr.Repo != *repo {
		t.Errorf("re-run's trigger %+v lost what the forge said", tr)
	}
}

func TestRerunContinuesFromTheFailedStep(t *testing.T) {
	ns := natstest.Run(t)
	e := startEnv(t, ns, true)
	flag := filepath.Join(t.TempDir(), "fixed")
	e.apply(t, writePipeline(t, `pipeline:
  name: rerun-me
  variables:
    flag: "`+flag+`"
  steps:
    - name: build
      type: docker_build
      docker_image: app
    - name: test
      type: docker_run
      command: "needfile {{flag}}; echo {{docker_image}}"
    - name: ship
      type: docker_run
`))
	run := trigger(t, e, "rerun-me", orchestrator.GitInfo{})
	r := e.waitRun(t, run.ID, 10*time.Second)
	if r.Status != event.StatusFailed || r.Steps[1].Status != event.StatusFailed || r.Steps[2].Status != event.StatusSkipped {
		t.Fatalf("first run: %s %s %s", r.Status, r.Steps[1].Status, r.Steps[2].Status)
	}
	before := e.eng.Executed.Load()
	os.WriteFile(flag, nil, 0o644) // someone fixed the environment
	re, err := e.svc.Orc.Rerun(context.Background(), run.ID, apiv1.Trigger{Kind: "rerun"})
	if err != nil {
		t.Fatal(err)
	}
	r2 := e.waitRun(t, re.ID, 10*time.Second)
	if r2.Status != event.StatusSucceeded || r2.RerunOf != run.ID {
		t.Fatalf("rerun: %s (%s)", r2.Status, r2.Error)
	}
	// build was kept; test and ship ran
	if got := e.eng.Executed.Load() - before; got != 2 {
		t.Errorf("rerun executed %d steps, want 2 (test, ship)", got)
	}
	if r2.Steps[1].Logs.Stdout != "app:latest\n" {
		t.Errorf("kept build output did not flow: %q", r2.Steps[1].Logs.Stdout)
	}
	// A succeeded run has nothing to re-run from; re-running all of it
	// runs every step again.
	if _, err := e.svc.Orc.Rerun(context.Background(), r2.ID, apiv1.Trigger{Kind: "rerun"}); !errors.Is(err, orchestrator.ErrInvalid) {
		t.Errorf("rerun of a succeeded run from its failed step: %v, want ErrInvalid", err)
	}
	before = e.eng.Executed.Load()
	all, err := e.svc.Orc.RerunAll(context.Background(), r2.ID, apiv1.Trigger{Kind: "rerun"})
	if err != nil {
		t.Fatal(err)
	}
	if r3 := e.waitRun(t, all.ID, 10*time.Second); r3.Status != event.StatusSucceeded || r3.RerunOf != r2.ID {
		t.Fatalf("rerun all: %s (%s)", r3.Status, r3.Error)
	}
	if got := e.eng.Executed.Load() - before; got != 3 {
		t.Errorf("rerun all executed %d steps, want 3", got)
	}
}

func TestRunTimeout(t *testing.T) {
	ns := natstest.Run(t)
	e := startEnv(t, ns, true)
	e.apply(t, writePipeline(t, "pipeline:\n  name: slow-run\n  timeout: 500ms\n  steps:\n    - name: long\n      type: docker_run\n      command: sleep 60s\n"))
	r := e.waitRun(t, trigger(t, e, "slow-run", orchestrator.GitInfo{}).ID, 10*time.Second)
	if r.Status != event.StatusFailed || !strings.Contains(r.Error, "run timed out") {
		t.Fatalf("run = %s (%s)", r.Status, r.Error)
	}
}

// TestPipelineServiceRestartFinishesTheRun kills the orchestrator while a
// run is in flight, starts a new one on the same JetStream, and checks the
// run completes with every attempt executed exactly once.
func TestPipelineServiceRestartFinishesTheRun(t *testing.T) {
	ns := natstest.Run(t)
	eng := &runnertest.Engine{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	startRunner(ctx, t, ns, eng, event.KindDocker)

	first := startEnvTB(t, ns, nil)
	first.apply(t, writePipeline(t, `pipeline:
  name: restart
  steps:
    - {name: a, type: docker_run, command: "sleep 300ms"}
    - {name: b, type: docker_run, command: "sleep 300ms"}
    - {name: c, type: docker_run, command: "sleep 300ms"}
    - {name: d, type: docker_run, command: "echo done"}
`))
	run := trigger(t, first, "restart", orchestrator.GitInfo{})
	waitFor(t, 10*time.Second, func() bool {
		r, _ := first.svc.Store.GetRun(context.Background(), run.ID)
		return r.Steps[1].Status == event.StatusRunning
	})
	first.stop()
	time.Sleep(800 * time.Millisecond) // b completes while no orchestrator runs

	second := startEnvTB(t, ns, nil)
	r := second.waitRun(t, run.ID, 20*time.Second)
	if r.Status != event.StatusSucceeded {
		t.Fatalf("run after restart: %s (%s)", r.Status, r.Error)
	}
	for _, s := range r.Steps {
		if s.Attempts != 1 {
			t.Errorf("step %s attempts = %d", s.Name, s.Attempts)
		}
	}
	if n := eng.Executed.Load(); n != 4 {
		t.Errorf("engine executed %d attempts, want 4", n)
	}
}

func TestMalformedEventsDoNotStopTheOrchestrator(t *testing.T) {
	ns := natstest.Run(t)
	e := startEnv(t, ns, true)
	// garbage and a completion for a run that does not exist
	if _, err := ns.JS.Publish(context.Background(), "ansflow.events.step.completed.nope", []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	ev, _ := event.New("test", event.TypeStepCompleted, event.Meta{RunID: "ghost"}, event.StepCompleted{RunID: "ghost", StepID: "x", Attempt: 1})
	m, _ := event.ToMsg("ansflow.events.step.completed.ghost", ev)
	if _, err := ns.JS.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	e.apply(t, writePipeline(t, "pipeline:\n  name: still-works\n  steps:\n    - name: a\n      type: docker_run\n"))
	if r := e.waitRun(t, trigger(t, e, "still-works", orchestrator.GitInfo{}).ID, 10*time.Second); r.Status != event.StatusSucceeded {
		t.Fatalf("run = %s", r.Status)
	}
	waitFor(t, 10*time.Second, func() bool {
		s, err := ns.JS.Stream(context.Background(), event.StreamDLQ)
		if err != nil {
			return false
		}
		info, _ := s.Info(context.Background())
		return info.State.Msgs == 2
	})
}

// TestStartIsRecordedForFastAndSlowSteps checks both paths of folding
// step.started: a step that ends at once gets its start from the
// completion, a longer one is shown running while it runs.
func TestStartIsRecordedForFastAndSlowSteps(t *testing.T) {
	ns := natstest.Run(t)
	e := startEnv(t, ns, true)
	e.apply(t, writePipeline(t, `pipeline:
  name: fold
  steps:
    - {name: fast, type: docker_run}
    - {name: slow, type: docker_run, command: "sleep 400ms"}
`))
	run := trigger(t, e, "fold", orchestrator.GitInfo{})
	waitFor(t, 10*time.Second, func() bool {
		r, _ := e.svc.Store.GetRun(context.Background(), run.ID)
		return r.Steps[1].Status == event.StatusRunning
	})
	r := e.waitRun(t, run.ID, 10*time.Second)
	if r.Status != event.StatusSucceeded {
		t.Fatalf("run %s: %s", r.Status, r.Error)
	}
	for _, s := range r.Steps {
		if s.StartedAt == nil || s.FinishedAt == nil || s.Runner == "" || s.StartedAt.After(*s.FinishedAt) {
			t.Errorf("step %s: started %v, finished %v, runner %q", s.Name, s.StartedAt, s.FinishedAt, s.Runner)
		}
	}
}
