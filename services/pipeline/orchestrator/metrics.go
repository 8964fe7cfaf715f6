package orchestrator

import (
	"sync"
	"time"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/metrics"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// poolKey names a runner pool: kind and target.
type poolKey struct{ kind, pool string }

// queueDepth counts the steps waiting queued in each pool over every run
// this instance knows, which is every run in the runs bucket: it follows
// its own writes and, through the runs watcher, everyone else's, so every
// pipeline instance arrives at the same figure from the shared state
// instead of counting only what it dispatched.
type queueDepth struct {
	mu     sync.Mutex
	runs   map[string]queuedRun
	totals map[poolKey]int
}

// queuedRun is what one run contributes, as of its revision.
type queuedRun struct {
	rev    uint64
	queued map[poolKey]int
}

// observe replaces run r's contribution unless a newer revision of it was
// observed already.
func (q *queueDepth) observe(r *store.Run, defaults Policy) {
	cur := map[poolKey]int{}
	if !r.Terminal() {
		for _, s := range r.Steps {
			if s.Status == event.StatusQueued {
				cur[poolKey{s.Kind, stepPool(s.Kind, s.Target, defaults)}]++
			}
		}
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.runs == nil {
		q.runs, q.totals = map[string]queuedRun{}, map[poolKey]int{}
	}
	old, ok := q.runs[r.ID]
	if ok && old.rev > r.Revision {
		return
	}
	for k, n := range old.queued {
		q.totals[k] -= n
	}
	for k, n := range cur {
		q.totals[k] += n
	}
	if len(cur) == 0 {
		// A run without queued steps costs no memory; an older copy of it
		// arriving later is kept out by the runs watcher, which skips
		// revisions older than the cached one.
		delete(q.runs, r.ID)
		return
	}
	q.runs[r.ID] = queuedRun{rev: r.Revision, queued: cur}
}

// forget drops run id (deleted from the bucket).
func (q *queueDepth) forget(id string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for k, n := range q.runs[id].queued {
		q.totals[k] -= n
	}
	delete(q.runs, id)
}

// snapshot returns the pools with a count, zero included once seen.
func (q *queueDepth) snapshot() map[poolKey]int {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make(map[poolKey]int, len(q.totals))
	for k, n := range q.totals {
		out[k] = n
	}
	return out
}

// stepPool is the pool a queued step waits in: the target its dispatch
// recorded, else the policy's default for its kind.
func stepPool(kind, target string, p Policy) string {
	switch {
	case target != "":
		return target
	case kind == event.KindK8s:
		return p.DefaultCluster
	}
	return p.DefaultDockerPool
}

// poolStats is the [metrics.PoolSource] of the pool gauges: every pool the
// runners bucket remembers or a queued step waits in.
func (o *Orchestrator) poolStats() []metrics.PoolStat {
	queued := o.queue.snapshot()
	byPool := map[poolKey]*metrics.PoolStat{}
	get := func(k poolKey) *metrics.PoolStat {
		if s, ok := byPool[k]; ok {
			return s
		}
		s := &metrics.PoolStat{Kind: k.kind, Pool: k.pool}
		byPool[k] = s
		return s
	}
	now := time.Now()
	if d := o.pools.Load(); d != nil {
		for _, p := range d.Known(now) {
			s := get(poolKey{p.Kind, p.Target})
			s.Online, s.Slots, s.Busy = p.Online, p.Slots, p.Busy
		}
	}
	for k, n := range queued {
		get(k).Queued = n
	}
	out := make([]metrics.PoolStat, 0, len(byPool))
	for _, s := range byPool {
		out = append(out, *s)
	}
	return out
}

// runFinished records a run that ended, timed from its creation.
func (o *Orchestrator) runFinished(r *store.Run) {
	end := time.Now()
	if r.FinishedAt != nil {
		end = *r.FinishedAt
	}
	o.cfg.Metrics.RunFinished(r.Pipeline, r.Status, end.Sub(r.CreatedAt))
}
