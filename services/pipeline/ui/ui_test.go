package ui_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/services/pipeline/pipelinetest"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

const pipelineYAML = `pipeline:
  name: web
  variables: {TARGET: prod}
  steps:
    - name: build
      type: docker_run
      docker_image: busybox
      command: "echo building; warn careful; output image=web:1"
    - name: test
      type: docker_run
      docker_image: busybox
      command: "echo testing {{ git_branch }}"
      order: 2
    - name: lint
      type: docker_run
      docker_image: busybox
      command: "echo linting"
      order: 2
    - name: ship
      type: docker_run
      docker_image: busybox
      command: "exit 3"
      needs: [test, lint]
`

// apply stores pipelineYAML and returns env.
func apply(t *testing.T, env *pipelinetest.Env, yaml string) {
	t.Helper()
	resp, err := env.Client.Post(env.Srv.URL+"/api/v1/pipelines", "application/yaml", strings.NewReader(yaml))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("apply: %d %s", resp.StatusCode, b)
	}
}

// runToEnd triggers pipeline and waits until its run is over.
func runToEnd(t *testing.T, env *pipelinetest.Env, pipeline string) *store.Run {
	t.Helper()
	resp, err := env.Client.Post(env.Srv.URL+"/api/v1/pipelines/"+pipeline+"/runs", "application/json", bytes.NewReader([]byte(`{"branch":"main"}`)))
	if err != nil {
		t.Fatal(err)
	}
	var run store.Run
	_ = json.NewDecoder(resp.Body).Decode(&run)
	resp.Body.Close()
	if run.ID == "" {
		t.Fatalf("trigger: %d", resp.StatusCode)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		r, err := env.Svc.Store.GetRun(context.Background(), run.ID)
		if err == nil && r.Terminal() {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("run %s did not end", run.ID)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// get fetches path with token ("" for none), not following redirects.
func get(t *testing.T, env *pipelinetest.Env, path, token string) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, env.Srv.URL+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func wantIn(t *testing.T, what, body string, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if !strings.Contains(body, s) {
			t.Errorf("%s lacks %q", what, s)
		}
	}
}

// TestPages renders every page of the UI from a real service's state and
// checks what each shows, who may see it, and that a browser without a
// session is sent to the login page.
func TestPages(t *testing.T) {
	env := pipelinetest.Start(t)
	apply(t, env, pipelineYAML)
	apply(t, env, strings.ReplaceAll(strings.ReplaceAll(pipelineYAML, "name: web", "name: other"), "exit 3", "echo ok"))
	failed := runToEnd(t, env, "web")
	if failed.Status != "failed" {
		t.Fatalf("run of web: %s, want failed", failed.Status)
	}
	ok := runToEnd(t, env, "other")
	viewer := env.Token(t, auth.RoleViewer, "web")

	code, hdr, _ := get(t, env, "/pipelines", "")
	if code != http.StatusSeeOther || hdr.Get("Location") != "/login?next=%2Fpipelines" {
		t.Errorf("/pipelines without a session: %d %q, want 303 to the login page", code, hdr.Get("Location"))
	}
	code, _, _ = get(t, env, "/pipelines", "not-a-token")
	if code != http.StatusUnauthorized {
		t.Errorf("/pipelines with a bad bearer token: %d, want 401", code)
	}
	code, _, body := get(t, env, "/login?next=//evil.example/", "")
	if code != http.StatusOK || !strings.Contains(body, `data-next="/pipelines"`) {
		t.Errorf("login page with a foreign next: %d, want next=/pipelines", code)
	}

	code, hdr, body = get(t, env, "/pipelines", env.AdminToken)
	if code != http.StatusOK || !strings.HasPrefix(hdr.Get("Content-Type"), "text/html") || !strings.Contains(hdr.Get("Content-Security-Policy"), "script-src 'self'") {
		t.Fatalf("/pipelines: %d %v", code, hdr)
	}
	wantIn(t, "pipelines page", body, `href="/pipelines/web"`, `href="/pipelines/other"`, `class="status s-failed"`, `class="status s-succeeded"`,
		"0% <span", "100% <span", `<svg class="spark"`, "main")
	code, _, body = get(t, env, "/pipelines?q=oth", env.AdminToken)
	if code != http.StatusOK || strings.Contains(body, `href="/pipelines/web"`) || !strings.Contains(body, `href="/pipelines/other"`) {
		t.Errorf("search q=oth: %d, want only other", code)
	}
	_, _, body = get(t, env, "/pipelines", viewer)
	if strings.Contains(body, `href="/pipelines/other"`) || !strings.Contains(body, `href="/pipelines/web"`) {
		t.Error("a viewer of web sees other, or not web")
	}

	code, _, body = get(t, env, "/pipelines/web", env.AdminToken)
	wantIn(t, "pipeline page", body, `id="trigger"`, `value="TARGET"`, "/runs/"+failed.ID, "name: web")
	if code != http.StatusOK {
		t.Errorf("/pipelines/web: %d", code)
	}
	_, _, body = get(t, env, "/pipelines/web", viewer)
	if strings.Contains(body, `id="trigger"`) {
		t.Error("a viewer gets the trigger form")
	}
	if code, _, _ = get(t, env, "/pipelines/other", viewer); code != http.StatusForbidden {
		t.Errorf("viewer of web on /pipelines/other: %d, want 403", code)
	}
	if code, _, _ = get(t, env, "/pipelines/nope", env.AdminToken); code != http.StatusNotFound {
		t.Errorf("/pipelines/nope: %d, want 404", code)
	}

	code, _, body = get(t, env, "/runs/"+failed.ID, env.AdminToken)
	if code != http.StatusOK {
		t.Fatalf("/runs/%s: %d", failed.ID, code)
	}
	// four nodes; edges build→test, build→lint, test→ship, lint→ship and no
	// implied build→ship
	wantIn(t, "run page", body, `id="graph"`, `data-step="build"`, `data-step="ship"`, `data-from="build" data-to="test"`,
		`data-from="build" data-to="lint"`, `data-from="test" data-to="ship"`, `data-from="lint" data-to="ship"`,
		`class="node s-failed" data-step="ship"`, `class="node s-succeeded" data-step="build"`, "exit code 3", `<code>web:1</code>`,
		`<h3>Resolved settings</h3>`, `&#34;step_id&#34;: &#34;ship&#34;`, `&#34;command&#34;: &#34;echo testing main&#34;`,
		`id="rerun">Rerun from the failed step`, `id="rerun-all">Rerun all steps`, `pre class="log" data-step="build"`)
	if strings.Contains(body, `data-from="build" data-to="ship"`) {
		t.Error("the graph draws the implied edge build→ship")
	}
	_, _, body = get(t, env, "/runs/"+failed.ID, viewer)
	if strings.Contains(body, `id="cancel"`) || strings.Contains(body, `id="rerun"`) {
		t.Error("a viewer gets the run page's cancel or rerun buttons")
	}
	if code, _, _ = get(t, env, "/runs/"+ok.ID, viewer); code != http.StatusForbidden {
		t.Errorf("viewer of web on a run of other: %d, want 403", code)
	}

	code, _, body = get(t, env, "/runs?pipeline=web&status=failed", env.AdminToken)
	if code != http.StatusOK || !strings.Contains(body, "/runs/"+failed.ID) || strings.Contains(body, "/runs/"+ok.ID) {
		t.Errorf("/runs filtered to web failed: %d", code)
	}
	wantIn(t, "runs page", body, `id="batch"`, `id="pick-all"`, "1 runs")
	_, _, body = get(t, env, "/runs", viewer)
	if strings.Contains(body, "/runs/"+ok.ID) || strings.Contains(body, `id="batch"`) {
		t.Error("a viewer of web lists a run of other, or gets the batch actions")
	}
	if code, _, _ = get(t, env, "/runs?since=yesterday", env.AdminToken); code != http.StatusBadRequest {
		t.Errorf("/runs?since=yesterday: %d, want 400", code)
	}
	code, _, body = get(t, env, "/stats?window=24h", env.AdminToken)
	if code != http.StatusOK {
		t.Fatalf("/stats: %d", code)
	}
	wantIn(t, "stats page", body, `<tr data-name="web"><td><a href="/pipelines/web">web</a></td><td>1</td><td>1</td><td>100%</td>`,
		`<tr data-name="other"><td><a href="/pipelines/other">other</a></td><td>1</td><td>0</td><td>0%</td>`,
		// web's steps: build, test, lint ok, ship failed; other's four ok
		`<tr data-name="docker_run"><td>docker_run</td><td>8</td><td>1</td><td>12%</td>`,
		`id="activity"`, "1 succeeded, 1 failed", `class="bars"`)
	_, _, body = get(t, env, "/stats", viewer)
	if strings.Contains(body, `data-name="other"`) || !strings.Contains(body, `data-name="web"`) {
		t.Error("a viewer of web sees other's statistics, or not web's")
	}
	if code, _, _ = get(t, env, "/stats?window=forever", env.AdminToken); code != http.StatusBadRequest {
		t.Errorf("/stats?window=forever: %d, want 400", code)
	}
	for _, run := range []*store.Run{failed, ok} {
		r, err := env.Svc.Store.GetRun(context.Background(), run.ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, st := range r.Steps {
			if st.StartedAt != nil && st.QueueSeconds <= 0 {
				t.Errorf("run %s step %s started without a queue wait", r.ID, st.ID)
			}
		}
	}

	reg, _ := json.Marshal(apiv1.Registry{ID: "r1", Name: "prod", URL: "https://prod.example.com", Username: "ci", PasswordSecret: "PROD_PASSWORD"})
	if resp, err := env.Client.Post(env.Srv.URL+"/api/v1/registries", "application/json", bytes.NewReader(reg)); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("add registry: %v %v", resp, err)
	}
	code, _, body = get(t, env, "/catalogue", env.AdminToken)
	if code != http.StatusOK {
		t.Fatalf("/catalogue: %d", code)
	}
	wantIn(t, "catalogue page", body, "https://prod.example.com", "ci with secret <code>PROD_PASSWORD</code>", `id="runners"`,
		`<span class="status s-succeeded">online</span>`, "<td>docker</td><td>default</td><td>1</td>")
	if code, _, _ = get(t, env, "/catalogue", viewer); code != http.StatusForbidden {
		t.Errorf("/catalogue as a viewer of web only: %d, want 403 (runners and catalogues serve every pipeline)", code)
	}
	code, _, body = get(t, env, "/audit", viewer)
	if code != http.StatusOK || !strings.Contains(body, `<option selected>web</option>`) || strings.Contains(body, `id="verify"`) {
		t.Errorf("/audit as a viewer of web: %d; want the pipeline filter set to web and no verify button", code)
	}
	if _, _, body = get(t, env, "/audit", env.AdminToken); !strings.Contains(body, `id="verify"`) {
		t.Error("/audit as admin lacks the verify button")
	}

	code, _, body = get(t, env, "/api-docs", viewer)
	if code != http.StatusOK {
		t.Fatalf("/api-docs: %d", code)
	}
	wantIn(t, "API page", body, "<code>/api/v1/runs/{id}/rerun</code>", "Re-run a run from its failed step", `href="/api/v1/openapi.json"`)

	// The stylesheet's blocks are closed (an unclosed @media block once
	// swallowed every rule after it).
	code, _, body = get(t, env, "/static/app.css", "")
	depth := 0
	for i, c := range body {
		switch c {
		case '{':
			depth++
		case '}':
			depth--
		}
		if depth < 0 {
			t.Fatalf("app.css closes a block it never opened at byte %d", i)
		}
	}
	if code != http.StatusOK || depth != 0 {
		t.Errorf("/static/app.css: %d, %d blocks left open", code, depth)
	}

	code, hdr, body = get(t, env, "/static/app.js", "")
	if code != http.StatusOK || !strings.Contains(hdr.Get("Content-Type"), "javascript") || !strings.Contains(body, "EventSource") {
		t.Errorf("/static/app.js: %d %s", code, hdr.Get("Content-Type"))
	}
}
