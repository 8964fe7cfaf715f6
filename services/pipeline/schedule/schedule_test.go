package schedule_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/services/pipeline/pipelinetest"
	"github.com/ansflow/ansflow/services/pipeline/schedule"
	"github.com/ansflow/ansflow/services/pipeline/service"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

const pipelineYAML = `pipeline:
  name: nightly
  triggers:
    - type: cron
      schedule: "*/5 * * * *"
      branch: main
  steps:
    - name: show
      type: docker_run
      command: "echo {{git_branch}}"
`

const every5 = "*/5 * * * *"

type fixture struct {
	env *pipelinetest.Env
	// due is a minute the schedule fires at, after the pipeline was stored.
	due    time.Time
	stored time.Time
}

func setup(t *testing.T) *fixture {
	t.Helper()
	env := pipelinetest.Start(t)
	p, err := spec.Parse("nightly.yaml", []byte(pipelineYAML))
	if err != nil {
		t.Fatal(err)
	}
	rec, err := env.Svc.Store.PutPipeline(context.Background(), p, pipelineYAML, "test")
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{env: env, stored: rec.UpdatedAt, due: rec.UpdatedAt.UTC().Truncate(5 * time.Minute).Add(5 * time.Minute)}
}

// instance starts another pipeline service on the same JetStream, whose
// scheduler competes with the fixture's.
func (f *fixture) instance(t *testing.T) *service.Service {
	t.Helper()
	other, err := service.New(context.Background(), service.Config{HTTPAddr: "127.0.0.1:0"}, f.env.NATS.JS, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	return other
}

func (f *fixture) runs(t *testing.T) []*store.Run {
	t.Helper()
	runs, err := f.env.Svc.Store.ListRuns(context.Background(), store.RunFilter{Pipeline: "nightly"})
	if err != nil {
		t.Fatal(err)
	}
	return runs
}

// fillRuns makes the runs bucket refuse new runs (full) or accept them
// again: a real store failure, not a stand-in.
func fillRuns(t *testing.T, js jetstream.JetStream, full bool) {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, "KV_"+store.BucketRuns)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.MaxBytes = -1
	if full {
		cfg.MaxBytes = 1
	}
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatalf("set runs bucket max bytes: %v", err)
	}
}

func TestCronFiresOnceAcrossInstances(t *testing.T) {
	f := setup(t)
	other := f.instance(t)
	var a, b []*store.Run
	var errA, errB error
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); a, errA = f.env.Svc.Cron.Tick(context.Background(), f.due) }()
	go func() { defer wg.Done(); b, errB = other.Cron.Tick(context.Background(), f.due) }()
	wg.Wait()
	if errA != nil || errB != nil {
		t.Fatalf("ticks: %v, %v", errA, errB)
	}
	if len(a)+len(b) != 1 {
		t.Fatalf("fired %d times, want once", len(a)+len(b))
	}
	r := append(a, b...)[0]
	if r.Vars["git_branch"].Value != "main" || r.Trigger.Kind != "cron" || r.ID != schedule.RunID("nightly", 0, every5, f.due) {
		t.Errorf("cron run %s = %+v", r.ID, r.Trigger)
	}
	// the next minutes are off schedule, and the fired minute stays fired
	for _, s := range []*service.Service{f.env.Svc, other} {
		for m := f.due.Add(time.Minute); m.Before(f.due.Add(5 * time.Minute)); m = m.Add(time.Minute) {
			if runs, err := s.Cron.Tick(context.Background(), m); err != nil || len(runs) != 0 {
				t.Errorf("tick at %s: %d runs, %v", m.Format(time.TimeOnly), len(runs), err)
			}
		}
	}
	if runs := f.runs(t); len(runs) != 1 {
		t.Errorf("%d runs, want 1", len(runs))
	}
}

func TestFailedFiringIsRetriedAtTheNextTick(t *testing.T) {
	f := setup(t)
	js := f.env.NATS.JS
	want := schedule.RunID("nightly", 0, every5, f.due)

	fillRuns(t, js, true)
	runs, err := f.env.Svc.Cron.Tick(context.Background(), f.due)
	if err == nil || len(runs) != 0 {
		t.Fatalf("tick while the store refuses runs: %d runs, error %v; want the failure", len(runs), err)
	}
	if _, err := f.env.Svc.Store.GetRun(context.Background(), want); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("failed firing left run %s behind: %v", want, err)
	}

	fillRuns(t, js, false)
	// another instance's next tick, a minute later, makes up for it
	runs, err = f.instance(t).Cron.Tick(context.Background(), f.due.Add(time.Minute))
	if err != nil || len(runs) != 1 || runs[0].ID != want {
		t.Fatalf("next tick: %d runs, %v; want run %s", len(runs), err, want)
	}
	if runs, err := f.env.Svc.Cron.Tick(context.Background(), f.due.Add(2*time.Minute)); err != nil || len(runs) != 0 {
		t.Errorf("tick after the retry: %d runs, %v", len(runs), err)
	}
	if n := len(f.runs(t)); n != 1 {
		t.Errorf("%d runs, want 1", n)
	}
}

func TestRetriesAreBoundedByTheWindow(t *testing.T) {
	f := setup(t)
	fillRuns(t, f.env.NATS.JS, true)
	if _, err := f.env.Svc.Cron.Tick(context.Background(), f.due); err == nil {
		t.Fatal("tick while the store refuses runs succeeded")
	}
	fillRuns(t, f.env.NATS.JS, false)
	late := f.due.Add(schedule.Window)
	runs, err := f.env.Svc.Cron.Tick(context.Background(), late)
	if err != nil {
		t.Fatal(err)
	}
	// late is itself due (every 5 minutes): that firing starts, the one a
	// window old does not
	if len(runs) != 1 || runs[0].ID != schedule.RunID("nightly", 0, every5, late) {
		t.Errorf("tick a window later: %d runs, want only the firing of %s", len(runs), late.Format(time.TimeOnly))
	}
}

func TestMinutesBeforeThePipelineWasStoredDoNotFire(t *testing.T) {
	f := setup(t)
	// the last due minute strictly before the pipeline was stored
	before := f.stored.UTC().Add(-time.Nanosecond).Truncate(5 * time.Minute)
	if runs, err := f.env.Svc.Cron.Tick(context.Background(), before.Add(time.Minute)); err != nil || len(runs) != 0 {
		t.Errorf("tick after a due minute before the pipeline existed: %d runs, %v", len(runs), err)
	}
}

func TestRunIDIsDeterministicPerFiring(t *testing.T) {
	m := time.Date(2026, 11, 26, 3, 5, 0, 0, time.UTC)
	id := schedule.RunID("nightly", 0, every5, m)
	cases := []struct {
		name string
		id   string
		same bool
	}{
		{"same firing, seconds and zone differ", schedule.RunID("Nightly", 0, every5, m.Add(17*time.Second).In(time.FixedZone("x", 3600))), true},
		{"other minute", schedule.RunID("nightly", 0, every5, m.Add(5*time.Minute)), false},
		{"other entry", schedule.RunID("nightly", 1, every5, m), false},
		{"other schedule", schedule.RunID("nightly", 0, "5 * * * *", m), false},
		{"other pipeline", schedule.RunID("weekly", 0, every5, m), false},
	}
	for _, c := range cases {
		if (c.id == id) != c.same {
			t.Errorf("%s: %s vs %s, same = %v, want %v", c.name, c.id, id, c.id == id, c.same)
		}
	}
}
