package orchestrator

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// pools is a fixed view of runner pools for decisions.
type pools map[string]runner.PoolStatus

func (p pools) Pool(kind, target string, _ time.Time) runner.PoolStatus {
	s := p[kind+"/"+target]
	s.Kind, s.Target = kind, target
	return s
}

var busyPool = pools{"docker/default": {Online: 1, Slots: 4, Busy: 4, LastSeen: t0}}

func newRun(t *testing.T, yaml string) *store.Run {
	t.Helper()
	p, err := spec.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	r := &store.Run{Run: apiv1.Run{ID: "run-1", Pipeline: p.Name, PipelineVersion: 1, BuildNumber: 7, Status: event.StatusPending,
		CreatedAt: t0, Vars: map[string]apiv1.Var{"git_branch": {Value: "main"}}, Spec: p}}
	for i := range p.Steps {
		st := &p.Steps[i]
		r.Steps = append(r.Steps, &apiv1.StepState{Name: st.Name, ID: st.ID(), Type: st.Type, Status: event.StatusPending,
			Kind: st.Kind(), Outputs: map[string]string{}})
	}
	return r
}

const twoSteps = `
pipeline:
  name: p
  steps:
    - {name: build, type: docker_run, order: 1, docker_image: busybox, docker_config: {command: "true"}}
    - {name: test, type: docker_run, order: 2, docker_image: busybox, docker_config: {command: "true"}, retry_policy: {max_retries: 1, retry_delay_seconds: 5}}
`

// step is a compact expectation of one step's state.
type step struct {
	status   string
	attempts int
	errHas   string
}

type decideCase struct {
	name  string
	yaml  string
	setup func(r *store.Run) // the run's state before the input
	in    Input
	at    time.Duration // env.Now is t0 + at
	pools runner.Pools
	cat   *store.Catalog

	changed  bool
	status   string          // the run's status afterwards
	steps    map[string]step // by step id
	commands []string        // kinds of commands, in order: dispatch:<step>#<attempt>, cancel:<step>, fence:<step>#<attempt>, done
	check    func(t *testing.T, r *store.Run, cmds []Command)
}

func queued(r *store.Run, id string, attempt int, at time.Time) {
	s := r.Step(id)
	s.Status, s.Attempts, s.QueuedAt, s.Target = event.StatusQueued, attempt, &at, "default"
	r.Status, r.StartedAt = event.StatusRunning, &at
	d := at.Add(24 * time.Hour)
	r.Deadline = &d
}

func running(r *store.Run, id string, attempt int, at time.Time) {
	queued(r, id, attempt, at)
	s := r.Step(id)
	s.Status, s.StartedAt, s.Runner = event.StatusRunning, &at, "r1"
}

func succeeded(r *store.Run, id string) {
	s := r.Step(id)
	s.Status, s.Attempts = event.StatusSucceeded, 1
}

func TestDecide(t *testing.T) {
	cases := []decideCase{
		{
			name: "a new run dispatches its first order and sets its deadline", yaml: twoSteps, in: Tick{}, pools: busyPool,
			changed: true, status: event.StatusRunning,
			steps:    map[string]step{"build": {event.StatusQueued, 1, ""}, "test": {event.StatusPending, 0, ""}},
			commands: []string{"dispatch:build#1"},
			check: func(t *testing.T, r *store.Run, cmds []Command) {
				if r.Deadline == nil || !r.Deadline.Equal(t0.Add(24*time.Hour)) {
					t.Errorf("deadline = %v, want the 24h default from creation", r.Deadline)
				}
				if got := cmds[0].Dispatch.TimeoutSeconds; got != 3600 {
					t.Errorf("request timeout = %vs, want the 1h default", got)
				}
			},
		},
		{
			name: "a run whose spec does not match its steps fails instead of panicking", yaml: twoSteps, pools: busyPool,
			setup: func(r *store.Run) {
				queued(r, "build", 1, t0)
				r.Spec = &spec.Pipeline{Name: r.Spec.Name, FromRepository: true} // the stored pipeline, not the file
			},
			in: Tick{}, changed: true, status: event.StatusFailed,
			steps: map[string]step{"build": {event.StatusFailed, 1, "internal error: the run has 2 step states but its spec 0 steps"},
				"test": {event.StatusCancelled, 0, ""}},
			commands: []string{"cancel:build", "done"},
		},
		{
			name: "a busy pool keeps the step queued for as long as it takes", yaml: twoSteps, pools: busyPool, at: 6 * time.Hour,
			setup: func(r *store.Run) { queued(r, "build", 1, t0) }, in: Tick{},
			changed: false, status: event.StatusRunning, steps: map[string]step{"build": {event.StatusQueued, 1, ""}},
		},
		{
			name: "a pool offline for less than the limit keeps the step queued", yaml: twoSteps, at: 9 * time.Minute,
			pools: pools{"docker/default": {LastSeen: t0}}, setup: func(r *store.Run) { queued(r, "build", 1, t0) }, in: Tick{},
			changed: false, steps: map[string]step{"build": {event.StatusQueued, 1, ""}},
		},
		{
			name: "a pool offline for longer than the limit fails the step and fences its attempt", yaml: twoSteps, at: 11 * time.Minute,
			pools: pools{"docker/default": {LastSeen: t0}}, setup: func(r *store.Run) { queued(r, "build", 1, t0) }, in: Tick{},
			changed: true, status: event.StatusFailed,
			steps:    map[string]step{"build": {event.StatusFailed, 1, `no runner of docker pool "default" has been online for 10m0s`}, "test": {event.StatusSkipped, 0, ""}},
			commands: []string{"fence:build#1", "cancel:build", "done"},
		},
		{
			name: "a started for the current attempt marks the step running", yaml: twoSteps, pools: busyPool,
			setup:   func(r *store.Run) { queued(r, "build", 1, t0) },
			in:      Started{RunID: "run-1", StepID: "build", Attempt: 1, Runner: "r1", StartedAt: t0.Add(time.Second)},
			changed: true, steps: map[string]step{"build": {event.StatusRunning, 1, ""}},
		},
		{
			name: "a started of another attempt is stale", yaml: twoSteps, pools: busyPool,
			setup:   func(r *store.Run) { queued(r, "build", 2, t0) },
			in:      Started{RunID: "run-1", StepID: "build", Attempt: 1, Runner: "r1", StartedAt: t0},
			changed: false, steps: map[string]step{"build": {event.StatusQueued, 2, ""}},
		},
		{
			name: "a success dispatches the next order", yaml: twoSteps, pools: busyPool,
			setup:   func(r *store.Run) { running(r, "build", 1, t0) },
			in:      Completed{RunID: "run-1", StepID: "build", Attempt: 1, Status: event.StatusSucceeded, Runner: "r1", FinishedAt: t0},
			changed: true, steps: map[string]step{"build": {event.StatusSucceeded, 1, ""}, "test": {event.StatusQueued, 1, ""}},
			commands: []string{"dispatch:test#1"},
		},
		{
			name: "a completion of an attempt that is not current is ignored", yaml: twoSteps, pools: busyPool,
			setup:   func(r *store.Run) { running(r, "build", 2, t0) },
			in:      Completed{RunID: "run-1", StepID: "build", Attempt: 1, Status: event.StatusSucceeded, Runner: "old"},
			changed: false, steps: map[string]step{"build": {event.StatusRunning, 2, ""}},
		},
		{
			name: "a failure within the retry policy waits for the retry delay", yaml: twoSteps, pools: busyPool,
			setup:   func(r *store.Run) { succeeded(r, "build"); running(r, "test", 1, t0) },
			in:      Completed{RunID: "run-1", StepID: "test", Attempt: 1, Status: event.StatusFailed, Error: "exit code 1"},
			changed: true, status: event.StatusRunning, steps: map[string]step{"test": {event.StatusPending, 1, "exit code 1"}},
			check: func(t *testing.T, r *store.Run, _ []Command) {
				s := r.Step("test")
				if s.NotBefore == nil || !s.NotBefore.Equal(t0.Add(5*time.Second)) || len(s.History) != 1 {
					t.Errorf("not_before = %v, history = %+v", s.NotBefore, s.History)
				}
			},
		},
		{
			name: "the retry is dispatched once its delay is over", yaml: twoSteps, pools: busyPool, at: 6 * time.Second,
			setup: func(r *store.Run) {
				succeeded(r, "build")
				running(r, "test", 1, t0)
				s := r.Step("test")
				nb := t0.Add(5 * time.Second)
				s.Status, s.NotBefore, s.QueuedAt, s.StartedAt = event.StatusPending, &nb, nil, nil
			},
			in: Tick{}, changed: true, steps: map[string]step{"test": {event.StatusQueued, 2, ""}}, commands: []string{"dispatch:test#2"},
		},
		{
			name: "a lost runner's attempt is replaced at once and does not count against retries", yaml: twoSteps, pools: busyPool,
			setup: func(r *store.Run) { running(r, "build", 1, t0) },
			in: Completed{RunID: "run-1", StepID: "build", Attempt: 1, Status: event.StatusFailed, Reason: runner.ReasonRunnerLost,
				Runner: "r1", Error: "runner r1 stopped renewing its lease"},
			changed: true, steps: map[string]step{"build": {event.StatusQueued, 2, ""}}, commands: []string{"dispatch:build#2"},
			check: func(t *testing.T, r *store.Run, cmds []Command) {
				s := r.Step("build")
				if s.LostAttempts != 1 || len(s.History) != 1 || s.History[0].Reason != runner.ReasonRunnerLost || s.History[0].Runner != "r1" {
					t.Errorf("lost = %d, history = %+v", s.LostAttempts, s.History)
				}
				if cmds[0].Dispatch.Reason != runner.ReasonRunnerLost {
					t.Errorf("request reason = %q, want runner_lost so the runner cleans up", cmds[0].Dispatch.Reason)
				}
			},
		},
		{
			name: "a failure after a lost attempt still has the whole retry policy", yaml: twoSteps, pools: busyPool,
			setup: func(r *store.Run) {
				succeeded(r, "build")
				running(r, "test", 2, t0)
				r.Step("test").LostAttempts = 1
			},
			in:      Completed{RunID: "run-1", StepID: "test", Attempt: 2, Status: event.StatusFailed, Error: "exit code 1"},
			changed: true, status: event.StatusRunning, steps: map[string]step{"test": {event.StatusPending, 2, "exit code 1"}},
		},
		{
			name: "a lease fenced by the orchestrator also gives a new attempt", yaml: twoSteps, pools: busyPool,
			setup: func(r *store.Run) {
				running(r, "build", 1, t0)
				r.Step("build").LostAttempts = 0
			},
			in:      AttemptLost{StepID: "build", Attempt: 1, Runner: "r1"},
			changed: true, steps: map[string]step{"build": {event.StatusQueued, 2, ""}}, commands: []string{"dispatch:build#2"},
		},
		{
			name: "a running step past its timeout and grace is failed, fenced and cancelled", yaml: twoSteps, pools: busyPool,
			at:    time.Hour + 31*time.Second,
			setup: func(r *store.Run) { running(r, "build", 1, t0) }, in: Tick{},
			changed: true, status: event.StatusFailed,
			steps:    map[string]step{"build": {event.StatusFailed, 1, "step timed out after 1h0m0s (the runner did not report)"}},
			commands: []string{"fence:build#1", "cancel:build", "done"},
		},
		{
			name: "a dead-lettered request ends its attempt", yaml: twoSteps, pools: busyPool,
			setup: func(r *store.Run) { queued(r, "build", 1, t0) }, in: RequestDead{StepID: "build", Attempt: 1, Reason: "undecodable"},
			changed: true, status: event.StatusFailed,
			steps:    map[string]step{"build": {event.StatusFailed, 1, "the step request was dead-lettered: undecodable"}},
			commands: []string{"done"},
		},
		{
			name: "a cancellation stops queued and running steps and skips the rest", yaml: `
pipeline:
  name: p
  steps:
    - {name: a, type: docker_run, order: 1, docker_image: busybox}
    - {name: b, type: docker_run, order: 1, docker_image: busybox}
    - {name: c, type: docker_run, order: 2, docker_image: busybox}
`, pools: busyPool,
			setup:   func(r *store.Run) { queued(r, "a", 1, t0); running(r, "b", 1, t0) },
			in:      CancelRequested{Reason: "by request"},
			changed: true, status: event.StatusCancelled,
			steps:    map[string]step{"a": {event.StatusCancelled, 1, "by request"}, "b": {event.StatusCancelled, 1, "by request"}, "c": {event.StatusCancelled, 0, ""}},
			commands: []string{"cancel:a", "cancel:b", "done"},
		},
		{
			name: "a run past its deadline fails", yaml: twoSteps, pools: busyPool, at: 25 * time.Hour,
			setup: func(r *store.Run) { queued(r, "build", 1, t0) }, in: Tick{},
			changed: true, status: event.StatusFailed, steps: map[string]step{"build": {event.StatusFailed, 1, "run timed out after 24h0m0s"}},
			commands: []string{"cancel:build", "done"},
		},
		{
			name: "a run of a pipeline at its concurrency limit waits queued", yaml: `
pipeline:
  name: p
  concurrency: 1
  steps: [{name: a, type: docker_run, docker_image: busybox}]
`, pools: busyPool, in: Tick{},
			changed: true, status: event.StatusQueued, steps: map[string]step{"a": {event.StatusPending, 0, ""}},
		},
		{
			name: "an admitted run starts", yaml: `
pipeline:
  name: p
  concurrency: 1
  steps: [{name: a, type: docker_run, docker_image: busybox}]
`, pools: busyPool, setup: func(r *store.Run) { r.Status = event.StatusQueued }, in: Admitted{},
			changed: true, status: event.StatusRunning, steps: map[string]step{"a": {event.StatusQueued, 1, ""}},
			commands: []string{"dispatch:a#1"},
		},
		{
			name: "a registry missing from the catalogue fails the step with a hint", yaml: `
pipeline:
  name: p
  steps: [{name: push, type: docker_push, docker_image: app, docker_registry: prod}]
`, pools: busyPool, in: Tick{},
			changed: true, status: event.StatusFailed,
			steps:    map[string]step{"push": {event.StatusFailed, 1, `registry "prod": not found in the catalogue`}},
			commands: []string{"done"},
		},
		{
			name: "a registry of the catalogue is named in the request", yaml: `
pipeline:
  name: p
  steps: [{name: push, type: docker_push, docker_image: app, docker_registry: prod}]
`, pools: busyPool, in: Tick{}, cat: &store.Catalog{Registries: []*apiv1.Registry{{ID: "1", Name: "prod", URL: "reg.example:5000"}}},
			changed: true, steps: map[string]step{"push": {event.StatusQueued, 1, ""}}, commands: []string{"dispatch:push#1"},
			check: func(t *testing.T, r *store.Run, cmds []Command) {
				if reg := cmds[0].Dispatch.Registry; reg == nil || reg.URL != "reg.example:5000" {
					t.Errorf("registry = %+v", reg)
				}
			},
		},
		{
			name: "a finished run decides nothing", yaml: twoSteps, pools: busyPool,
			setup: func(r *store.Run) { r.Status = event.StatusSucceeded }, in: Tick{}, changed: false,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRun(t, tc.yaml)
			if tc.setup != nil {
				tc.setup(r)
			}
			env := Env{Now: t0.Add(tc.at), Catalog: tc.cat, Pools: tc.pools, Watching: t0}
			env.Policy.defaults()
			changed, cmds := Decide(r, tc.in, env)
			if changed != tc.changed {
				t.Errorf("changed = %v, want %v", changed, tc.changed)
			}
			if tc.status != "" && r.Status != tc.status {
				t.Errorf("run status = %s (%s), want %s", r.Status, r.Error, tc.status)
			}
			for id, want := range tc.steps {
				s := r.Step(id)
				if s.Status != want.status || s.Attempts != want.attempts || (want.errHas != "" && !strings.Contains(s.Error+s.SkipReason, want.errHas)) {
					t.Errorf("step %s = %s attempt %d error %q, want %s attempt %d error containing %q",
						id, s.Status, s.Attempts, s.Error+s.SkipReason, want.status, want.attempts, want.errHas)
				}
			}
			var got []string
			for _, c := range cmds {
				switch {
				case c.Dispatch != nil:
					got = append(got, "dispatch:"+c.Dispatch.StepID+"#"+itoa(c.Dispatch.Attempt))
				case c.Cancel != nil:
					got = append(got, "cancel:"+c.Cancel.StepID)
				case c.Fence != nil:
					got = append(got, "fence:"+c.Fence.StepID+"#"+itoa(c.Fence.Attempt))
				case c.RunDone:
					got = append(got, "done")
				}
			}
			if strings.Join(got, " ") != strings.Join(tc.commands, " ") {
				t.Errorf("commands = %v, want %v", got, tc.commands)
			}
			if tc.check != nil {
				tc.check(t, r, cmds)
			}
		})
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestNextWake(t *testing.T) {
	env := Env{Now: t0.Add(time.Minute), Watching: t0}
	env.Policy.defaults()
	r := newRun(t, twoSteps)
	queued(r, "build", 1, t0)
	env.Pools = pools{"docker/default": {LastSeen: t0}}
	if got, want := NextWake(r, env), t0.Add(10*time.Minute+time.Millisecond); !got.Equal(want) {
		t.Errorf("offline pool: wake %v, want when the no-runner limit passes (%v)", got, want)
	}
	env.Pools = busyPool
	if got, want := NextWake(r, env), env.Now.Add(10*time.Minute+time.Millisecond); !got.Equal(want) {
		t.Errorf("online pool: wake %v, want a no-runner limit from now (%v)", got, want)
	}
	running(r, "build", 1, t0)
	if got, want := NextWake(r, env), t0.Add(time.Hour+30*time.Second+time.Millisecond); !got.Equal(want) {
		t.Errorf("running: wake %v, want its timeout plus grace (%v)", got, want)
	}
}

// TestADecisionThatPanicsFailsTheRun: a decision that panics (here on a
// corrupt step state) fails the run with the panic as its error, cancels
// what it dispatched and reports the stack, instead of taking the service
// down with it.
func TestADecisionThatPanicsFailsTheRun(t *testing.T) {
	r := newRun(t, twoSteps)
	queued(r, "build", 1, t0)
	r.Steps[1] = nil
	var reported any
	var stack []byte
	changed, cmds := decideRecovering(r, Tick{}, Env{Now: t0.Add(time.Minute), Pools: busyPool},
		func(p any, s []byte) { reported, stack = p, s })
	if reported == nil || !strings.Contains(string(stack), "decide") {
		t.Fatalf("panic %v not reported with its stack:\n%s", reported, stack)
	}
	if !changed || r.Status != event.StatusFailed || !strings.Contains(r.Error, "internal error deciding the run: runtime error") {
		t.Fatalf("run changed=%v %s %q", changed, r.Status, r.Error)
	}
	if s := r.Step("build"); s == nil || s.Status != event.StatusFailed {
		t.Fatalf("build step %+v, want failed", s)
	}
	var kinds []string
	for _, c := range cmds {
		switch {
		case c.Cancel != nil:
			kinds = append(kinds, "cancel:"+c.Cancel.StepID)
		case c.RunDone:
			kinds = append(kinds, "done")
		default:
			kinds = append(kinds, "other")
		}
	}
	if strings.Join(kinds, " ") != "cancel:build done" {
		t.Fatalf("commands %v, want cancel:build done", kinds)
	}
}
