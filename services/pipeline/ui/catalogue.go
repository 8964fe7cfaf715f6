package ui

import (
	"net/http"
	"sort"
	"strings"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/spec"
)

// runnerRow is a runner as the catalogue page lists it.
type runnerRow struct {
	runner.RunnerInfo
	Online bool
	// PoolList is Pools joined for display.
	PoolList string
}

type catalogueData struct {
	layout
	Registries []*apiv1.Registry
	Clusters   []*apiv1.Cluster
	Runners    []runnerRow
	// Pools counts the online runners and free slots of each pool.
	Pools []poolRow
}

type poolRow struct {
	Kind, Name          string
	Online, Slots, Busy int
}

// cataloguePage lists the registries and clusters (their entries only: a
// credential is never stored there, at most the name of the secret that
// holds it) and the runners with their pools.
func (s *Server) cataloguePage(w http.ResponseWriter, r *http.Request) {
	regs, err := s.st.Registries(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	cls, err := s.st.Clusters(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	d := catalogueData{layout: s.frame(r, "Catalogue", "catalogue", ""), Registries: regs, Clusters: cls}
	now := s.now()
	pools := map[[2]string]*poolRow{}
	if s.orc != nil {
		for _, ri := range s.orc.Runners() {
			row := runnerRow{RunnerInfo: ri, Online: ri.Online(now), PoolList: strings.Join(ri.Pools, ", ")}
			d.Runners = append(d.Runners, row)
			for _, p := range ri.Pools {
				k := [2]string{ri.Kind, p}
				if pools[k] == nil {
					pools[k] = &poolRow{Kind: ri.Kind, Name: p}
				}
				if row.Online {
					pr := pools[k]
					pr.Online++
					slots := ri.PoolSlots
					if slots == 0 {
						slots = ri.Slots
					}
					pr.Slots += slots
					pr.Busy += ri.BusyByPool[p]
				}
			}
		}
	}
	sort.Slice(d.Runners, func(i, j int) bool { return d.Runners[i].ID < d.Runners[j].ID })
	for _, p := range pools {
		d.Pools = append(d.Pools, *p)
	}
	sort.Slice(d.Pools, func(i, j int) bool {
		return d.Pools[i].Kind+"/"+d.Pools[i].Name < d.Pools[j].Kind+"/"+d.Pools[j].Name
	})
	s.render(w, "catalogue", d)
}

type auditData struct {
	layout
	// Pipeline is the filter a limited grant must set; Pipelines the ones
	// it may choose from (empty for a grant on every pipeline).
	Pipeline  string
	Pipelines []string
	Type, Run string
	// CanVerify: verification covers the whole chain, so it needs a grant
	// on every pipeline.
	CanVerify bool
}

// auditPage is the audit trail's query form; its script reads the audit
// API (which the embedded stack and a pipeline service with the audit
// routes mounted serve) and shows the records and the verification.
func (s *Server) auditPage(w http.ResponseWriter, r *http.Request) {
	id := auth.FromContext(r.Context())
	q := r.URL.Query()
	d := auditData{layout: s.frame(r, "Audit trail", "audit", ""), Pipeline: q.Get("pipeline"), Type: q.Get("type"), Run: q.Get("run"),
		CanVerify: id.AllPipelines()}
	if !id.AllPipelines() {
		recs, err := s.st.ListPipelines(r.Context())
		if err != nil {
			s.fail(w, r, err)
			return
		}
		for _, rec := range recs {
			if id.CoversPipeline(spec.Slug(rec.Name)) {
				d.Pipelines = append(d.Pipelines, rec.Name)
			}
		}
		if d.Pipeline == "" && len(d.Pipelines) > 0 {
			d.Pipeline = d.Pipelines[0]
		}
	}
	s.render(w, "audit", d)
}
