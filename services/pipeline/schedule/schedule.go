// Package schedule fires pipelines' cron triggers. Every pipeline service
// instance runs a scheduler. A firing is a run whose id is derived from the
// pipeline, the trigger and the minute ([RunID]), so the run's existence is
// the mark that the minute fired: however many instances tick the same
// minute, one run is created, and a firing whose run could not be created
// is tried again at the next tick.
package schedule

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/robfig/cron/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/pkg/tracing"
	"github.com/ansflow/ansflow/services/pipeline/orchestrator"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// Window is how far back a tick looks for firings without a run: a firing
// whose trigger failed is retried at every tick until it is this old, and a
// scheduler that was stopped catches up the minutes it missed within it.
const Window = 5 * time.Minute

// Scheduler fires cron triggers. Create it with [New]; it is safe for
// concurrent use.
type Scheduler struct {
	st  *store.Store
	orc *orchestrator.Orchestrator
	log *zap.Logger
	now func() time.Time

	// fired holds the firings within the window known to have their run,
	// by run id, so that later ticks do not read the run again. It is only
	// a shortcut: a firing missing from it is checked against the store.
	mu    sync.Mutex
	fired map[string]time.Time
}

// New returns a scheduler. It keeps no state in JetStream: ctx and js are
// unused and no error is returned today; they stay so that assembling the
// service does not change.
func New(_ context.Context, st *store.Store, orc *orchestrator.Orchestrator, _ jetstream.JetStream, log *zap.Logger) (*Scheduler, error) {
	return &Scheduler{st: st, orc: orc, log: log.Named("schedule"), now: time.Now, fired: map[string]time.Time{}}, nil
}

// Run checks the schedules at every minute boundary until ctx is done.
func (s *Scheduler) Run(ctx context.Context) error {
	for {
		now := s.now()
		next := now.Truncate(time.Minute).Add(time.Minute)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(next.Sub(now)):
		}
		if _, err := s.Tick(ctx, next); err != nil {
			s.log.Warn("schedule tick", zap.Error(err))
		}
	}
}

// runNamespace is the UUIDv5 namespace of cron run ids.
var runNamespace = uuid.NewSHA1(uuid.NameSpaceURL, []byte("urn:ansflow:cron-firing"))

// RunID is the id of the run that the cron trigger at position entry of
// pipeline's triggers, with schedule, starts for minute.
func RunID(pipeline string, entry int, schedule string, minute time.Time) string {
	name := spec.Slug(pipeline) + "\n" + strconv.Itoa(entry) + "\n" + schedule + "\n" +
		minute.UTC().Truncate(time.Minute).Format(time.RFC3339)
	return uuid.NewSHA1(runNamespace, []byte(name)).String()
}

// Tick fires the cron triggers due at now (truncated to the minute) or at
// an earlier minute within [Window] that has no run yet, and returns the
// runs this instance created. Minutes before the pipeline version was
// stored never fire. A trigger that fails does not stop the others; the
// failures are returned joined, and those firings are tried again at the
// next tick.
func (s *Scheduler) Tick(ctx context.Context, now time.Time) ([]*store.Run, error) {
	now = now.UTC().Truncate(time.Minute)
	from := now.Add(-Window + time.Minute)
	s.forget(from)
	pipelines, err := s.st.ListPipelines(ctx)
	if err != nil {
		return nil, fmt.Errorf("list pipelines: %w", err)
	}
	var started []*store.Run
	var errs []error
	for _, p := range pipelines {
		first := from
		if p.UpdatedAt.After(first) {
			first = p.UpdatedAt.UTC()
		}
		for i, t := range p.Spec.Triggers {
			if t.Type != "cron" {
				continue
			}
			sched, err := cron.ParseStandard(t.Schedule)
			if err != nil {
				s.log.Warn("bad schedule", zap.String("pipeline", p.Name), zap.String("schedule", t.Schedule), zap.Error(err))
				continue
			}
			// Next finds activations at or after the whole second after
			// its argument: one nanosecond back keeps a due minute equal
			// to first (a whole minute) and never reaches a minute before
			// a version stored within its first second.
			for m := sched.Next(first.Add(-time.Nanosecond)); !m.IsZero() && !m.After(now); m = sched.Next(m) {
				run, err := s.fire(ctx, p, i, t, m)
				if err != nil {
					errs = append(errs, err)
				} else if run != nil {
					started = append(started, run)
				}
			}
		}
	}
	return started, errors.Join(errs...)
}

// fire creates the run of one firing, unless it exists; it returns the run
// only when this call created it.
func (s *Scheduler) fire(ctx context.Context, p *apiv1.Pipeline, entry int, t spec.Trigger, minute time.Time) (*store.Run, error) {
	id := RunID(p.Name, entry, t.Schedule, minute)
	if s.known(id) {
		return nil, nil
	}
	ctx, span := tracing.StartSpan(ctx, "cron.trigger", trace.SpanKindInternal, attribute.String("ansflow.pipeline", p.Name),
		attribute.String("ansflow.cron.schedule", t.Schedule), attribute.String("ansflow.run.id", id))
	defer span.End()
	run, err := s.orc.Trigger(ctx, orchestrator.TriggerRequest{Pipeline: p.Name, RunID: id,
		Git:     orchestrator.GitInfo{Branch: t.Branch},
		Trigger: apiv1.Trigger{Kind: "cron", Actor: "schedule " + t.Schedule}})
	switch {
	case err == nil:
		s.remember(id, minute)
		return run, nil
	case errors.Is(err, orchestrator.ErrRunExists):
		s.remember(id, minute) // another instance, or an earlier tick, fired it
		return nil, nil
	default:
		s.log.Warn("scheduled run failed to start; retrying at the next tick", zap.String("pipeline", p.Name),
			zap.String("schedule", t.Schedule), zap.Time("minute", minute), zap.Error(err))
		return nil, fmt.Errorf("fire %q schedule %q at %s: %w", p.Name, t.Schedule, minute.Format(time.RFC3339), err)
	}
}

func (s *Scheduler) known(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.fired[id]
	return ok
}

func (s *Scheduler) remember(id string, minute time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fired[id] = minute
}

// forget drops the firings before from: no tick looks at them again.
func (s *Scheduler) forget(from time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, m := range s.fired {
		if m.Before(from) {
			delete(s.fired, id)
		}
	}
}
