// Package ui is the pipeline service's web UI: pages rendered on the server
// with html/template from embedded templates, and plain JavaScript and CSS,
// at stable addresses (/pipelines, /pipelines/{name}, /runs, /runs/{id},
// and the pipeline editor at /pipelines/new and /pipelines/{name}/edit)
// behind the API's guard, so a page accepts a login session or an API
// bearer token like the API does. Live parts of a page (a run's steps and
// logs) follow the API's server-sent events; actions (trigger, cancel,
// rerun) call the API with the session's CSRF token.
package ui

import (
	"bytes"
	"context"
	"embed"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/services/pipeline/login"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Store is what the pages read of the pipeline store.
type Store interface {
	ListPipelines(ctx context.Context) ([]*apiv1.Pipeline, error)
	GetPipeline(ctx context.Context, name string) (*apiv1.Pipeline, error)
	ListRuns(ctx context.Context, f store.RunFilter) ([]*store.Run, error)
	GetRun(ctx context.Context, id string) (*store.Run, error)
	Registries(ctx context.Context) ([]*apiv1.Registry, error)
	Clusters(ctx context.Context) ([]*apiv1.Cluster, error)
	PipelineVersions(ctx context.Context, name string) ([]*apiv1.Pipeline, error)
}

// Orchestrator is what the pages ask the orchestrator: what a run read
// from the store does not hold (why a queued step waits), as the API
// does, and the runners it knows.
type Orchestrator interface {
	Annotate(r *store.Run)
	Runners() []runner.RunnerInfo
	Resolved(r *store.Run, stepID string) (*event.StepRequested, error)
}

// Server renders the UI's pages. Create it with [New].
type Server struct {
	st    Store
	orc   Orchestrator
	log   *zap.Logger
	pages map[string]*template.Template
	// now is the clock of durations and ages (tests set it).
	now func() time.Time
	// APIDoc returns the REST API's OpenAPI document for the API page.
	APIDoc func() map[string]any
}

// pageNames are the templates of templates/ that are pages (each with the
// layout); the others are shared parts.
var pageNames = []string{"pipelines", "pipeline", "runs", "run", "login", "stats", "catalogue", "audit", "apidocs", "editor", "diff"}

// New parses the embedded templates.
func New(st Store, orc Orchestrator, log *zap.Logger) (*Server, error) {
	if log == nil {
		log = zap.NewNop()
	}
	s := &Server{st: st, orc: orc, log: log, pages: map[string]*template.Template{}, now: time.Now}
	funcs := template.FuncMap{
		"duration": formatDuration,
		"ago":      func(t time.Time) string { return formatAgo(s.now().Sub(t)) },
		"short":    shortID,
		"pct":      func(f float64) string { return fmt.Sprintf("%.0f%%", f*100) },
		"join":     strings.Join,
		"list":     func(s ...string) []string { return s },
	}
	for _, name := range pageNames {
		t, err := template.New(name).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/parts.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("ui template %s: %w", name, err)
		}
		s.pages[name] = t
	}
	return s, nil
}

// Routes are the UI's routes for the API's guard to mount. Pages need the
// viewer role (an operator's grant also shows the action buttons), the
// pipeline editor the operator role; the login page and the static files
// are public.
func (s *Server) Routes() []auth.Route {
	page := func(pattern string, scope auth.Scope, h http.HandlerFunc) auth.Route {
		return auth.Route{Pattern: pattern, Role: auth.RoleViewer, Scope: scope, Handler: h, Page: true}
	}
	operatorPage := func(pattern string, scope auth.Scope, h http.HandlerFunc) auth.Route {
		rt := page(pattern, scope, h)
		rt.Role = auth.RoleOperator
		return rt
	}
	static, _ := fs.Sub(staticFS, "static")
	files := http.StripPrefix("/static/", http.FileServerFS(static))
	return []auth.Route{
		page("GET /{$}", auth.ScopeFiltered, func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "/pipelines", http.StatusSeeOther)
		}),
		page("GET /pipelines", auth.ScopeFiltered, s.pipelinesPage),
		page("GET /pipelines/{name}", auth.ScopePipeline, s.pipelinePage),
		operatorPage("GET /pipelines/new", auth.ScopeAny, s.newPipelinePage),
		operatorPage("GET /pipelines/{name}/edit", auth.ScopePipeline, s.editPipelinePage),
		page("GET /pipelines/{name}/diff", auth.ScopePipeline, s.diffPage),
		page("GET /runs", auth.ScopeFiltered, s.runsPage),
		page("GET /runs/{id}", auth.ScopeRun, s.runPage),
		page("GET /stats", auth.ScopeFiltered, s.statsPage),
		page("GET /catalogue", auth.ScopeGlobal, s.cataloguePage),
		page("GET /audit", auth.ScopeFiltered, s.auditPage),
		page("GET /api-docs", auth.ScopeAny, s.apiDocsPage),
		{Pattern: "GET " + auth.LoginPath, Scope: auth.ScopePublic, Handler: http.HandlerFunc(s.loginPage)},
		{Pattern: "GET /static/", Scope: auth.ScopePublic, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Cache-Control", "public, max-age=300")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			files.ServeHTTP(w, r)
		})},
	}
}

// layout is what every page's frame shows.
type layout struct {
	Title string
	// Nav is the active tab: "pipelines" or "runs".
	Nav string
	// Actor names who is looking; empty on the login page.
	Actor string
	// CSRF is the session's token for the scripts' state-changing calls
	// ("" with a bearer token, which needs none).
	CSRF string
	// CanOperate shows action buttons (the API still decides).
	CanOperate bool
}

func (s *Server) frame(r *http.Request, title, nav string, pipeline string) layout {
	id := auth.FromContext(r.Context())
	l := layout{Title: title, Nav: nav, CSRF: login.CSRFToken(r)}
	if id != nil {
		l.Actor = id.Actor()
		// A page of no one pipeline (lists) shows the actions to every
		// operator; the API refuses those outside the grant.
		l.CanOperate = id.Role.Allows(auth.RoleOperator)
		if pipeline != "" {
			l.CanOperate = id.Can(auth.RoleOperator, pipeline)
		}
	}
	return l
}

// render executes page with data into a buffer first, so a template error
// is a clean 500 rather than half a page.
func (s *Server) render(w http.ResponseWriter, page string, data any) {
	var buf bytes.Buffer
	if err := s.pages[page].ExecuteTemplate(&buf, "layout", data); err != nil {
		s.log.Error("render page", zap.String("page", page), zap.Error(err))
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
	_, _ = w.Write(buf.Bytes())
}

// fail answers a page whose data could not be read.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusInternalServerError
	if errorsIsNotFound(err) {
		status = http.StatusNotFound
	} else {
		s.log.Error("ui page", zap.String("path", r.URL.Path), zap.Error(err))
	}
	http.Error(w, fmt.Sprintf("%d %s: %v", status, http.StatusText(status), err), status)
}

// visible keeps the runs the request's identity may see.
func visible(r *http.Request, runs []*store.Run) []*store.Run {
	id := auth.FromContext(r.Context())
	if id.AllPipelines() {
		return runs
	}
	kept := runs[:0:0]
	for _, run := range runs {
		if id.CoversPipeline(spec.Slug(run.Pipeline)) {
			kept = append(kept, run)
		}
	}
	return kept
}
