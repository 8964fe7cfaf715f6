// Package schedule fires pipelines' cron triggers. Every pipeline service
// instance runs a scheduler; a firing is claimed with a create-only key per
// (pipeline, trigger, minute), so each one starts exactly one run however
// many instances run.
package schedule

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/robfig/cron/v3"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/services/pipeline/orchestrator"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// Bucket holds claimed firings.
const Bucket = "ansflow_schedules"

// Scheduler fires cron triggers. Create it with [New].
type Scheduler struct {
	st     *store.Store
	orc    *orchestrator.Orchestrator
	claims jetstream.KeyValue
	log    *zap.Logger
	now    func() time.Time
}

// New returns a scheduler.
func New(ctx context.Context, st *store.Store, orc *orchestrator.Orchestrator, js jetstream.JetStream, log *zap.Logger) (*Scheduler, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: Bucket, TTL: 48 * time.Hour})
	if err != nil {
		return nil, fmt.Errorf("schedules bucket: %w", err)
	}
	return &Scheduler{st: st, orc: orc, claims: kv, log: log.Named("schedule"), now: time.Now}, nil
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

// Tick fires every cron trigger due at minute (truncated) and returns the
// runs this instance started.
func (s *Scheduler) Tick(ctx context.Context, minute time.Time) ([]*store.Run, error) {
	minute = minute.UTC().Truncate(time.Minute)
	pipelines, err := s.st.ListPipelines(ctx)
	if err != nil {
		return nil, err
	}
	var started []*store.Run
	for _, p := range pipelines {
		for i, t := range p.Spec.Triggers {
			if t.Type != "cron" {
				continue
			}
			sched, err := cron.ParseStandard(t.Schedule)
			if err != nil {
				s.log.Warn("bad schedule", zap.String("pipeline", p.Name), zap.String("schedule", t.Schedule), zap.Error(err))
				continue
			}
			if !sched.Next(minute.Add(-time.Second)).Equal(minute) {
				continue
			}
			key := fmt.Sprintf("%s.%d.%d", spec.Slug(p.Name), i, minute.Unix())
			if _, err := s.claims.Create(ctx, key, []byte("fired")); err != nil {
				if errors.Is(err, jetstream.ErrKeyExists) {
					continue // another instance fired it
				}
				return started, fmt.Errorf("claim %s: %w", key, err)
			}
			run, err := s.orc.Trigger(ctx, orchestrator.TriggerRequest{Pipeline: p.Name,
				Git:     orchestrator.GitInfo{Branch: t.Branch},
				Trigger: store.Trigger{Kind: "cron", Actor: "schedule " + t.Schedule}})
			if err != nil {
				s.log.Warn("scheduled run failed to start", zap.String("pipeline", p.Name), zap.Error(err))
				continue
			}
			started = append(started, run)
		}
	}
	return started, nil
}
