// Package api serves the pipeline service's REST API under /api/v1:
// pipelines (CRUD, YAML import and export, clone, versions), runs (trigger,
// get, list, cancel, re-run, live logs as server-sent events), registries,
// clusters and source uploads.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/pkg/source"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/pkg/spec/steps"
	"github.com/ansflow/ansflow/pkg/tracing"
	"github.com/ansflow/ansflow/services/pipeline/orchestrator"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// Server is the HTTP API. Create it with [New].
type Server struct {
	st     *store.Store
	orc    *orchestrator.Orchestrator
	js     jetstream.JetStream
	tokens *auth.TokenStore
	log    *zap.Logger
	mux    *http.ServeMux
	guard  *auth.Guard

	mu     sync.Mutex
	routes []auth.Route

	secrets *secret.Store
	// docs describe routes mounted from outside the package ([Server.Describe]).
	docs map[string]RouteDoc

	// MaxSourceBytes bounds a source upload (default
	// source.MaxArchiveBytes).
	MaxSourceBytes int64
}

// New returns the API over the store and orchestrator. Requests are
// authenticated with bearer tokens of tokens first, then with authn in
// order, and authorized by the route table ([Server.Routes]).
func New(st *store.Store, orc *orchestrator.Orchestrator, js jetstream.JetStream, tokens *auth.TokenStore, log *zap.Logger, authn ...auth.Authenticator) *Server {
	s := &Server{st: st, orc: orc, js: js, tokens: tokens, log: log, mux: http.NewServeMux(), MaxSourceBytes: source.MaxArchiveBytes}
	s.guard = &auth.Guard{
		Authenticators: append([]auth.Authenticator{auth.Bearer{Tokens: tokens}}, authn...),
		RunPipeline: func(ctx context.Context, id string) (string, error) {
			run, err := st.GetRunCached(ctx, id) // a run never changes pipeline: a cached copy answers
			if err != nil {
				return "", err
			}
			return run.Pipeline, nil
		},
		PipelineName: spec.Slug,
		Denied:       s.denied,
	}
	s.Mount(s.table()...)
	return s
}

// table is the API's own routes, each with the least role that may call
// it and the pipeline it acts on (see docs/security.md).
func (s *Server) table() []auth.Route {
	const (
		viewer   = auth.RoleViewer
		operator = auth.RoleOperator
		admin    = auth.RoleAdmin
	)
	r := func(pattern string, role auth.Role, scope auth.Scope, h http.HandlerFunc) auth.Route {
		return auth.Route{Pattern: pattern, Role: role, Scope: scope, Handler: h}
	}
	return []auth.Route{
		r("GET /api/v1/pipelines", viewer, auth.ScopeFiltered, s.listPipelines),
		r("POST /api/v1/pipelines", operator, auth.ScopeAny, s.applyPipeline),
		r("GET /api/v1/pipelines/{name}", viewer, auth.ScopePipeline, s.getPipeline),
		r("PUT /api/v1/pipelines/{name}", operator, auth.ScopePipeline, s.applyPipeline),
		r("DELETE /api/v1/pipelines/{name}", operator, auth.ScopePipeline, s.deletePipeline),
		r("GET /api/v1/pipelines/{name}/export", viewer, auth.ScopePipeline, s.exportPipeline),
		r("GET /api/v1/pipelines/{name}/versions", viewer, auth.ScopePipeline, s.pipelineVersions),
		r("POST /api/v1/pipelines/{name}/clone", operator, auth.ScopePipeline, s.clonePipeline),
		r("POST /api/v1/pipelines/{name}/runs", operator, auth.ScopePipeline, s.triggerRun),
		r("POST /api/v1/validate", operator, auth.ScopeAny, s.validate),
		r("GET /api/v1/step-types", viewer, auth.ScopeAny, s.stepTypes),
		r("GET /api/v1/runs", viewer, auth.ScopeFiltered, s.listRuns),
		r("GET /api/v1/runs/{id}", viewer, auth.ScopeRun, s.getRun),
		r("POST /api/v1/runs/{id}/cancel", operator, auth.ScopeRun, s.cancelRun),
		r("POST /api/v1/runs/{id}/rerun", operator, auth.ScopeRun, s.rerun),
		r("POST /api/v1/runs/{id}/approve", operator, auth.ScopeRun, s.approveRun),
		r("GET /api/v1/runs/{id}/logs", viewer, auth.ScopeRun, s.logs),
		r("GET /api/v1/runners", viewer, auth.ScopeGlobal, s.listRunners),
		r("POST /api/v1/sources", operator, auth.ScopeAny, s.uploadSource),
		r("GET /api/v1/registries", viewer, auth.ScopeGlobal, s.listRegistries),
		r("POST /api/v1/registries", admin, auth.ScopeGlobal, s.putRegistry),
		r("DELETE /api/v1/registries/{id}", admin, auth.ScopeGlobal, s.deleteRegistry),
		r("GET /api/v1/clusters", viewer, auth.ScopeGlobal, s.listClusters),
		r("POST /api/v1/clusters", admin, auth.ScopeGlobal, s.putCluster),
		r("DELETE /api/v1/clusters/{id}", admin, auth.ScopeGlobal, s.deleteCluster),
		r("POST /api/v1/tokens", admin, auth.ScopeAny, s.createToken),
		r("GET /api/v1/tokens", admin, auth.ScopeGlobal, s.listTokens),
		r("DELETE /api/v1/tokens/{id}", admin, auth.ScopeGlobal, s.revokeToken),
		r("GET /api/v1/secrets", operator, auth.ScopeGlobal, s.listSecrets),
		r("PUT /api/v1/secrets/{secret}", admin, auth.ScopeGlobal, s.putSecret),
		r("DELETE /api/v1/secrets/{secret}", admin, auth.ScopeGlobal, s.deleteSecret),
		r("GET /api/v1/pipelines/{name}/secrets", operator, auth.ScopePipeline, s.listSecrets),
		r("PUT /api/v1/pipelines/{name}/secrets/{secret}", operator, auth.ScopePipeline, s.putSecret),
		r("DELETE /api/v1/pipelines/{name}/secrets/{secret}", operator, auth.ScopePipeline, s.deleteSecret),
		r("GET /api/v1/openapi.json", viewer, auth.ScopeAny, s.openAPI),
		r("GET /healthz", "", auth.ScopePublic, func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") }),
	}
}

// Mount serves more routes (the webhooks, the audit API) behind the same
// guard. Every route must state its role and scope: there is no way to
// mount an unguarded handler but [auth.ScopePublic].
func (s *Server) Mount(routes ...auth.Route) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.routes = append(s.routes, routes...)
	s.guard.Mount(s.mux, routes...)
}

// Routes returns every route the server serves, its own and those mounted,
// in mount order.
func (s *Server) Routes() []auth.Route {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]auth.Route(nil), s.routes...)
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

const maxBody = 1 << 20

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func (s *Server) fail(w http.ResponseWriter, err error) {
	body := apiv1.ErrorBody{Error: err.Error()}
	code := http.StatusInternalServerError
	var se spec.Errors
	switch {
	case errors.As(err, &se):
		code = http.StatusBadRequest
		for _, e := range se {
			body.Errors = append(body.Errors, apiv1.ErrorDetail{File: e.File, Line: e.Line, Field: e.Field, Message: e.Msg})
		}
	case errors.Is(err, store.ErrNotFound), errors.Is(err, errSecretNotFound):
		code = http.StatusNotFound
	case errors.Is(err, errUnavailable):
		code = http.StatusServiceUnavailable
	case errors.Is(err, orchestrator.ErrInvalid), errors.Is(err, errBadRequest):
		code = http.StatusBadRequest
	case errors.Is(err, orchestrator.ErrFinished):
		code = http.StatusConflict
	case errors.Is(err, auth.ErrForbidden):
		code = http.StatusForbidden
	case errors.Is(err, auth.ErrTokenNotFound):
		code = http.StatusNotFound
	case errors.Is(err, auth.ErrBadTokenSpec):
		code = http.StatusBadRequest
	}
	if code == http.StatusInternalServerError {
		s.log.Error("request failed", zap.Error(err))
	}
	writeJSON(w, code, body)
}

var errBadRequest = errors.New("bad request")

func readBody(r *http.Request, limit int64) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, limit))
	if err != nil {
		return nil, fmt.Errorf("%w: body: %v", errBadRequest, err)
	}
	return b, nil
}

// actor is the authenticated identity of r, as the audit trail and the
// records it changes name it.
func actor(r *http.Request) string { return auth.FromContext(r.Context()).Actor() }

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// audit publishes an API action for the audit trail.
func (s *Server) audit(r *http.Request, action, target string, err error) {
	outcome := "ok"
	switch {
	case errors.Is(err, auth.ErrForbidden):
		outcome = "denied: " + err.Error()
	case err != nil:
		outcome = "error: " + err.Error()
	}
	s.publishAction(actor(r), clientIP(r), action, target, outcome)
}

// denied records a request the guard refused: who (or "anonymous"), from
// where, which route and why. The reason never holds a credential.
func (s *Server) denied(r *http.Request, d auth.Denial) {
	target := r.URL.Path
	switch {
	case r.PathValue("name") != "":
		target = "pipeline/" + r.PathValue("name")
	case strings.HasPrefix(r.URL.Path, "/api/v1/runs/") && r.PathValue("id") != "":
		target = "run/" + r.PathValue("id")
	}
	s.publishAction(d.Identity.Actor(), clientIP(r), d.Route.Pattern, target, fmt.Sprintf("denied: %d %s", d.Status, d.Reason))
}

func (s *Server) publishAction(actor, ip, action, target, outcome string) {
	e, eerr := event.New(orchestrator.Source, event.TypeAPIAction, event.Meta{}, event.Action{
		Actor: actor, SourceIP: ip, Action: action, Target: target, Outcome: outcome})
	if eerr != nil {
		return
	}
	e.SetSubject(target)
	m, eerr := event.ToMsg("ansflow.events.api.action._", e)
	if eerr == nil {
		_, _ = s.js.PublishMsgAsync(m)
	}
}

func (s *Server) parseUpload(r *http.Request) (*spec.Pipeline, string, error) {
	b, err := readBody(r, spec.MaxFileBytes)
	if err != nil {
		return nil, "", err
	}
	text, file := string(b), "request"
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		var ar apiv1.ApplyRequest
		if err := json.Unmarshal(b, &ar); err != nil {
			return nil, "", fmt.Errorf("%w: JSON body: %v", errBadRequest, err)
		}
		text = ar.YAML
		if ar.File != "" {
			file = ar.File
		}
	}
	p, err := spec.Parse(file, []byte(text))
	return p, text, err
}

func (s *Server) applyPipeline(w http.ResponseWriter, r *http.Request) {
	p, text, err := s.parseUpload(r)
	if err == nil && r.PathValue("name") != "" && spec.Slug(r.PathValue("name")) != spec.Slug(p.Name) {
		err = fmt.Errorf("%w: URL names pipeline %q but the file names %q", errBadRequest, r.PathValue("name"), p.Name)
	}
	if err == nil {
		err = mayWrite(r, p.Name)
	}
	var rec *apiv1.Pipeline
	if err == nil {
		rec, err = s.st.PutPipeline(r.Context(), p, text, actor(r))
	}
	target := "pipeline/"
	if p != nil {
		target += p.Name
	}
	s.audit(r, "pipeline.apply", target, err)
	if err != nil {
		s.fail(w, err)
		return
	}
	e, _ := event.New(orchestrator.Source, event.TypePipelineUpdated, event.Meta{}, event.PipelineUpdated{Pipeline: rec.Name, Version: rec.Version, Actor: actor(r)})
	if m, err := event.ToMsg("ansflow.events.pipeline.updated."+event.Token(spec.Slug(rec.Name)), e); err == nil {
		_, _ = s.js.PublishMsgAsync(m)
	}
	writeJSON(w, http.StatusOK, rec)
}

func (s *Server) validate(w http.ResponseWriter, r *http.Request) {
	p, _, err := s.parseUpload(r)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

// stepTypes serves the definitions of the step types, with every setting's
// type, default, allowed values and help, for editors to build forms from.
// It is one small fixed list, in definition order, so it is not paged.
func (s *Server) stepTypes(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, steps.Types())
}

func (s *Server) listPipelines(w http.ResponseWriter, r *http.Request) {
	ps, err := s.st.ListPipelines(r.Context())
	if err != nil {
		s.fail(w, err)
		return
	}
	id := auth.FromContext(r.Context())
	out := ps[:0]
	for _, p := range ps {
		if id.CoversPipeline(spec.Slug(p.Name)) {
			out = append(out, p)
		}
	}
	writePage(s, w, r, out, func(p *apiv1.Pipeline) string { return p.Name })
}

func (s *Server) getPipeline(w http.ResponseWriter, r *http.Request) {
	rec, err := s.pipelineVersion(r)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, rec)
}

func (s *Server) pipelineVersion(r *http.Request) (*apiv1.Pipeline, error) {
	if v := r.URL.Query().Get("version"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return nil, fmt.Errorf("%w: version %q", errBadRequest, v)
		}
		return s.st.GetPipelineVersion(r.Context(), r.PathValue("name"), n)
	}
	return s.st.GetPipeline(r.Context(), r.PathValue("name"))
}

func (s *Server) exportPipeline(w http.ResponseWriter, r *http.Request) {
	rec, err := s.pipelineVersion(r)
	if err != nil {
		s.fail(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/yaml")
	io.WriteString(w, rec.YAML)
}

func (s *Server) pipelineVersions(w http.ResponseWriter, r *http.Request) {
	vs, err := s.st.PipelineVersions(r.Context(), r.PathValue("name"))
	if err != nil {
		s.fail(w, err)
		return
	}
	writePage(s, w, r, vs, func(p *apiv1.Pipeline) string { return fmt.Sprintf("%012d", p.Version) })
}

func (s *Server) deletePipeline(w http.ResponseWriter, r *http.Request) {
	err := s.st.DeletePipeline(r.Context(), r.PathValue("name"))
	s.audit(r, "pipeline.delete", "pipeline/"+r.PathValue("name"), err)
	if err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) clonePipeline(w http.ResponseWriter, r *http.Request) {
	var cr apiv1.CloneRequest
	b, err := readBody(r, maxBody)
	if err == nil {
		if err = json.Unmarshal(b, &cr); err != nil || cr.Name == "" {
			err = fmt.Errorf("%w: want {\"name\": \"new name\"}", errBadRequest)
		}
	}
	var rec *apiv1.Pipeline
	if err == nil {
		rec, err = s.st.GetPipeline(r.Context(), r.PathValue("name"))
	}
	if err == nil {
		err = mayWrite(r, cr.Name)
	}
	if err == nil {
		if _, gerr := s.st.GetPipeline(r.Context(), cr.Name); gerr == nil {
			err = fmt.Errorf("%w: pipeline %q already exists", errBadRequest, cr.Name)
		}
	}
	if err == nil {
		text := strings.Replace(rec.YAML, rec.Name, cr.Name, 1)
		var p *spec.Pipeline
		if p, err = spec.Parse("clone", []byte(text)); err == nil && p.Name != cr.Name {
			err = fmt.Errorf("%w: could not rename the pipeline in its YAML", errBadRequest)
		}
		if err == nil {
			rec, err = s.st.PutPipeline(r.Context(), p, text, actor(r))
		}
	}
	s.audit(r, "pipeline.clone", "pipeline/"+r.PathValue("name"), err)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, rec)
}

func (s *Server) triggerRun(w http.ResponseWriter, r *http.Request) {
	var tb apiv1.TriggerBody
	b, err := readBody(r, maxBody)
	if err == nil && len(bytes.TrimSpace(b)) > 0 {
		if jerr := json.Unmarshal(b, &tb); jerr != nil {
			err = fmt.Errorf("%w: JSON body: %v", errBadRequest, jerr)
		}
	}
	var run *store.Run
	if err == nil {
		req := orchestrator.TriggerRequest{Pipeline: r.PathValue("name"), Vars: tb.Vars,
			Git:     orchestrator.GitInfo{Branch: tb.Branch, Commit: tb.Commit, Tag: tb.Tag, RepoURL: tb.RepoURL},
			Trigger: apiv1.Trigger{Kind: "api", Actor: actor(r)}}
		if r.Header.Get("X-Ansflow-Trigger") == "cli" {
			req.Trigger.Kind = "cli"
		}
		if tb.SourceObject != "" {
			req.Source = &apiv1.Source{Object: tb.SourceObject}
		}
		// Otherwise the run clones tb.RepoURL, else the pipeline's
		// repository, at tb.Commit or the commit tb.Branch or tb.Tag
		// points at.
		ctx, span := tracing.StartSpan(r.Context(), "api.trigger", trace.SpanKindServer,
			attribute.String("ansflow.pipeline", req.Pipeline), attribute.String("ansflow.trigger.kind", req.Trigger.Kind))
		run, err = s.orc.Trigger(ctx, req)
		if err == nil && span.IsRecording() {
			span.SetAttributes(attribute.String("ansflow.run.id", run.ID))
		}
		tracing.RecordError(span, err)
		span.End()
	}
	s.audit(r, "run.trigger", "pipeline/"+r.PathValue("name"), err)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, &run.Run)
}

func (s *Server) listRuns(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	id := auth.FromContext(r.Context())
	runs, err := s.st.ListRuns(r.Context(), store.RunFilter{Pipeline: q.Get("pipeline"), Status: q.Get("status")})
	if err != nil {
		s.fail(w, err)
		return
	}
	if !id.AllPipelines() {
		kept := runs[:0]
		for _, run := range runs {
			if id.CoversPipeline(spec.Slug(run.Pipeline)) {
				kept = append(kept, run)
			}
		}
		runs = kept
	}
	out := make([]*apiv1.Run, len(runs))
	for i, run := range runs {
		s.orc.Annotate(run)
		out[i] = &run.Run
	}
	writePage(s, w, r, out, func(run *apiv1.Run) string { return newestFirst(run.CreatedAt, run.ID) })
}

func (s *Server) getRun(w http.ResponseWriter, r *http.Request) {
	run, err := s.st.GetRun(r.Context(), r.PathValue("id"))
	if err != nil {
		s.fail(w, err)
		return
	}
	s.orc.Annotate(run)
	writeJSON(w, http.StatusOK, &run.Run)
}

func (s *Server) listRunners(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	out := []apiv1.RunnerStatus{}
	for _, ri := range s.orc.Runners() {
		out = append(out, apiv1.RunnerStatus{RunnerInfo: ri, Online: ri.Online(now)})
	}
	writePage(s, w, r, out, func(rs apiv1.RunnerStatus) string { return rs.ID })
}

func (s *Server) cancelRun(w http.ResponseWriter, r *http.Request) {
	run, err := s.orc.Cancel(r.Context(), r.PathValue("id"), "cancelled by "+actor(r))
	s.audit(r, "run.cancel", "run/"+r.PathValue("id"), err)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, &run.Run)
}

// approveRun lets a run held for approval (a pull request from a fork)
// start.
func (s *Server) approveRun(w http.ResponseWriter, r *http.Request) {
	run, err := s.orc.Approve(r.Context(), r.PathValue("id"), actor(r))
	s.audit(r, "run.approve", "run/"+r.PathValue("id"), err)
	if err != nil {
		s.fail(w, err)
		return
	}
	s.orc.Annotate(run)
	writeJSON(w, http.StatusOK, &run.Run)
}

func (s *Server) rerun(w http.ResponseWriter, r *http.Request) {
	var body apiv1.RerunBody
	if b, err := readBody(r, maxBody); err != nil {
		s.fail(w, err)
		return
	} else if len(bytes.TrimSpace(b)) > 0 {
		if err := json.Unmarshal(b, &body); err != nil {
			s.fail(w, fmt.Errorf("%w: JSON body: %v", errBadRequest, err))
			return
		}
	}
	rerun := s.orc.Rerun
	if body.All {
		rerun = s.orc.RerunAll
	}
	run, err := rerun(r.Context(), r.PathValue("id"), apiv1.Trigger{Kind: "rerun", Actor: actor(r)})
	s.audit(r, "run.rerun", "run/"+r.PathValue("id"), err)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, &run.Run)
}

// uploadSource streams the body to the sources object store in chunks: an
// archive is never held in memory, and one over MaxSourceBytes is refused
// with 413 and leaves no object behind.
func (s *Server) uploadSource(w http.ResponseWriter, r *http.Request) {
	objects, err := source.Store(r.Context(), s.js)
	if err != nil {
		s.fail(w, err)
		return
	}
	name := uuid.NewString() + ".tar.gz"
	body := http.MaxBytesReader(w, r.Body, s.MaxSourceBytes)
	if _, err := objects.Put(r.Context(), jetstream.ObjectMeta{Name: name}, body); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			_ = objects.Delete(context.WithoutCancel(r.Context()), name)
			writeJSON(w, http.StatusRequestEntityTooLarge, apiv1.ErrorBody{Error: fmt.Sprintf("source archive over the %d-byte limit", s.MaxSourceBytes)})
			return
		}
		s.fail(w, fmt.Errorf("store source: %w", err))
		return
	}
	writeJSON(w, http.StatusCreated, apiv1.SourceBody{Object: name})
}

func (s *Server) listRegistries(w http.ResponseWriter, r *http.Request) {
	rs, err := s.st.Registries(r.Context())
	if err != nil {
		s.fail(w, err)
		return
	}
	writePage(s, w, r, rs, func(reg *apiv1.Registry) string { return reg.ID })
}

func (s *Server) putRegistry(w http.ResponseWriter, r *http.Request) {
	var reg apiv1.Registry
	b, err := readBody(r, maxBody)
	if err == nil {
		if jerr := json.Unmarshal(b, &reg); jerr != nil {
			err = fmt.Errorf("%w: JSON body: %v", errBadRequest, jerr)
		} else if err = s.st.PutRegistry(r.Context(), &reg); err != nil {
			err = fmt.Errorf("%w: %v", errBadRequest, err)
		}
	}
	s.audit(r, "registry.put", "registry/"+reg.ID, err)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, reg)
}

func (s *Server) deleteRegistry(w http.ResponseWriter, r *http.Request) {
	err := s.st.DeleteRegistry(r.Context(), r.PathValue("id"))
	s.audit(r, "registry.delete", "registry/"+r.PathValue("id"), err)
	if err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) listClusters(w http.ResponseWriter, r *http.Request) {
	cs, err := s.st.Clusters(r.Context())
	if err != nil {
		s.fail(w, err)
		return
	}
	writePage(s, w, r, cs, func(c *apiv1.Cluster) string { return c.ID })
}

func (s *Server) putCluster(w http.ResponseWriter, r *http.Request) {
	var c apiv1.Cluster
	b, err := readBody(r, maxBody)
	if err == nil {
		if jerr := json.Unmarshal(b, &c); jerr != nil {
			err = fmt.Errorf("%w: JSON body: %v", errBadRequest, jerr)
		} else if err = s.st.PutCluster(r.Context(), &c); err != nil {
			err = fmt.Errorf("%w: %v", errBadRequest, err)
		}
	}
	s.audit(r, "cluster.put", "cluster/"+c.ID, err)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, c)
}

func (s *Server) deleteCluster(w http.ResponseWriter, r *http.Request) {
	err := s.st.DeleteCluster(r.Context(), r.PathValue("id"))
	s.audit(r, "cluster.delete", "cluster/"+r.PathValue("id"), err)
	if err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// mayWrite checks that r's identity may change the pipeline named in its
// body (a route of [auth.ScopeAny]); the error wraps [auth.ErrForbidden].
func mayWrite(r *http.Request, pipeline string) error {
	id := auth.FromContext(r.Context())
	if !id.Can(auth.RoleOperator, spec.Slug(pipeline)) {
		return fmt.Errorf("%w: the grant of %s (%s) does not cover pipeline %q",
			auth.ErrForbidden, id.Actor(), id.Grant(), pipeline)
	}
	return nil
}
