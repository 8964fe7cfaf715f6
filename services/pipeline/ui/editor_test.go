package ui_test

import (
	"html"
	"net/http"
	"strings"
	"testing"

	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/services/pipeline/pipelinetest"
)

const editorYAML = `pipeline:
  name: web
  # the build
  steps:
    - name: build
      type: docker_run
      docker_image: busybox
      command: "echo one"
`

// TestEditorPages checks the editor's routes against a real service: the
// new-pipeline and edit pages for operators only (an operator of another
// pipeline may open a new one but not edit this one), the stored YAML
// with its comments in the editor, the version list, and the links to the
// editor from the pipeline and pipelines pages.
func TestEditorPages(t *testing.T) {
	env := pipelinetest.Start(t)
	apply(t, env, editorYAML)
	apply(t, env, strings.Replace(editorYAML, "echo one", "echo two", 1))
	viewer := env.Token(t, auth.RoleViewer)
	operator := env.Token(t, auth.RoleOperator, "web")
	otherOp := env.Token(t, auth.RoleOperator, "other*")

	code, hdr, body := get(t, env, "/pipelines/web/edit", operator)
	if code != http.StatusOK || !strings.Contains(hdr.Get("Content-Security-Policy"), "script-src 'self'") {
		t.Fatalf("/pipelines/web/edit as its operator: %d %v", code, hdr)
	}
	wantIn(t, "edit page", body, `id="editor" data-name="web" data-version="2"`, `<script src="/static/editor.js" defer></script>`,
		html.EscapeString("# the build"), html.EscapeString(`command: "echo two"`), `id="yaml"`, `id="gutter"`, `id="problems"`,
		`href="/api/v1/pipelines/web/export"`, `href="/pipelines/web/diff?from=1&amp;to=2"`, `data-version="1"`, `id="clone"`,
		`<label for="yaml">YAML</label>`)
	if strings.Contains(body, "<script>") || strings.Contains(body, " onclick=") {
		t.Error("the edit page has an inline script or handler")
	}
	for _, c := range []struct {
		path, token string
		want        int
	}{
		{"/pipelines/web/edit", viewer, http.StatusForbidden},
		{"/pipelines/web/edit", otherOp, http.StatusForbidden},
		{"/pipelines/web/edit", "", http.StatusSeeOther},
		{"/pipelines/nope/edit", env.AdminToken, http.StatusNotFound},
		{"/pipelines/new", viewer, http.StatusForbidden},
		{"/pipelines/new", otherOp, http.StatusOK},
		{"/pipelines/new", "", http.StatusSeeOther},
	} {
		if code, _, _ := get(t, env, c.path, c.token); code != c.want {
			t.Errorf("%s with %q: %d, want %d", c.path, c.token[:min(len(c.token), 6)], code, c.want)
		}
	}
	_, _, body = get(t, env, "/pipelines/new", operator)
	wantIn(t, "new page", body, `id="editor" data-name=""`, "Create pipeline", `id="import-file"`)
	if strings.Contains(body, `id="clone"`) || strings.Contains(body, `id="export"`) {
		t.Error("the new-pipeline page offers clone or export of nothing")
	}

	_, _, body = get(t, env, "/pipelines/web", operator)
	wantIn(t, "pipeline page for an operator", body, `id="edit" href="/pipelines/web/edit"`, `href="/pipelines/web/diff"`)
	_, _, body = get(t, env, "/pipelines/web", viewer)
	if strings.Contains(body, `id="edit"`) || !strings.Contains(body, `href="/pipelines/web/diff"`) {
		t.Error("a viewer gets the edit link, or no versions link")
	}
	_, _, body = get(t, env, "/pipelines", operator)
	wantIn(t, "pipelines page for an operator", body, `id="new-pipeline" href="/pipelines/new"`)
	_, _, body = get(t, env, "/pipelines", viewer)
	if strings.Contains(body, `id="new-pipeline"`) {
		t.Error("a viewer gets the New pipeline link")
	}
	code, hdr, body = get(t, env, "/static/editor.js", "")
	if code != http.StatusOK || !strings.Contains(hdr.Get("Content-Type"), "javascript") || !strings.Contains(body, "/api/v1/validate") {
		t.Errorf("/static/editor.js: %d %s", code, hdr.Get("Content-Type"))
	}
}

// TestDiffPage checks the version diff: by default the latest version
// against the one before, the changed lines marked with their numbers in
// each version, explicit versions, and the errors of bad ones.
func TestDiffPage(t *testing.T) {
	env := pipelinetest.Start(t)
	apply(t, env, editorYAML)
	apply(t, env, strings.Replace(editorYAML, "echo one", "echo two", 1)+"      timeout: 5m\n")
	viewer := env.Token(t, auth.RoleViewer, "web")

	code, _, body := get(t, env, "/pipelines/web/diff", viewer)
	if code != http.StatusOK {
		t.Fatalf("/pipelines/web/diff: %d %s", code, body)
	}
	wantIn(t, "diff page", body, "v1 → v2", `<span class="d-add">+2</span> added`, `<span class="d-del">−1</span> removed`,
		// line 8 of v1 is removed, lines 8 and 9 of v2 added, line 7 kept
		`<tr class="d-del"><td class="ln">8</td><td class="ln"></td>`,
		`<tr class="d-add"><td class="ln"></td><td class="ln">8</td>`,
		`<tr class="d-add"><td class="ln"></td><td class="ln">9</td>`,
		`<tr class="d-same"><td class="ln">7</td><td class="ln">7</td>`,
		html.EscapeString(`command: "echo one"`), "timeout: 5m", `<option value="1" selected>v1</option>`)
	if strings.Contains(body, `href="/pipelines/web/edit"`) {
		t.Error("a viewer gets the edit link on the diff page")
	}
	_, _, body = get(t, env, "/pipelines/web/diff?from=2&to=2", viewer)
	wantIn(t, "diff of a version with itself", body, "v2 → v2: no changes")
	_, _, body = get(t, env, "/pipelines/web/diff?from=2&to=1", viewer)
	wantIn(t, "reverse diff", body, `<span class="d-add">+1</span> added, <span class="d-del">−2</span> removed`)
	for _, c := range []struct {
		path string
		want int
	}{
		{"/pipelines/web/diff?from=x", http.StatusBadRequest},
		{"/pipelines/web/diff?to=0", http.StatusBadRequest},
		{"/pipelines/web/diff?from=9", http.StatusNotFound},
		{"/pipelines/nope/diff", http.StatusForbidden}, // outside the viewer's grant
	} {
		if code, _, _ := get(t, env, c.path, viewer); code != c.want {
			t.Errorf("%s: %d, want %d", c.path, code, c.want)
		}
	}
	if code, _, _ := get(t, env, "/pipelines/nope/diff", env.AdminToken); code != http.StatusNotFound {
		t.Errorf("/pipelines/nope/diff as admin: %d, want 404", code)
	}
}
