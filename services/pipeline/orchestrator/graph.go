package orchestrator

import (
	"sync"

	"github.com/ansflow/ansflow/pkg/spec"
)

// graph is a pipeline version's step graph: each step's direct dependencies
// and all its upstream steps. It depends on the spec alone, which never
// changes once stored, so it is computed once per spec instead of on every
// decision (for a chain of n steps, Upstream costs O(n²)).
type graph struct {
	deps     [][]int
	upstream [][]int
}

// graphs memoises graph by spec; specs are shared by every run of their
// pipeline version (the store reads each version once).
var graphs sync.Map // *spec.Pipeline -> *graph

func graphOf(p *spec.Pipeline) *graph {
	if g, ok := graphs.Load(p); ok {
		return g.(*graph)
	}
	g := &graph{deps: p.Deps()}
	g.upstream = make([][]int, len(p.Steps))
	for i := range p.Steps {
		g.upstream[i] = spec.Upstream(g.deps, i)
	}
	actual, _ := graphs.LoadOrStore(p, g)
	return actual.(*graph)
}
