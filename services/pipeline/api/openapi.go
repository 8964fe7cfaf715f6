package api

import (
	"encoding/json"
	"net/http"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/pkg/spec/steps"
)

// RouteDoc describes one REST route for the OpenAPI document. Request and
// Response are zero values of the Go types sent and answered (nil: none,
// or not JSON); their JSON Schemas are derived from the types, so the
// document cannot drift from what the handlers encode.
type RouteDoc struct {
	Summary string
	// RequestType is the request body's media type when it is not JSON
	// (application/yaml, application/gzip, text/plain).
	RequestType string
	Request     any
	// Status is the success status (default 200); List marks a paged
	// list of Response items (?limit=&cursor=, Link and X-Next-Cursor).
	Status   int
	Response any
	List     bool
	// Stream is the media type of a streamed answer (text/event-stream).
	Stream string
}

// routeDocs are the API's own routes and those the pipeline service
// mounts (login, users, webhooks); a route without a description fails
// TestOpenAPICoversEveryRoute. Mounters of other routes add theirs with
// [Server.Describe].
var routeDocs = map[string]RouteDoc{
	"GET /api/v1/pipelines":                            {Summary: "List pipelines (latest versions)", Response: apiv1.Pipeline{}, List: true},
	"POST /api/v1/pipelines":                           {Summary: "Apply a pipeline file (create or new version)", RequestType: "application/yaml", Response: apiv1.Pipeline{}},
	"GET /api/v1/pipelines/{name}":                     {Summary: "Get a pipeline's latest version", Response: apiv1.Pipeline{}},
	"PUT /api/v1/pipelines/{name}":                     {Summary: "Apply a new version of a pipeline", RequestType: "application/yaml", Response: apiv1.Pipeline{}},
	"DELETE /api/v1/pipelines/{name}":                  {Summary: "Delete a pipeline", Status: http.StatusNoContent},
	"GET /api/v1/pipelines/{name}/export":              {Summary: "Export a pipeline's YAML", Stream: "application/yaml"},
	"GET /api/v1/pipelines/{name}/versions":            {Summary: "List a pipeline's versions", Response: apiv1.Pipeline{}, List: true},
	"POST /api/v1/pipelines/{name}/clone":              {Summary: "Clone a pipeline under a new name", Request: apiv1.CloneRequest{}, Status: http.StatusCreated, Response: apiv1.Pipeline{}},
	"POST /api/v1/pipelines/{name}/runs":               {Summary: "Trigger a run", Request: apiv1.TriggerBody{}, Status: http.StatusCreated, Response: apiv1.Run{}},
	"POST /api/v1/validate":                            {Summary: "Validate a pipeline file (errors as file:line: field: message)", RequestType: "application/yaml", Response: spec.Pipeline{}},
	"GET /api/v1/step-types":                           {Summary: "The step types and their settings", Response: []steps.StepType{}},
	"GET /api/v1/runs":                                 {Summary: "List runs, newest first (?pipeline=&status=)", Response: apiv1.Run{}, List: true},
	"GET /api/v1/runs/{id}":                            {Summary: "Get a run", Response: apiv1.Run{}},
	"POST /api/v1/runs/{id}/cancel":                    {Summary: "Cancel a run", Response: apiv1.Run{}},
	"POST /api/v1/runs/{id}/rerun":                     {Summary: "Re-run a run from its failed step, or all of it", Request: apiv1.RerunBody{}, Status: http.StatusCreated, Response: apiv1.Run{}},
	"POST /api/v1/runs/{id}/approve":                   {Summary: "Approve a run held for approval", Response: apiv1.Run{}},
	"GET /api/v1/runs/{id}/logs":                       {Summary: "A run's logs and status changes as server-sent events (apiv1.LogLine)", Stream: "text/event-stream", Response: apiv1.LogLine{}},
	"GET /api/v1/runners":                              {Summary: "List runners", Response: apiv1.RunnerStatus{}, List: true},
	"POST /api/v1/sources":                             {Summary: "Upload a source archive (tar.gz)", RequestType: "application/gzip", Status: http.StatusCreated, Response: apiv1.SourceBody{}},
	"GET /api/v1/registries":                           {Summary: "List registries", Response: apiv1.Registry{}, List: true},
	"POST /api/v1/registries":                          {Summary: "Add or replace a registry", Request: apiv1.Registry{}, Response: apiv1.Registry{}},
	"DELETE /api/v1/registries/{id}":                   {Summary: "Delete a registry", Status: http.StatusNoContent},
	"GET /api/v1/clusters":                             {Summary: "List clusters", Response: apiv1.Cluster{}, List: true},
	"POST /api/v1/clusters":                            {Summary: "Add or replace a cluster", Request: apiv1.Cluster{}, Response: apiv1.Cluster{}},
	"DELETE /api/v1/clusters/{id}":                     {Summary: "Delete a cluster", Status: http.StatusNoContent},
	"POST /api/v1/tokens":                              {Summary: "Create an API token (its secret is answered once)", Request: apiv1.CreateTokenRequest{}, Status: http.StatusCreated, Response: apiv1.CreatedToken{}},
	"GET /api/v1/tokens":                               {Summary: "List API tokens (never a secret)", Response: apiv1.TokenInfo{}, List: true},
	"DELETE /api/v1/tokens/{id}":                       {Summary: "Revoke an API token", Response: apiv1.TokenInfo{}},
	"GET /api/v1/secrets":                              {Summary: "List global secrets (metadata only)", Response: []apiv1.SecretInfo{}},
	"PUT /api/v1/secrets/{secret}":                     {Summary: "Set a global secret (write-only)", Request: apiv1.SetSecretRequest{}, Response: apiv1.SecretInfo{}},
	"DELETE /api/v1/secrets/{secret}":                  {Summary: "Delete a global secret", Status: http.StatusNoContent},
	"GET /api/v1/pipelines/{name}/secrets":             {Summary: "List a pipeline's secrets (metadata only)", Response: []apiv1.SecretInfo{}},
	"PUT /api/v1/pipelines/{name}/secrets/{secret}":    {Summary: "Set a pipeline secret (write-only)", Request: apiv1.SetSecretRequest{}, Response: apiv1.SecretInfo{}},
	"DELETE /api/v1/pipelines/{name}/secrets/{secret}": {Summary: "Delete a pipeline secret", Status: http.StatusNoContent},
	"GET /api/v1/openapi.json":                         {Summary: "This document", Response: map[string]any{}},
	"GET /healthz":                                     {Summary: "Liveness", Stream: "text/plain"},
	"GET /api/v1/login":                                {Summary: "How one may log in", Response: apiv1.Methods{}},
	"POST /api/v1/login":                               {Summary: "Log in with a password (sets the session cookie)", Request: apiv1.LoginRequest{}, Response: apiv1.Session{}},
	"POST /api/v1/login/token":                         {Summary: "Log in with an API token (sets a session cookie of the token's role and pipelines)", Request: apiv1.TokenLoginRequest{}, Response: apiv1.Session{}},
	"POST /api/v1/logout":                              {Summary: "End the session", Status: http.StatusNoContent},
	"GET /api/v1/me":                                   {Summary: "Who is calling", Response: apiv1.Session{}},
	"GET /api/v1/users":                                {Summary: "List users", Response: []apiv1.User{}},
	"POST /api/v1/users":                               {Summary: "Create a user", Request: apiv1.CreateUserRequest{}, Status: http.StatusCreated, Response: apiv1.User{}},
	"DELETE /api/v1/users/{name}":                      {Summary: "Delete a user", Status: http.StatusNoContent},
	"GET /auth/oidc/login":                             {Summary: "Start an OpenID Connect login (redirect)", Status: http.StatusFound},
	"GET /auth/oidc/callback":                          {Summary: "OpenID Connect callback (redirect)", Status: http.StatusFound},
	"POST /webhooks/{provider}/{pipeline}":             {Summary: "A forge's webhook delivery (GitHub, GitLab, Gitea, Standard Webhooks), authenticated by its signature", RequestType: "application/json", Status: http.StatusAccepted, Response: apiv1.WebhookResponse{}},
}

// Describe adds descriptions of routes mounted from outside the package
// (the audit API of the embedded stack) to the OpenAPI document.
func (s *Server) Describe(docs map[string]RouteDoc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.docs == nil {
		s.docs = map[string]RouteDoc{}
	}
	for k, v := range docs {
		s.docs[k] = v
	}
}

// documented reports whether a route belongs in the OpenAPI document: the
// REST API, the webhooks, OIDC login and the health check, not the web
// UI's pages.
func documented(rt auth.Route) bool {
	return !rt.Page && rt.Pattern != "GET /login" && rt.Pattern != "GET /static/"
}

// Undocumented returns the documented-kind routes the server serves
// without a description, for tests.
func (s *Server) Undocumented() []string {
	var out []string
	for _, rt := range s.Routes() {
		if _, ok := s.doc(rt.Pattern); documented(rt) && !ok {
			out = append(out, rt.Pattern)
		}
	}
	return out
}

func (s *Server) doc(pattern string) (RouteDoc, bool) {
	s.mu.Lock()
	d, ok := s.docs[pattern]
	s.mu.Unlock()
	if ok {
		return d, true
	}
	d, ok = routeDocs[pattern]
	return d, ok
}

var pathParam = regexp.MustCompile(`\{([a-z_]+)\}`)

// OpenAPI builds the OpenAPI 3.1 document of every route the server
// serves, with each route's role and scope (x-ansflow-role,
// x-ansflow-scope) from the route table.
func (s *Server) OpenAPI() map[string]any {
	g := &schemaGen{defs: map[string]any{}}
	paths := map[string]map[string]any{}
	for _, rt := range s.Routes() {
		if !documented(rt) {
			continue
		}
		d, ok := s.doc(rt.Pattern)
		if !ok {
			continue
		}
		method, path, _ := strings.Cut(rt.Pattern, " ")
		path = strings.TrimSuffix(path, "{$}")
		op := map[string]any{"summary": d.Summary, "operationId": operationID(rt.Pattern), "x-ansflow-scope": rt.Scope.String()}
		if rt.Scope == auth.ScopePublic {
			op["security"] = []any{}
		} else {
			op["x-ansflow-role"] = string(rt.Role)
		}
		var params []any
		for _, m := range pathParam.FindAllStringSubmatch(path, -1) {
			params = append(params, map[string]any{"name": m[1], "in": "path", "required": true, "schema": map[string]any{"type": "string"}})
		}
		if d.List {
			params = append(params,
				map[string]any{"name": "limit", "in": "query", "schema": map[string]any{"type": "integer", "minimum": 1, "maximum": 500}},
				map[string]any{"name": "cursor", "in": "query", "schema": map[string]any{"type": "string"}})
		}
		if params != nil {
			op["parameters"] = params
		}
		switch {
		case d.Request != nil:
			op["requestBody"] = map[string]any{"content": map[string]any{"application/json": map[string]any{"schema": g.schema(reflect.TypeOf(d.Request))}}}
		case d.RequestType != "":
			op["requestBody"] = map[string]any{"required": true, "content": map[string]any{d.RequestType: map[string]any{}}}
		}
		status := d.Status
		if status == 0 {
			status = http.StatusOK
		}
		resp := map[string]any{"description": http.StatusText(status)}
		switch {
		case d.Stream != "":
			c := map[string]any{}
			if d.Response != nil {
				c["x-ansflow-event"] = g.schema(reflect.TypeOf(d.Response))
			}
			resp["content"] = map[string]any{d.Stream: c}
		case d.Response != nil:
			sch := g.schema(reflect.TypeOf(d.Response))
			if d.List {
				sch = map[string]any{"type": "array", "items": sch}
			}
			resp["content"] = map[string]any{"application/json": map[string]any{"schema": sch}}
		}
		responses := map[string]any{itoa(status): resp,
			"4XX": map[string]any{"description": "the request's fault", "content": map[string]any{"application/json": map[string]any{"schema": g.schema(reflect.TypeOf(apiv1.ErrorBody{}))}}}}
		op["responses"] = responses
		if paths[path] == nil {
			paths[path] = map[string]any{}
		}
		paths[path][strings.ToLower(method)] = op
	}
	return map[string]any{
		"openapi": "3.1.0",
		"info": map[string]any{"title": "AnsFlow REST API", "version": "v1",
			"description": "Roles and scopes per route: docs/security.md. Errors: {\"error\": \"...\"}."},
		"paths": paths,
		"components": map[string]any{
			"schemas": g.defs,
			"securitySchemes": map[string]any{
				"bearer":  map[string]any{"type": "http", "scheme": "bearer"},
				"session": map[string]any{"type": "apiKey", "in": "cookie", "name": "ansflow_session"},
			},
		},
		"security": []any{map[string]any{"bearer": []any{}}, map[string]any{"session": []any{}}},
	}
}

func (s *Server) openAPI(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.OpenAPI())
}

func operationID(pattern string) string {
	method, path, _ := strings.Cut(pattern, " ")
	var b strings.Builder
	b.WriteString(strings.ToLower(method))
	for _, part := range strings.FieldsFunc(path, func(r rune) bool { return r == '/' || r == '{' || r == '}' || r == '.' || r == '$' }) {
		if part == "api" || part == "v1" {
			continue
		}
		b.WriteString(strings.ToUpper(part[:1]) + strings.ReplaceAll(part[1:], "-", ""))
	}
	return b.String()
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// schemaGen derives JSON Schemas (2020-12, as OpenAPI 3.1 uses) from Go
// types as encoding/json encodes them; named struct types become shared
// components.
type schemaGen struct {
	defs map[string]any
}

var (
	timeType = reflect.TypeOf(time.Time{})
	rawType  = reflect.TypeOf(json.RawMessage{})
)

func (g *schemaGen) schema(t reflect.Type) map[string]any {
	switch {
	case t == timeType:
		return map[string]any{"type": "string", "format": "date-time"}
	case t == rawType:
		return map[string]any{}
	}
	if _, ok := t.MethodByName("MarshalJSON"); ok && t.Kind() != reflect.Struct {
		return map[string]any{} // custom encodings (durations, refs): any
	}
	switch t.Kind() {
	case reflect.Pointer:
		return g.schema(t.Elem())
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return map[string]any{"type": "integer"}
	case reflect.Float32, reflect.Float64:
		return map[string]any{"type": "number"}
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 {
			return map[string]any{"type": "string", "contentEncoding": "base64"}
		}
		return map[string]any{"type": "array", "items": g.schema(t.Elem())}
	case reflect.Map:
		return map[string]any{"type": "object", "additionalProperties": g.schema(t.Elem())}
	case reflect.Interface:
		return map[string]any{}
	case reflect.Struct:
		name := t.Name()
		if name == "" {
			return g.object(t)
		}
		key := defName(t)
		if _, ok := g.defs[key]; !ok {
			g.defs[key] = map[string]any{} // recursion guard
			g.defs[key] = g.object(t)
		}
		return map[string]any{"$ref": "#/components/schemas/" + key}
	}
	return map[string]any{}
}

// defName is a struct's component name: its package's last element and
// its name (spec.Pipeline → SpecPipeline); the API's own types (package apiv1) keep
// their bare names.
func defName(t reflect.Type) string {
	pkg := t.PkgPath()
	if i := strings.LastIndexByte(pkg, '/'); i >= 0 {
		pkg = pkg[i+1:]
	}
	if pkg == "" || pkg == "apiv1" {
		return t.Name()
	}
	return strings.ToUpper(pkg[:1]) + pkg[1:] + t.Name()
}

func (g *schemaGen) object(t reflect.Type) map[string]any {
	props := map[string]any{}
	var required []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				emb := g.object(ft)
				for k, v := range emb["properties"].(map[string]any) {
					props[k] = v
				}
				if r, ok := emb["required"].([]string); ok {
					required = append(required, r...)
				}
				continue
			}
		}
		if name == "" {
			name = f.Name
		}
		props[name] = g.schema(f.Type)
		if !strings.Contains(opts, "omitempty") && !strings.Contains(opts, "omitzero") && f.Type.Kind() != reflect.Pointer {
			required = append(required, name)
		}
	}
	out := map[string]any{"type": "object", "properties": props}
	if len(required) > 0 {
		sort.Strings(required)
		out["required"] = required
	}
	return out
}
