package main

import (
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"go.uber.org/zap"
)

// TestOpenAPICoversEveryRoute: /api/v1/openapi.json of the embedded stack
// (API, login, webhooks, audit) describes every REST route it serves and
// no other, with the role of the route table, and every schema it refers
// to is in it.
func TestOpenAPICoversEveryRoute(t *testing.T) {
	useScriptedEngines(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := startStack(ctx, stackConfig{DataDir: t.TempDir(), NATSAddr: "off", DockerRunner: true, Audit: true, Pipeline: true, Concurrency: 2}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer st.stop()
	if missing := st.svc.API.Undocumented(); len(missing) > 0 {
		t.Fatalf("routes without an OpenAPI description: %v", missing)
	}
	var raw json.RawMessage
	if err := newClient(st.URL, st.Token).do(ctx, http.MethodGet, "/api/v1/openapi.json", "", nil, &raw); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		OpenAPI    string                               `json:"openapi"`
		Paths      map[string]map[string]map[string]any `json:"paths"`
		Components struct {
			Schemas map[string]any `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.OpenAPI != "3.1.0" {
		t.Errorf("openapi %q, want 3.1.0", doc.OpenAPI)
	}
	served := map[string]string{}
	for _, rt := range st.svc.API.Routes() {
		if rt.Page || rt.Pattern == "GET /login" || rt.Pattern == "GET /static/" {
			continue
		}
		served[rt.Pattern] = string(rt.Role)
	}
	seen := 0
	for path, ops := range doc.Paths {
		for method, op := range ops {
			pattern := strings.ToUpper(method) + " " + path
			role, ok := served[pattern]
			if !ok {
				t.Errorf("the document describes %s, which the server does not serve", pattern)
				continue
			}
			seen++
			if got, _ := op["x-ansflow-role"].(string); got != role {
				t.Errorf("%s: x-ansflow-role %q, the route table says %q", pattern, got, role)
			}
		}
	}
	if seen != len(served) {
		t.Errorf("the document describes %d of the %d routes served", seen, len(served))
	}
	for _, m := range regexp.MustCompile(`"#/components/schemas/([A-Za-z0-9]+)"`).FindAllStringSubmatch(string(raw), -1) {
		if _, ok := doc.Components.Schemas[m[1]]; !ok {
			t.Errorf("$ref to missing schema %s", m[1])
		}
	}
	run, _ := doc.Components.Schemas["Run"].(map[string]any)
	props, _ := run["properties"].(map[string]any)
	for _, f := range []string{"id", "pipeline", "status", "steps", "trigger"} {
		if _, ok := props[f]; !ok {
			t.Errorf("schema Run lacks %q", f)
		}
	}
	t.Logf("%d routes, %d schemas, %d bytes", seen, len(doc.Components.Schemas), len(raw))
}
