package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/pkg/topology"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// SlotsBucket holds, per pipeline with a concurrency limit, the ids of the
// runs holding its slots. Every orchestrator instance admits and releases
// through compare-and-swap on it, so the limit holds across instances.
const SlotsBucket = topology.BucketSlots

// admit gives free slots of pipeline's concurrency limit to its oldest
// queued runs. Slots held by runs that are over (their release was lost
// with a crash) are freed first.
func (o *Orchestrator) admit(ctx context.Context, pipeline string) {
	ctx, cancel := context.WithTimeout(ctx, o.cfg.IOTimeout)
	defer cancel()
	for try := 0; try < 50; try++ {
		rec, err := o.store.GetPipeline(ctx, pipeline)
		if err != nil {
			return
		}
		limit := rec.Spec.Concurrency
		held, rev, err := o.readSlots(ctx, pipeline)
		if err != nil {
			o.log.Warn("read concurrency slots", zap.String("pipeline", pipeline), zap.Error(err))
			return
		}
		runs, err := o.store.ListRuns(ctx, store.RunFilter{Pipeline: pipeline})
		if err != nil {
			o.log.Warn("list runs to admit", zap.String("pipeline", pipeline), zap.Error(err))
			return
		}
		byID := map[string]*store.Run{}
		for _, r := range runs {
			byID[r.ID] = r
		}
		// A slot is freed only when its run is read back over: a listing
		// can miss a run that is being written while it reads.
		live := held[:0:0]
		for _, id := range held {
			r, err := o.store.GetRun(ctx, id)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				o.log.Warn("read a run holding a concurrency slot", zap.String("run_id", id), zap.Error(err))
				return
			}
			byID[id] = r
			if !r.Terminal() {
				live = append(live, id)
			}
		}
		var queued []*store.Run
		for _, r := range runs {
			if r.Status == event.StatusQueued && !r.Admitted && !r.AwaitingApproval() && !slices.Contains(live, r.ID) {
				queued = append(queued, r)
			}
		}
		sort.Slice(queued, func(i, j int) bool { return queued[i].CreatedAt.Before(queued[j].CreatedAt) })
		var admitted []string
		for _, r := range queued {
			if limit > 0 && len(live) >= limit {
				break
			}
			live = append(live, r.ID)
			admitted = append(admitted, r.ID)
		}
		// Runs holding a slot but not marked admitted (a crash between the
		// two writes) are admitted again.
		for _, id := range live {
			if r := byID[id]; r != nil && r.Status == event.StatusQueued && !r.Admitted && !slices.Contains(admitted, id) {
				admitted = append(admitted, id)
			}
		}
		if !slices.Equal(live, held) {
			if err := o.writeSlots(ctx, pipeline, live, rev); errors.Is(err, errSlotsChanged) {
				continue
			} else if err != nil {
				o.log.Warn("write concurrency slots", zap.String("pipeline", pipeline), zap.Error(err))
				return
			}
		}
		for _, id := range admitted {
			if _, err := o.update(ctx, id, Admitted{}); err != nil {
				o.log.Warn("admit run", zap.String("run_id", id), zap.Error(err))
			}
		}
		return
	}
}

var errSlotsChanged = errors.New("concurrency slots changed concurrently")

func (o *Orchestrator) readSlots(ctx context.Context, pipeline string) ([]string, uint64, error) {
	e, err := o.slots.Get(ctx, spec.Slug(pipeline))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	var ids []string
	if err := json.Unmarshal(e.Value(), &ids); err != nil {
		return nil, 0, fmt.Errorf("slots of %q are corrupt: %w", pipeline, err)
	}
	return ids, e.Revision(), nil
}

func (o *Orchestrator) writeSlots(ctx context.Context, pipeline string, ids []string, rev uint64) error {
	b, _ := json.Marshal(ids)
	var err error
	if rev == 0 {
		_, err = o.slots.Create(ctx, spec.Slug(pipeline), b)
	} else {
		_, err = o.slots.Update(ctx, spec.Slug(pipeline), b, rev)
	}
	var apiErr *jetstream.APIError
	if errors.Is(err, jetstream.ErrKeyExists) || (errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence) {
		return errSlotsChanged
	}
	return err
}

// cancelPrevious cancels the active runs of r's pipeline and branch that
// were created before r.
func (o *Orchestrator) cancelPrevious(ctx context.Context, r *store.Run) {
	runs, err := o.store.ListRuns(ctx, store.RunFilter{Pipeline: r.Pipeline})
	if err != nil {
		o.log.Warn("list runs to cancel", zap.String("pipeline", r.Pipeline), zap.Error(err))
		return
	}
	for _, old := range runs {
		if old.ID == r.ID || old.Terminal() || old.Branch() != r.Branch() || !old.CreatedAt.Before(r.CreatedAt) {
			continue
		}
		reason := fmt.Sprintf("superseded by build %d (cancel_previous)", r.BuildNumber)
		if _, err := o.Cancel(ctx, old.ID, reason); err != nil && !errors.Is(err, ErrFinished) {
			o.log.Warn("cancel previous run", zap.String("run_id", old.ID), zap.Error(err))
		}
	}
}
