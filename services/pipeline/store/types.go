// Package store keeps the pipeline service's state in JetStream key-value
// buckets: pipelines with their version history, the registries and clusters
// catalogue, build-number counters, and runs, updated with compare-and-swap
// so that several pipeline service instances can share them.
package store

import (
	"fmt"

	"github.com/ansflow/ansflow/pkg/apiv1"
)

// Run is a run as stored: the API's document and the bookkeeping of the
// orchestrator that no client sees.
type Run struct {
	apiv1.Run
	// Admitted is set once a run of a pipeline with a concurrency limit
	// holds one of its slots; until then it is queued.
	Admitted bool `json:"admitted,omitempty"`
	// Trace is the W3C traceparent of the span that created the run
	// (package tracing), so that the steps any pipeline instance
	// dispatches later, after a restart too, join the run's trace; empty
	// while tracing is off.
	Trace string `json:"trace,omitempty"`
	// Revision is the key-value revision the run was read at, which an
	// update must match.
	Revision uint64 `json:"-"`
}

// Clone returns a copy of r that can be changed without changing r. The
// spec and variables are shared: they do not change during a run.
func (r *Run) Clone() *Run {
	c := *r
	c.Steps = make([]*apiv1.StepState, len(r.Steps))
	for i, s := range r.Steps {
		sc := *s
		sc.History = append([]apiv1.AttemptEnd(nil), s.History...)
		if s.Outputs != nil {
			sc.Outputs = make(map[string]string, len(s.Outputs))
			for k, v := range s.Outputs {
				sc.Outputs[k] = v
			}
		}
		c.Steps[i] = &sc
	}
	return &c
}

// Catalog is a point-in-time copy of the registries and clusters catalogue.
type Catalog struct {
	Registries []*apiv1.Registry
	Clusters   []*apiv1.Cluster
}

// Registry resolves a registry by id or name.
func (c *Catalog) Registry(ref string) (*apiv1.Registry, error) {
	if c != nil {
		for _, r := range c.Registries {
			if r.ID == ref || r.Name == ref {
				return r, nil
			}
		}
	}
	return nil, fmt.Errorf("registry %q: %w in the catalogue", ref, ErrNotFound)
}

// Cluster resolves a cluster by id or name.
func (c *Catalog) Cluster(ref string) (*apiv1.Cluster, error) {
	if c != nil {
		for _, cl := range c.Clusters {
			if cl.ID == ref || cl.Name == ref {
				return cl, nil
			}
		}
	}
	return nil, fmt.Errorf("cluster %q: %w in the catalogue", ref, ErrNotFound)
}
