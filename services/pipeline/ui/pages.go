package ui

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

func errorsIsNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }

// recentRuns is how many of a pipeline's latest runs its success rate and
// sparkline cover.
const recentRuns = 20

// pipelineRow is one pipeline of the pipelines page.
type pipelineRow struct {
	Name    string
	Version int
	Last    *runRow
	// Rate is the share of succeeded runs among the recent finished ones;
	// Finished counts them.
	Rate     float64
	Finished int
	Spark    sparkline
}

// runRow is a run as lists show it.
type runRow struct {
	ID, Pipeline, Status, Branch, Commit, Trigger, Actor string
	Build                                                int
	Created                                              time.Time
	Duration                                             time.Duration
	Error                                                string
}

func (s *Server) row(r *store.Run) *runRow {
	return &runRow{ID: r.ID, Pipeline: r.Pipeline, Status: r.Status, Branch: r.Vars["git_branch"].Value,
		Commit: shortID(r.Vars["git_commit"].Value), Trigger: r.Trigger.Kind, Actor: r.Trigger.Actor, Build: r.BuildNumber,
		Created: r.CreatedAt, Duration: runDuration(r, s.now()), Error: r.Error}
}

// runDuration is how long the run has taken so far (0 before it starts).
func runDuration(r *store.Run, now time.Time) time.Duration {
	if r.StartedAt == nil {
		return 0
	}
	end := now
	if r.FinishedAt != nil {
		end = *r.FinishedAt
	}
	return end.Sub(*r.StartedAt)
}

type pipelinesData struct {
	layout
	Query     string
	Pipelines []pipelineRow
}

func (s *Server) pipelinesPage(w http.ResponseWriter, r *http.Request) {
	id := auth.FromContext(r.Context())
	recs, err := s.st.ListPipelines(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	runs, err := s.st.ListRuns(r.Context(), store.RunFilter{})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	byPipeline := map[string][]*store.Run{} // newest first, as listed
	for _, run := range runs {
		k := spec.Slug(run.Pipeline)
		byPipeline[k] = append(byPipeline[k], run)
	}
	q := strings.TrimSpace(r.URL.Query().Get("q"))
	d := pipelinesData{layout: s.frame(r, "Pipelines", "pipelines", ""), Query: q}
	for _, rec := range recs {
		if !id.CoversPipeline(spec.Slug(rec.Name)) || (q != "" && !strings.Contains(strings.ToLower(rec.Name), strings.ToLower(q))) {
			continue
		}
		row := pipelineRow{Name: rec.Name, Version: rec.Version}
		prs := byPipeline[spec.Slug(rec.Name)]
		if len(prs) > 0 {
			row.Last = s.row(prs[0])
		}
		row.Rate, row.Finished, row.Spark = recentStats(prs)
		d.Pipelines = append(d.Pipelines, row)
	}
	sort.Slice(d.Pipelines, func(i, j int) bool { return d.Pipelines[i].Name < d.Pipelines[j].Name })
	s.render(w, "pipelines", d)
}

// recentStats summarises a pipeline's latest finished runs (runs newest
// first): the share that succeeded, how many there were, and a sparkline
// of their durations, oldest first.
func recentStats(runs []*store.Run) (rate float64, finished int, spark sparkline) {
	var points []sparkPoint
	ok := 0
	for _, r := range runs {
		if !r.Terminal() || r.StartedAt == nil || r.FinishedAt == nil {
			continue
		}
		finished++
		if r.Status == event.StatusSucceeded {
			ok++
		}
		points = append(points, sparkPoint{Value: r.FinishedAt.Sub(*r.StartedAt).Seconds(), Failed: r.Status != event.StatusSucceeded, RunID: r.ID})
		if finished == recentRuns {
			break
		}
	}
	for i, j := 0, len(points)-1; i < j; i, j = i+1, j-1 {
		points[i], points[j] = points[j], points[i]
	}
	if finished > 0 {
		rate = float64(ok) / float64(finished)
	}
	return rate, finished, newSparkline(points, 120, 24)
}

type pipelineData struct {
	layout
	Pipeline *apiv1.Pipeline
	Runs     []*runRow
	// Variables are the pipeline's declared variables, for the trigger
	// form's rows.
	Variables []string
	Rate      float64
	Finished  int
	Spark     sparkline
}

func (s *Server) pipelinePage(w http.ResponseWriter, r *http.Request) {
	rec, err := s.st.GetPipeline(r.Context(), r.PathValue("name"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	runs, err := s.st.ListRuns(r.Context(), store.RunFilter{Pipeline: rec.Name})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	d := pipelineData{layout: s.frame(r, rec.Name, "pipelines", spec.Slug(rec.Name)), Pipeline: rec}
	for i, run := range runs {
		if i == 25 {
			break
		}
		d.Runs = append(d.Runs, s.row(run))
	}
	if rec.Spec != nil {
		for k := range rec.Spec.Variables {
			d.Variables = append(d.Variables, k)
		}
		sort.Strings(d.Variables)
	}
	d.Rate, d.Finished, d.Spark = recentStats(runs)
	s.render(w, "pipeline", d)
}

// runsPageSize is how many runs the runs page shows at once.
const runsPageSize = 50

type runsData struct {
	layout
	Filter    runsFilter
	Runs      []*runRow
	Pipelines []string
	Statuses  []string
	Triggers  []string
	// Next and Prev are the links to the neighbouring pages ("" at an end).
	Next, Prev string
	Total      int
}

// runsFilter is the runs page's query.
type runsFilter struct {
	Pipeline, Status, Branch, Trigger string
	// Since limits the list to runs created within it (e.g. 24h; 0: all).
	Since string
	Page  int
}

func (f runsFilter) query(page int) string {
	v := url.Values{}
	for k, x := range map[string]string{"pipeline": f.Pipeline, "status": f.Status, "branch": f.Branch, "trigger": f.Trigger, "since": f.Since} {
		if x != "" {
			v.Set(k, x)
		}
	}
	if page > 0 {
		v.Set("page", strconv.Itoa(page))
	}
	return "/runs?" + v.Encode()
}

func (s *Server) runsPage(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := runsFilter{Pipeline: q.Get("pipeline"), Status: q.Get("status"), Branch: q.Get("branch"), Trigger: q.Get("trigger"), Since: q.Get("since")}
	f.Page, _ = strconv.Atoi(q.Get("page"))
	f.Page = max(f.Page, 0)
	var since time.Duration
	if f.Since != "" {
		d, err := parseSpan(f.Since)
		if err != nil || d <= 0 {
			http.Error(w, "400 Bad Request: since: want a duration such as 24h or 7d", http.StatusBadRequest)
			return
		}
		since = d
	}
	runs, err := s.st.ListRuns(r.Context(), store.RunFilter{Pipeline: f.Pipeline, Status: f.Status})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	runs = visible(r, runs)
	d := runsData{layout: s.frame(r, "Runs", "runs", ""), Filter: f,
		Statuses: []string{event.StatusQueued, event.StatusRunning, event.StatusSucceeded, event.StatusFailed, event.StatusCancelled}}
	pipelines, triggers := map[string]bool{}, map[string]bool{}
	var kept []*store.Run
	now := s.now()
	for _, run := range runs {
		pipelines[run.Pipeline], triggers[run.Trigger.Kind] = true, true
		if (f.Branch != "" && run.Vars["git_branch"].Value != f.Branch) || (f.Trigger != "" && run.Trigger.Kind != f.Trigger) ||
			(since > 0 && now.Sub(run.CreatedAt) > since) {
			continue
		}
		kept = append(kept, run)
	}
	d.Pipelines, d.Triggers = sortedKeys(pipelines), sortedKeys(triggers)
	d.Total = len(kept)
	start := min(f.Page*runsPageSize, len(kept))
	end := min(start+runsPageSize, len(kept))
	for _, run := range kept[start:end] {
		d.Runs = append(d.Runs, s.row(run))
	}
	if end < len(kept) {
		d.Next = f.query(f.Page + 1)
	}
	if f.Page > 0 {
		d.Prev = f.query(f.Page - 1)
	}
	s.render(w, "runs", d)
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		if k != "" {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// stepView is a step of the run page.
type stepView struct {
	*apiv1.StepState
	Duration time.Duration
	// Settings are the step's settings in the run's pipeline version;
	// Resolved what its current attempt was dispatched with (templates
	// resolved, registry and cluster from the catalogue, never a secret),
	// for a step that was dispatched. Both are indented JSON.
	Settings, Resolved string
	Needs              []string
}

type runData struct {
	layout
	Run   *store.Run
	Row   *runRow
	Steps []stepView
	Graph graph
	// Live tells the scripts to follow the run's events.
	Live bool
}

func (s *Server) runPage(w http.ResponseWriter, r *http.Request) {
	run, err := s.st.GetRun(r.Context(), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if s.orc != nil {
		s.orc.Annotate(run)
	}
	d := runData{layout: s.frame(r, run.Pipeline+" #"+strconv.Itoa(run.BuildNumber), "runs", spec.Slug(run.Pipeline)),
		Run: run, Row: s.row(run), Live: !run.Terminal()}
	now := s.now()
	for _, st := range run.Steps {
		v := stepView{StepState: st}
		if st.StartedAt != nil {
			end := now
			if st.FinishedAt != nil {
				end = *st.FinishedAt
			}
			v.Duration = end.Sub(*st.StartedAt)
		}
		if run.Spec != nil {
			if i := run.Spec.StepIndex(st.ID); i >= 0 {
				sp := run.Spec.Steps[i]
				v.Needs = sp.Needs
				sp.Name = ""
				if b, err := json.MarshalIndent(sp, "", "  "); err == nil {
					v.Settings = string(b)
				}
				if s.orc != nil && st.Attempts > 0 {
					if req, err := s.orc.Resolved(run, st.ID); err == nil {
						req.RequestedAt = time.Time{}
						if b, err := json.MarshalIndent(req, "", "  "); err == nil {
							v.Resolved = string(b)
						}
					}
				}
			}
		}
		d.Steps = append(d.Steps, v)
	}
	d.Graph = layoutGraph(run, now)
	s.render(w, "run", d)
}

type loginData struct {
	layout
	Next string
}

// loginPage is the login form; its script posts to the API's login route
// and goes on to next, a path of this site only.
func (s *Server) loginPage(w http.ResponseWriter, r *http.Request) {
	next := r.URL.Query().Get("next")
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") {
		next = "/pipelines"
	}
	s.render(w, "login", loginData{layout: layout{Title: "Log in"}, Next: next})
}
