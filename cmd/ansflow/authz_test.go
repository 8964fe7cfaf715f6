package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/services/audit/store"
)

// authzRow is one route of the matrix: the request that exercises it on
// pipeline "alpha" (or a run of it), the least role the test expects, and
// what a grant limited to other pipelines gets.
type authzRow struct {
	role auth.Role
	// kind: "global" needs a grant on every pipeline; "pipeline" needs a
	// grant covering alpha; "open" lets any grant with the role through
	// (listings filter, validate and source uploads touch no pipeline);
	// "public" ignores credentials.
	kind                string
	method, path, ctype string
	body                string
}

func pipeYAML(name string) string {
	return "pipeline:\n  name: " + name + "\n  steps:\n    - {name: a, type: docker_run, command: \"echo hi\"}\n"
}

// TestAuthorizationMatrix calls every route the embedded server serves
// (enumerated from the server, so a route without a row fails) with every
// role × grant (every pipeline, alpha*, beta*) and with no, a bad, an
// expired and a revoked token, and checks the answer is 401, 403 or
// allowed (neither, and no server error) as the access model says. Every
// refusal must then be in the audit trail with its source IP, and no token
// anywhere in it.
func TestAuthorizationMatrix(t *testing.T) {
	useScriptedEngines(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := startStack(ctx, stackConfig{DataDir: t.TempDir(), NATSAddr: "off", DockerRunner: true, Audit: true, Pipeline: true, Concurrency: 4}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer st.stop()
	admin := newClient(st.URL, st.Token)
	for _, name := range []string{"alpha", "beta", "alpha-del"} {
		if _, err := admin.applyPipeline(ctx, name+".yaml", []byte(pipeYAML(name))); err != nil {
			t.Fatal(err)
		}
	}
	run, err := admin.trigger(ctx, "alpha", apiv1.TriggerBody{})
	if err != nil {
		t.Fatal(err)
	}
	waitRun(t, admin, run.ID)
	_, victim, err := st.svc.Tokens.Create(ctx, auth.TokenSpec{Name: "victim", Role: auth.RoleViewer}, auth.System)
	if err != nil {
		t.Fatal(err)
	}

	// The identities of the columns.
	type column struct {
		name, token string
		role        auth.Role
		grant       string // "all", "allowed", "other"; "" for the 401 columns
	}
	var cols []column
	var secrets []string
	for _, role := range []auth.Role{auth.RoleViewer, auth.RoleOperator, auth.RoleAdmin} {
		for _, g := range []struct{ name, glob string }{{"all", ""}, {"allowed", "alpha*"}, {"other", "beta*"}} {
			spec := auth.TokenSpec{Name: string(role) + "-" + g.name, Role: role}
			if g.glob != "" {
				spec.Pipelines = []string{g.glob}
			}
			secret, _, err := st.svc.Tokens.Create(ctx, spec, auth.System)
			if err != nil {
				t.Fatal(err)
			}
			cols = append(cols, column{name: spec.Name, token: secret, role: role, grant: g.name})
			secrets = append(secrets, secret)
		}
	}
	bad, _ := auth.NewTokenSecret()
	revoked, revokedTok, err := st.svc.Tokens.Create(ctx, auth.TokenSpec{Name: "revoked", Role: auth.RoleAdmin}, auth.System)
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.do(ctx, http.MethodDelete, "/api/v1/tokens/"+revokedTok.ID, "", nil, nil); err != nil {
		t.Fatal(err)
	}
	soon := time.Now().Add(300 * time.Millisecond)
	expired, _, err := st.svc.Tokens.Create(ctx, auth.TokenSpec{Name: "expired", Role: auth.RoleAdmin, ExpiresAt: &soon}, auth.System)
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, bad, revoked, expired, st.Token)
	noRedirects := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	call := func(method, path, ctype, body, token string) (int, http.Header, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, method, st.URL+path, strings.NewReader(body))
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := noRedirects.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(b)
	}
	waitFor(t, 10*time.Second, "the expired token to be refused", func() (bool, string) {
		code, _, _ := call(http.MethodGet, "/api/v1/runs", "", "", expired)
		return code == http.StatusUnauthorized, fmt.Sprint(code)
	})
	cols = append(cols, column{name: "no token"}, column{name: "bad token", token: bad},
		column{name: "expired token", token: expired}, column{name: "revoked token", token: revoked})

	const yamlCT, jsonCT = "application/yaml", "application/json"
	runP := "/api/v1/runs/" + run.ID
	rows := map[string]authzRow{
		"GET /api/v1/pipelines":                 {auth.RoleViewer, "open", "GET", "/api/v1/pipelines", "", ""},
		"POST /api/v1/pipelines":                {auth.RoleOperator, "pipeline", "POST", "/api/v1/pipelines", yamlCT, pipeYAML("alpha-new")},
		"GET /api/v1/pipelines/{name}":          {auth.RoleViewer, "pipeline", "GET", "/api/v1/pipelines/alpha", "", ""},
		"PUT /api/v1/pipelines/{name}":          {auth.RoleOperator, "pipeline", "PUT", "/api/v1/pipelines/alpha-put", yamlCT, pipeYAML("alpha-put")},
		"DELETE /api/v1/pipelines/{name}":       {auth.RoleOperator, "pipeline", "DELETE", "/api/v1/pipelines/alpha-del", "", ""},
		"GET /api/v1/pipelines/{name}/export":   {auth.RoleViewer, "pipeline", "GET", "/api/v1/pipelines/alpha/export", "", ""},
		"GET /api/v1/pipelines/{name}/versions": {auth.RoleViewer, "pipeline", "GET", "/api/v1/pipelines/alpha/versions", "", ""},
		"POST /api/v1/pipelines/{name}/clone":   {auth.RoleOperator, "pipeline", "POST", "/api/v1/pipelines/alpha/clone", jsonCT, `{"name":"alpha-copy"}`},
		"POST /api/v1/pipelines/{name}/runs":    {auth.RoleOperator, "pipeline", "POST", "/api/v1/pipelines/alpha/runs", jsonCT, `{}`},
		"POST /api/v1/validate":                 {auth.RoleOperator, "open", "POST", "/api/v1/validate", yamlCT, pipeYAML("anything")},
		"GET /api/v1/step-types":                {auth.RoleViewer, "open", "GET", "/api/v1/step-types", "", ""},
		"GET /api/v1/runs":                      {auth.RoleViewer, "open", "GET", "/api/v1/runs", "", ""},
		"GET /api/v1/runs/{id}":                 {auth.RoleViewer, "pipeline", "GET", runP, "", ""},
		"POST /api/v1/runs/{id}/cancel":         {auth.RoleOperator, "pipeline", "POST", runP + "/cancel", "", ""},
		"POST /api/v1/runs/{id}/rerun":          {auth.RoleOperator, "pipeline", "POST", runP + "/rerun", "", ""},
		"POST /api/v1/runs/{id}/approve":        {auth.RoleOperator, "pipeline", "POST", runP + "/approve", "", ""},
		"GET /api/v1/runs/{id}/logs":            {auth.RoleViewer, "pipeline", "GET", runP + "/logs", "", ""},
		"GET /api/v1/runners":                   {auth.RoleViewer, "global", "GET", "/api/v1/runners", "", ""},
		"POST /api/v1/sources":                  {auth.RoleOperator, "open", "POST", "/api/v1/sources", "application/gzip", "not really a tarball"},
		"GET /api/v1/registries":                {auth.RoleViewer, "global", "GET", "/api/v1/registries", "", ""},
		"POST /api/v1/registries":               {auth.RoleAdmin, "global", "POST", "/api/v1/registries", jsonCT, `{"id":"m1","name":"m","url":"127.0.0.1:5999"}`},
		"DELETE /api/v1/registries/{id}":        {auth.RoleAdmin, "global", "DELETE", "/api/v1/registries/m1", "", ""},
		"GET /api/v1/clusters":                  {auth.RoleViewer, "global", "GET", "/api/v1/clusters", "", ""},
		"POST /api/v1/clusters":                 {auth.RoleAdmin, "global", "POST", "/api/v1/clusters", jsonCT, `{"id":"c1","name":"c","context":"x"}`},
		"DELETE /api/v1/clusters/{id}":          {auth.RoleAdmin, "global", "DELETE", "/api/v1/clusters/c1", "", ""},
		"POST /api/v1/tokens":                   {auth.RoleAdmin, "pipeline", "POST", "/api/v1/tokens", jsonCT, `{"role":"viewer","pipelines":["alpha"]}`},
		"GET /api/v1/tokens":                    {auth.RoleAdmin, "global", "GET", "/api/v1/tokens", "", ""},
		"DELETE /api/v1/tokens/{id}":            {auth.RoleAdmin, "global", "DELETE", "/api/v1/tokens/" + victim.ID, "", ""},
		"GET /api/v1/audit":                     {auth.RoleViewer, "pipeline", "GET", "/api/v1/audit?pipeline=alpha", "", ""},
		"GET /api/v1/audit/verify":              {auth.RoleViewer, "global", "GET", "/api/v1/audit/verify", "", ""},
		"GET /healthz":                          {"", "public", "GET", "/healthz", "", ""},
		"GET /api/v1/openapi.json":              {auth.RoleViewer, "open", "GET", "/api/v1/openapi.json", "", ""},
		"GET /api/v1/login":                     {"", "public", "GET", "/api/v1/login", "", ""},
		"POST /api/v1/login":                    {"", "public", "POST", "/api/v1/login", "text/plain", "not JSON"},
		"POST /api/v1/login/token":              {"", "public", "POST", "/api/v1/login/token", "text/plain", "not JSON"},
		"POST /api/v1/logout":                   {"", "public", "POST", "/api/v1/logout", "", ""},
		"GET /api/v1/me":                        {auth.RoleViewer, "open", "GET", "/api/v1/me", "", ""},
		"GET /api/v1/users":                     {auth.RoleAdmin, "global", "GET", "/api/v1/users", "", ""},
		"POST /api/v1/users":                    {auth.RoleAdmin, "global", "POST", "/api/v1/users", jsonCT, `{"name":"matrix-user","role":"viewer","password":"matrix-password"}`},
		"DELETE /api/v1/users/{name}":           {auth.RoleAdmin, "global", "DELETE", "/api/v1/users/nobody", "", ""},
		"POST /webhooks/{provider}/{pipeline}":  {"", "public", "POST", "/webhooks/github/alpha", jsonCT, `{}`},
		"GET /api/v1/secrets":                   {auth.RoleOperator, "global", "GET", "/api/v1/secrets", "", ""},
		"PUT /api/v1/secrets/{secret}":          {auth.RoleAdmin, "global", "PUT", "/api/v1/secrets/MATRIX", "text/plain", "matrix-value"},
		"DELETE /api/v1/secrets/{secret}":       {auth.RoleAdmin, "global", "DELETE", "/api/v1/secrets/NOBODY", "", ""},
		"GET /api/v1/pipelines/{name}/secrets":  {auth.RoleOperator, "pipeline", "GET", "/api/v1/pipelines/alpha/secrets", "", ""},
		"PUT /api/v1/pipelines/{name}/secrets/{secret}": {auth.RoleOperator, "pipeline", "PUT", "/api/v1/pipelines/alpha/secrets/MATRIX", jsonCT,
			`{"value":"matrix-value","filters":{"branches":["main"]}}`},
		"DELETE /api/v1/pipelines/{name}/secrets/{secret}": {auth.RoleOperator, "pipeline", "DELETE", "/api/v1/pipelines/alpha/secrets/NOBODY", "", ""},
		// The web UI's pages: a browser without a session is sent to the
		// login page (counted as the 401 it stands for).
		"GET /{$}":              {auth.RoleViewer, "open", "GET", "/", "", ""},
		"GET /pipelines":        {auth.RoleViewer, "open", "GET", "/pipelines", "", ""},
		"GET /pipelines/{name}": {auth.RoleViewer, "pipeline", "GET", "/pipelines/alpha", "", ""},
		// The editor: a new pipeline for any operator (saving checks the
		// name), an existing one for its operators; the versions for its
		// viewers.
		"GET /pipelines/new":         {auth.RoleOperator, "open", "GET", "/pipelines/new", "", ""},
		"GET /pipelines/{name}/edit": {auth.RoleOperator, "pipeline", "GET", "/pipelines/alpha/edit", "", ""},
		"GET /pipelines/{name}/diff": {auth.RoleViewer, "pipeline", "GET", "/pipelines/alpha/diff", "", ""},
		"GET /runs":                  {auth.RoleViewer, "open", "GET", "/runs", "", ""},
		"GET /runs/{id}":             {auth.RoleViewer, "pipeline", "GET", "/runs/" + run.ID, "", ""},
		"GET /stats":                 {auth.RoleViewer, "open", "GET", "/stats", "", ""},
		"GET /catalogue":             {auth.RoleViewer, "global", "GET", "/catalogue", "", ""},
		"GET /audit":                 {auth.RoleViewer, "open", "GET", "/audit", "", ""},
		"GET /api-docs":              {auth.RoleViewer, "open", "GET", "/api-docs", "", ""},
		"GET /login":                 {"", "public", "GET", "/login", "", ""},
		"GET /static/":               {"", "public", "GET", "/static/app.css", "", ""},
	}
	routes := st.svc.API.Routes()
	seen := map[string]bool{}
	pages := map[string]bool{}
	for _, rt := range routes {
		seen[rt.Pattern] = true
		pages[rt.Pattern] = rt.Page
		row, ok := rows[rt.Pattern]
		if !ok {
			t.Errorf("route %s has no row in the authorization matrix", rt.Pattern)
			continue
		}
		if (row.kind == "public") != (rt.Scope == auth.ScopePublic) || (row.kind != "public" && row.role != rt.Role) {
			t.Errorf("route %s: table says role %q scope %s; the matrix expects %q %s", rt.Pattern, rt.Role, rt.Scope, row.role, row.kind)
		}
	}
	for p := range rows {
		if !seen[p] {
			t.Errorf("matrix row %s: the server serves no such route", p)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	patterns := make([]string, 0, len(rows))
	for p := range rows {
		patterns = append(patterns, p)
	}
	sort.Strings(patterns)
	denials, cells := 0, 0
	for _, p := range patterns {
		row := rows[p]
		publicStatus := -1
		for _, c := range cols {
			code, hdr, body := call(row.method, row.path, row.ctype, row.body, c.token)
			cells++
			for _, s := range secrets {
				if strings.Contains(body, s) {
					t.Errorf("%s as %s: the answer holds a token", p, c.name)
				}
			}
			if row.kind == "public" {
				if publicStatus == -1 {
					publicStatus = code
				}
				if code != publicStatus || strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") || code == http.StatusForbidden {
					t.Errorf("%s as %s: %d (%s), want %d whatever the credentials", p, c.name, code, hdr.Get("WWW-Authenticate"), publicStatus)
				}
				continue
			}
			want := "allowed"
			switch {
			case c.grant == "":
				want = "401"
			case !c.role.Allows(row.role):
				want = "403"
			case c.grant == "allowed" && row.kind == "global":
				want = "403"
			case c.grant == "other" && row.kind != "open":
				want = "403"
			}
			got := "allowed"
			switch {
			case pages[p] && c.token == "" && code == http.StatusSeeOther:
				if loc := hdr.Get("Location"); !strings.HasPrefix(loc, "/login?next=") {
					t.Errorf("%s as %s: 303 to %q, want the login page", p, c.name, loc)
				}
				got = "401"
			case code == http.StatusUnauthorized:
				got = "401"
				if !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") {
					t.Errorf("%s as %s: 401 without WWW-Authenticate: Bearer", p, c.name)
				}
			case code == http.StatusForbidden:
				got = "403"
			case code >= 500:
				got = fmt.Sprintf("server error %d: %.200s", code, body)
			}
			if got == "401" || got == "403" {
				denials++
				var eb struct{ Error string }
				if pages[p] {
					if code != http.StatusSeeOther && !strings.HasPrefix(body, fmt.Sprint(code)) {
						t.Errorf("%s as %s: %s without its reason: %.200s", p, c.name, got, body)
					}
				} else if json.Unmarshal([]byte(body), &eb) != nil || eb.Error == "" {
					t.Errorf("%s as %s: %s without a JSON error: %.200s", p, c.name, got, body)
				}
			}
			if got != want {
				t.Errorf("%s as %s: %s (%d %.200s), want %s", p, c.name, got, code, body, want)
			}
		}
	}
	t.Logf("%d routes × %d identities: %d requests, %d refused", len(rows), len(cols), cells, denials)

	// Listings show what the grant covers.
	var ps []*apiv1.Pipeline
	if err := newClient(st.URL, cols[2].token).do(ctx, http.MethodGet, "/api/v1/pipelines", "", nil, &ps); err != nil || len(ps) != 1 || ps[0].Name != "beta" {
		t.Errorf("beta* viewer lists %d pipelines (%v), want beta only", len(ps), err)
	}
	var runs []*apiv1.Run
	if err := newClient(st.URL, cols[2].token).do(ctx, http.MethodGet, "/api/v1/runs?pipeline=alpha", "", nil, &runs); err != nil || len(runs) != 0 {
		t.Errorf("beta* viewer lists %d runs of alpha (%v)", len(runs), err)
	}
	// The actor of an action is the token that made it, never a header.
	opAll := cols[3]
	req, _ := http.NewRequest(http.MethodPost, st.URL+"/api/v1/pipelines/alpha/runs", strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer "+opAll.token)
	req.Header.Set("X-Ansflow-Actor", "mallory")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var mine apiv1.Run
	_ = json.NewDecoder(resp.Body).Decode(&mine)
	resp.Body.Close()
	if want := "token:" + auth.TokenID(opAll.token) + " (operator-all)"; mine.Trigger.Actor != want {
		t.Errorf("run trigger actor %q, want %q", mine.Trigger.Actor, want)
	}

	// Every refusal is in the audit trail, with its source IP and no token.
	var actions []event.Action
	waitFor(t, 20*time.Second, "the audit trail to hold every refusal", func() (bool, string) {
		actions = actions[:0]
		cursor := ""
		for {
			q := url.Values{"type": {event.TypeAPIAction}, "limit": {"1000"}, "cursor": {cursor}}
			var page store.Page
			if err := admin.do(ctx, http.MethodGet, "/api/v1/audit?"+q.Encode(), "", nil, &page); err != nil {
				return false, err.Error()
			}
			for _, r := range page.Records {
				for _, s := range secrets {
					if strings.Contains(string(r.Data), s) {
						t.Fatalf("audit record %d holds a token: %s", r.Seq, r.Data)
					}
				}
				var a event.Action
				if err := json.Unmarshal(r.Data, &a); err == nil {
					actions = append(actions, a)
				}
			}
			if cursor = page.NextCursor; cursor == "" {
				break
			}
		}
		n := 0
		for _, a := range actions {
			if strings.HasPrefix(a.Outcome, "denied: ") {
				n++
			}
		}
		return n >= denials, fmt.Sprintf("%d denied records of %d refusals", n, denials)
	})
	var anon, withIP int
	for _, a := range actions {
		if strings.HasPrefix(a.Outcome, "denied: ") {
			if a.Actor == "anonymous" {
				anon++
			}
			if a.SourceIP != "" {
				withIP++
			}
		}
		if a.Actor == "mallory" {
			t.Errorf("an action's actor came from the X-Ansflow-Actor header: %+v", a)
		}
	}
	if anon == 0 || withIP < denials {
		t.Errorf("denied records: %d anonymous, %d with a source IP, of %d", anon, withIP, denials)
	}
}

// waitRun waits until the run ended.
func waitRun(t *testing.T, c *client, id string) {
	t.Helper()
	waitFor(t, 30*time.Second, "run "+id+" to end", func() (bool, string) {
		r, err := c.getRun(context.Background(), id)
		if err != nil {
			return false, err.Error()
		}
		return r.Terminal(), r.Status
	})
}
