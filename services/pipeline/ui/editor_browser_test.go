package ui_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/services/pipeline/pipelinetest"
)

// jsErrors collects the page's console.error calls and uncaught
// exceptions from now on; the returned func lists them so far.
func jsErrors(t *testing.T, ctx context.Context) func() []string {
	t.Helper()
	var mu sync.Mutex
	var errs []string
	calls := chromedp.Events(ctx, runtime.ConsoleAPICalled)
	exceptions := chromedp.Events(ctx, runtime.ExceptionThrown)
	go func() {
		for ev, err := range calls {
			if err != nil {
				return
			}
			if ev.Type != runtime.ConsoleAPICalledTypeError {
				continue
			}
			var parts []string
			for _, a := range ev.Args {
				parts = append(parts, strings.Trim(string(a.Value), `"`)+a.Description)
			}
			mu.Lock()
			errs = append(errs, "console.error: "+strings.Join(parts, " "))
			mu.Unlock()
		}
	}()
	go func() {
		for ev, err := range exceptions {
			if err != nil {
				return
			}
			d := ev.ExceptionDetails
			text := d.Text
			if d.Exception != nil {
				text += " " + d.Exception.Description
			}
			mu.Lock()
			errs = append(errs, fmt.Sprintf("exception at %s:%d: %s", d.URL, d.LineNumber+1, text))
			mu.Unlock()
		}
	}()
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), errs...)
	}
}

// js quotes s as a JavaScript string literal.
func js(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// typeInto focuses the element sel, selects its text and types v over it
// with key events, as a person would.
func typeInto(t *testing.T, ctx context.Context, sel, v string) {
	t.Helper()
	if !eval[bool](t, ctx, `(() => { const e = document.querySelector(`+js(sel)+`); if (!e) return false; e.focus(); e.select && e.select(); return true })()`) {
		html, _ := chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("#form")))
		t.Fatalf("no element %s in the form:\n%.4000s", sel, html)
	}
	do(t, ctx, chromedp.KeyEvent(v))
}

// choose picks value in the select sel and fires its change event, as a
// keyboard choice does.
func choose(t *testing.T, ctx context.Context, sel, value string) {
	t.Helper()
	if !eval[bool](t, ctx, `(() => { const e = document.querySelector(`+js(sel)+`); if (!e) return false; e.focus(); e.value = `+js(value)+`;
		e.dispatchEvent(new Event("change", {bubbles: true})); return e.value === `+js(value)+` })()`) {
		t.Fatalf("cannot choose %q in %s", value, sel)
	}
}

// TestBrowserEditor builds a pipeline in the editor of a real Chromium: a
// docker_build, a docker_run and a k8s_deploy step through the form (the
// registry and cluster from the catalogues, build args and environment as
// key/value rows), with the YAML following; a broken timeout shows its
// error at its line, and the problem jumps there; fixed, the pipeline is
// saved and the browser lands on its page. Then the YAML is edited by hand
// and the form follows, a YAML file is imported, the change saved as
// version 2 and diffed, and the pipeline cloned. Every control is labelled,
// the page fits 390 pixels, and a JavaScript error anywhere fails the test.
func TestBrowserEditor(t *testing.T) {
	env := pipelinetest.Start(t)
	for path, body := range map[string]string{
		"/api/v1/registries": `{"id":"hub","name":"hub","url":"https://registry.example.com"}`,
		"/api/v1/clusters":   `{"id":"prod","name":"prod","context":"prod-ctx"}`,
		"/api/v1/users":      `{"name":"ada","role":"operator","password":"correct horse battery"}`,
	} {
		resp, err := env.Client.Post(env.Srv.URL+path, "application/json", strings.NewReader(body))
		if err != nil || resp.StatusCode/100 != 2 {
			t.Fatalf("POST %s: %v %v", path, resp, err)
		}
		resp.Body.Close()
	}

	ctx := browser(t)
	ctx, cancel := context.WithTimeout(ctx, 120*time.Second)
	defer cancel()
	jsErrs := jsErrors(t, ctx)
	noJSErrors := func(where string) {
		t.Helper()
		if errs := jsErrs(); len(errs) > 0 {
			t.Fatalf("JavaScript errors %s:\n%s", where, strings.Join(errs, "\n"))
		}
	}
	base := env.Srv.URL
	do(t, ctx, chromedp.Navigate(base+"/login"), chromedp.WaitVisible(chromedp.CSS("#login")))
	// (browser has checked that the listener sees console errors)

	do(t, ctx,
		chromedp.SendKeys(chromedp.CSS(`input[name="username"]`), "ada"),
		chromedp.SendKeys(chromedp.CSS(`input[name="password"]`), "correct horse battery"),
		chromedp.Click(chromedp.CSS(`#login button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#new-pipeline`)),
		chromedp.Click(chromedp.CSS(`#new-pipeline`)))
	waitJS(t, ctx, 15*time.Second, `document.querySelector("#editor") && document.querySelector("#editor").dataset.ready === "true"`)
	if loc := eval[string](t, ctx, "location.pathname"); loc != "/pipelines/new" {
		t.Fatalf("the New pipeline link leads to %s", loc)
	}
	// An empty pipeline is invalid, and says so in the form too.
	waitJS(t, ctx, 10*time.Second, `document.querySelector("#editor").dataset.valid === "false" &&
		document.querySelector("#steps > .field-error").textContent.includes("at least one step")`)

	// Build the pipeline through the form.
	const step = `fieldset.step-form[data-step="%d"] > `
	field := func(i int, key string) string { return fmt.Sprintf(step+`.field[data-field="%s"] > input`, i, key) }
	config := func(i int, cfg, path string) string {
		return fmt.Sprintf(step+`fieldset.object[data-field="%s"] > `, i, cfg) + path
	}
	typeInto(t, ctx, `#form > .field[data-field="name"] > input`, "shop")

	choose(t, ctx, "#add-type", "docker_build")
	do(t, ctx, chromedp.Click(chromedp.CSS("#add-step")))
	waitJS(t, ctx, 5*time.Second, `!!document.querySelector('fieldset.step-form[data-step="0"]')`)
	typeInto(t, ctx, field(0, "docker_image"), "shop/web")
	typeInto(t, ctx, field(0, "docker_tag"), "1.0")
	if n := eval[int](t, ctx, `document.querySelectorAll('#ed-registries option[value="hub"]').length`); n != 1 {
		t.Errorf("the registry field offers %d catalogue entries named hub, want 1", n)
	}
	typeInto(t, ctx, field(0, "docker_registry"), "hub")
	do(t, ctx, chromedp.Click(chromedp.CSS(config(0, "docker_config", `.field[data-field="build_args"] button.add`))))
	typeInto(t, ctx, config(0, "docker_config", `.field[data-field="build_args"] input.k`), "VERSION")
	typeInto(t, ctx, config(0, "docker_config", `.field[data-field="build_args"] input.v`), "1.2")

	choose(t, ctx, "#add-type", "docker_run")
	do(t, ctx, chromedp.Click(chromedp.CSS("#add-step")))
	waitJS(t, ctx, 5*time.Second, `!!document.querySelector('fieldset.step-form[data-step="1"]')`)
	typeInto(t, ctx, field(1, "name"), "test")
	typeInto(t, ctx, field(1, "command"), "echo testing")
	do(t, ctx, chromedp.Click(chromedp.CSS(config(1, "docker_config", `.field[data-field="environment"] button.add`))))
	typeInto(t, ctx, config(1, "docker_config", `.field[data-field="environment"] input.k`), "MODE")
	typeInto(t, ctx, config(1, "docker_config", `.field[data-field="environment"] input.v`), "ci")

	choose(t, ctx, "#add-type", "k8s_deploy")
	do(t, ctx, chromedp.Click(chromedp.CSS("#add-step")))
	waitJS(t, ctx, 5*time.Second, `!!document.querySelector('fieldset.step-form[data-step="2"]')`)
	typeInto(t, ctx, field(2, "k8s_cluster"), "prod")
	typeInto(t, ctx, field(2, "k8s_namespace"), "shop")
	typeInto(t, ctx, field(2, "k8s_resource_name"), "web")
	typeInto(t, ctx, config(2, "k8s_config", `fieldset.object[data-field="deployment_spec"] > .field[data-field="replicas"] > input`), "3")
	choose(t, ctx, config(2, "k8s_config", `.field[data-field="wait"] > select`), "true")

	// The steps' pool and secrets, and the pipeline's settings and a
	// webhook trigger.
	if n := eval[int](t, ctx, `document.querySelectorAll('#ed-pools option[value="default"]').length`); n != 1 {
		t.Errorf("the runs_on field offers %d pools named default (the runners'), want 1", n)
	}
	typeInto(t, ctx, field(0, "runs_on"), "fast")
	if eval[bool](t, ctx, `!!document.querySelector('fieldset.step-form[data-step="0"] > .field[data-field="secrets"]')`) {
		t.Error("a docker_build step offers secrets, which only docker_run and k8s_exec steps receive")
	}
	secrets := fmt.Sprintf(step+`.field[data-field="secrets"] > .rows`, 1)
	do(t, ctx, chromedp.Click(chromedp.CSS(secrets+` > button.add`)))
	if !eval[bool](t, ctx, `document.activeElement === document.querySelector(`+js(secrets+` .field[data-field="name"] > input`)+`)`) {
		t.Error("adding a secret does not focus its name")
	}
	typeInto(t, ctx, secrets+` .field[data-field="name"] > input`, "TOKEN")
	typeInto(t, ctx, secrets+` .field[data-field="env"] > input`, "API_TOKEN")
	top := func(key, ctl string) string { return `#form > .field[data-field="` + key + `"] > ` + ctl }
	typeInto(t, ctx, top("timeout", "input"), "30m")
	typeInto(t, ctx, top("concurrency", "input"), "2")
	choose(t, ctx, top("cancel_previous", "select"), "true")
	triggers := top("triggers", ".rows")
	do(t, ctx, chromedp.Click(chromedp.CSS(triggers+` > button.add`)))
	trigger := triggers + ` > .row:nth-of-type(1) > fieldset.object > `
	choose(t, ctx, trigger+`.field[data-field="type"] > select`, "webhook")
	choose(t, ctx, trigger+`.field[data-field="provider"] > select`, "github")
	typeInto(t, ctx, trigger+`.field[data-field="secret"] > input`, "hook")
	do(t, ctx, chromedp.Click(chromedp.CSS(trigger+`.field[data-field="events"] > .rows > button.add`)))
	choose(t, ctx, trigger+`.field[data-field="events"] > .rows > .row > select`, "push")
	do(t, ctx, chromedp.Click(chromedp.CSS(trigger+`.field[data-field="branches"] > .rows > button.add`)))
	typeInto(t, ctx, trigger+`.field[data-field="branches"] > .rows > .row > input`, "main")
	do(t, ctx, chromedp.Click(chromedp.CSS(triggers+` > button.add`)))
	cron := triggers + ` > .row:nth-of-type(2) > fieldset.object > `
	choose(t, ctx, cron+`.field[data-field="type"] > select`, "cron")
	typeInto(t, ctx, cron+`.field[data-field="schedule"] > input`, "0 3 * * *")
	typeInto(t, ctx, cron+`.field[data-field="branch"] > input`, "main")

	// The YAML follows the form, in the definitions' key order.
	wantYAML := `pipeline:
  name: shop
  timeout: 30m
  concurrency: 2
  cancel_previous: true
  triggers:
    - type: webhook
      provider: github
      secret: hook
      events:
        - push
      branches:
        - main
    - type: cron
      schedule: 0 3 * * *
      branch: main
  steps:
    - name: build
      type: docker_build
      runs_on: fast
      docker_image: shop/web
      docker_tag: "1.0"
      docker_registry: hub
      docker_config:
        build_args:
          VERSION: "1.2"
    - name: test
      type: docker_run
      docker_config:
        environment:
          MODE: ci
      command: echo testing
      secrets:
        - name: TOKEN
          env: API_TOKEN
    - name: deploy
      type: k8s_deploy
      k8s_cluster: prod
      k8s_namespace: shop
      k8s_resource_name: web
      k8s_config:
        deployment_spec:
          replicas: 3
        wait: true
`
	for deadline := time.Now().Add(10 * time.Second); ; {
		got := eval[string](t, ctx, `document.querySelector("#yaml").value`)
		if got == wantYAML {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the form wrote\n%s\nwant\n%s", got, wantYAML)
		}
		time.Sleep(50 * time.Millisecond) // poll, as waitJS does
	}
	waitJS(t, ctx, 10*time.Second, `document.querySelector("#editor").dataset.valid === "true" && document.querySelector("#problems").children.length === 0`)
	noJSErrors("while building the pipeline")

	// A broken timeout is an error at its line: marked in the gutter,
	// listed, and the problem jumps to the line.
	typeInto(t, ctx, field(1, "timeout"), "soon")
	line := strings.Count(wantYAML[:strings.Index(wantYAML, "      command: echo testing")], "\n") + 2
	waitJS(t, ctx, 10*time.Second, `document.querySelector("#editor").dataset.valid === "false"`)
	waitJS(t, ctx, 10*time.Second, fmt.Sprintf(`(() => { const b = document.querySelector('#problems button[data-line="%d"]');
		return !!b && b.textContent.includes("pipeline.steps[1].timeout") })()`, line))
	if got := eval[string](t, ctx, fmt.Sprintf(`document.querySelector("#yaml").value.split("\n")[%d]`, line-1)); got != "      timeout: soon" {
		t.Errorf("line %d of the YAML is %q, want the broken timeout", line, got)
	}
	if !eval[bool](t, ctx, fmt.Sprintf(`document.querySelector('#gutter span[data-line="%d"]').classList.contains("err")`, line)) {
		t.Errorf("the gutter does not mark line %d", line)
	}
	do(t, ctx, chromedp.Click(chromedp.CSS(fmt.Sprintf(`#problems button[data-line="%d"]`, line))))
	if sel := eval[string](t, ctx, `(() => { const ta = document.querySelector("#yaml"); return document.activeElement === ta ? ta.value.slice(ta.selectionStart, ta.selectionEnd) : "not focused" })()`); sel != "      timeout: soon" {
		t.Errorf("the problem jumps to %q, want the timeout line", sel)
	}
	// The form shows it at the field too.
	if !eval[bool](t, ctx, `(() => { const i = document.querySelector(`+js(field(1, "timeout"))+`);
		const m = i.closest(".field").querySelector(".field-error");
		return i.getAttribute("aria-invalid") === "true" && !!m && m.textContent.includes('duration "soon"') &&
			i.getAttribute("aria-describedby").split(" ").includes(m.id) })()`) {
		t.Error("the broken timeout is not marked at its field in the form")
	}
	typeInto(t, ctx, field(1, "timeout"), "90s")
	waitJS(t, ctx, 10*time.Second, `document.querySelector("#editor").dataset.valid === "true" && !document.querySelector("#gutter .err") &&
		!document.querySelector("#form .field-error") && !document.querySelector('#form [aria-invalid="true"]')`)

	// Every control is labelled, and the page fits a phone.
	unlabelled := eval[[]string](t, ctx, `[...document.querySelectorAll("#editor input, #editor select, #editor textarea, #editor button")]
		.filter(e => !(e.labels && e.labels.length) && !e.getAttribute("aria-label") && !e.getAttribute("aria-labelledby") && !(e.tagName === "BUTTON" && e.textContent.trim()))
		.map(e => e.outerHTML.slice(0, 120))`)
	if len(unlabelled) > 0 {
		t.Errorf("unlabelled controls:\n%s", strings.Join(unlabelled, "\n"))
	}
	if n := eval[int](t, ctx, `[...document.querySelectorAll("#form [aria-describedby]")].filter(e => !document.getElementById(e.getAttribute("aria-describedby"))).length`); n > 0 {
		t.Errorf("%d controls are described by a missing element", n)
	}
	// Screenshots for a person to look at the editor at both widths, with
	// the other pages' (screenshotDir).
	shot := func(name string) {
		_ = eval[bool](t, ctx, `window.scrollTo(0, 0), true`)
		b, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err == nil {
			err = os.WriteFile(filepath.Join(screenshotDir(t), name+".png"), b, 0o644)
		}
		if err != nil {
			t.Errorf("screenshot %s: %v", name, err)
		}
	}
	do(t, ctx, chromedp.EmulateViewport(1280, 900))
	shot("editor-1280")
	// fits checks that the page needs no sideways scrolling at 390 px.
	fits := func(page string) {
		t.Helper()
		do(t, ctx, chromedp.EmulateViewport(390, 844))
		waitJS(t, ctx, 5*time.Second, `window.innerWidth === 390`)
		if w := eval[int](t, ctx, `document.documentElement.scrollWidth`); w > 390 {
			t.Errorf("at 390 px the %s page is %d px wide", page, w)
		}
		shot(page + "-390")
		do(t, ctx, chromedp.EmulateViewport(1280, 900))
	}
	fits("editor")

	// Save, and land on the pipeline's page.
	do(t, ctx, chromedp.Click(chromedp.CSS("#save")))
	waitJS(t, ctx, 10*time.Second, `location.pathname === "/pipelines/shop"`)
	noJSErrors("up to the first save")
	rec := pipelineRecord(t, env, "shop")
	if rec.Version != 1 || len(rec.Spec.Steps) != 3 || rec.Spec.Steps[0].DockerRegistry != "hub" || rec.Spec.Steps[2].K8sCluster != "prod" ||
		time.Duration(rec.Spec.Steps[1].Timeout) != 90*time.Second {
		t.Fatalf("stored pipeline: version %d, spec %+v", rec.Version, rec.Spec)
	}
	if p := rec.Spec; time.Duration(p.Timeout) != 30*time.Minute || p.Concurrency != 2 || !p.CancelPrevious || len(p.Triggers) != 2 ||
		p.Triggers[0].Type != "webhook" || p.Triggers[0].Provider != "github" || p.Triggers[0].Secret != "hook" ||
		fmt.Sprint(p.Triggers[0].Events, p.Triggers[0].Branches) != "[push] [main]" ||
		p.Triggers[1].Type != "cron" || p.Triggers[1].Schedule != "0 3 * * *" || p.Triggers[1].Branch != "main" ||
		p.Steps[0].RunsOn != "fast" || len(p.Steps[1].Secrets) != 1 || p.Steps[1].Secrets[0].Name != "TOKEN" || p.Steps[1].Secrets[0].Env != "API_TOKEN" {
		t.Fatalf("the stored pipeline lacks the form's settings: %+v", p)
	}

	// Edit the YAML by hand: the form follows.
	do(t, ctx, chromedp.Click(chromedp.CSS("#edit")))
	waitJS(t, ctx, 15*time.Second, `document.querySelector("#editor") && document.querySelector("#editor").dataset.ready === "true"`)
	replicas := config(2, "k8s_config", `fieldset.object[data-field="deployment_spec"] > .field[data-field="replicas"] > input`)
	waitJS(t, ctx, 5*time.Second, `document.querySelector(`+js(replicas)+`).value === "3"`)
	_ = eval[bool](t, ctx, `(() => { const ta = document.querySelector("#yaml"); const i = ta.value.indexOf("replicas: 3") + "replicas: ".length;
		ta.focus(); ta.setSelectionRange(i, i + 1); return true })()`)
	do(t, ctx, chromedp.KeyEvent("5"))
	waitJS(t, ctx, 10*time.Second, `document.querySelector(`+js(replicas)+`).value === "5"`)
	_ = eval[bool](t, ctx, `(() => { const ta = document.querySelector("#yaml"); const i = ta.value.indexOf("name: test") + "name: ".length;
		ta.focus(); ta.setSelectionRange(i, i + 4); return true })()`)
	do(t, ctx, chromedp.KeyEvent("unit"))
	waitJS(t, ctx, 10*time.Second, `document.querySelector(`+js(field(1, "name"))+`).value === "unit" &&
		document.querySelector('fieldset.step-form[data-step="1"] > legend').textContent.includes("unit")`)
	// The pipeline's settings follow a YAML edit too.
	for from, to := range map[string]string{"concurrency: 2": "concurrency: 4", "        - main": "        - release/*", "env: API_TOKEN": "env: SHOP_TOKEN"} {
		_ = eval[bool](t, ctx, `(() => { const ta = document.querySelector("#yaml"); const i = ta.value.indexOf(`+js(from)+`);
			ta.focus(); ta.setSelectionRange(i, i + `+fmt.Sprint(len(from))+`); return true })()`)
		do(t, ctx, chromedp.KeyEvent(to))
	}
	waitJS(t, ctx, 10*time.Second, `document.querySelector(`+js(top("concurrency", "input"))+`).value === "4" &&
		document.querySelector(`+js(trigger+`.field[data-field="branches"] > .rows > .row > input`)+`).value === "release/*" &&
		document.querySelector(`+js(secrets+` .field[data-field="env"] > input`)+`).value === "SHOP_TOKEN" &&
		document.querySelector(`+js(top("timeout", "input"))+`).value === "30m0s" &&
		document.querySelector(`+js(cron+`.field[data-field="schedule"] > input`)+`).value === "0 3 * * *" &&
		document.querySelector(`+js(field(0, "runs_on"))+`).value === "fast"`)
	if !eval[bool](t, ctx, `document.querySelector('#form > .field[data-field="name"] > input').readOnly`) {
		t.Error("a saved pipeline's name is editable in the form")
	}
	fits("edit")
	// Broken YAML locks the form until it is fixed.
	do(t, ctx, chromedp.KeyEvent(": ["))
	waitJS(t, ctx, 10*time.Second, `document.querySelector("#form").disabled && document.querySelectorAll("#problems li").length > 0 && !document.querySelector("#form-note").hidden`)
	do(t, ctx, chromedp.KeyEvent("\b\b\b"))
	waitJS(t, ctx, 10*time.Second, `!document.querySelector("#form").disabled && document.querySelector("#editor").dataset.valid === "true"`)

	// Import a file: the YAML is replaced and the form follows.
	dir := t.TempDir()
	imported := strings.Replace(strings.Replace(eval[string](t, ctx, `document.querySelector("#yaml").value`), "replicas: 5", "replicas: 7", 1), "echo testing", "echo imported", 1)
	if err := os.WriteFile(filepath.Join(dir, "shop.yaml"), []byte(imported), 0o644); err != nil {
		t.Fatal(err)
	}
	do(t, ctx, chromedp.SetUploadFiles(chromedp.CSS("#import-file"), []string{filepath.Join(dir, "shop.yaml")}))
	waitJS(t, ctx, 10*time.Second, `document.querySelector(`+js(replicas)+`).value === "7" && document.querySelector(`+js(field(1, "command"))+`).value === "echo imported"`)
	do(t, ctx, chromedp.Click(chromedp.CSS("#save")))
	waitJS(t, ctx, 10*time.Second, `location.pathname === "/pipelines/shop" && document.querySelector("h1").textContent.includes("version 2")`)
	if rec := pipelineRecord(t, env, "shop"); rec.Version != 2 || rec.Spec.Steps[1].Name != "unit" || rec.Spec.Concurrency != 4 ||
		len(rec.Spec.Triggers) != 2 || fmt.Sprint(rec.Spec.Triggers[0].Branches) != "[release/*]" || rec.Spec.Steps[1].Secrets[0].Env != "SHOP_TOKEN" {
		t.Fatalf("after the second save: version %d, step 2 %q, spec %+v", rec.Version, rec.Spec.Steps[1].Name, rec.Spec)
	}

	// The versions: a diff of v1 and v2.
	do(t, ctx, chromedp.Click(chromedp.CSS("#versions-link")))
	waitJS(t, ctx, 10*time.Second, `!!document.querySelector("#diff")`)
	shot("diff-1280")
	fits("diff")
	for what, expr := range map[string]string{
		"the old name is removed": `[...document.querySelectorAll("#diff tr.d-del code")].some(c => c.textContent === "    - name: test")`,
		"the new name is added":   `[...document.querySelectorAll("#diff tr.d-add code")].some(c => c.textContent === "    - name: unit")`,
		"the replicas changed":    `[...document.querySelectorAll("#diff tr.d-add code")].some(c => c.textContent.trim() === "replicas: 7")`,
		"the kept lines are kept": `[...document.querySelectorAll("#diff tr.d-same code")].some(c => c.textContent === "  name: shop")`,
	} {
		if !eval[bool](t, ctx, expr) {
			t.Errorf("diff v1→v2: %s: %s is false", what, expr)
		}
	}

	// Clone from the editor: the browser goes to the copy.
	// Typing waits for the editor's start: it draws the form and may
	// move the focus, which would take the keys from the clone's name.
	do(t, ctx, chromedp.Navigate(base+"/pipelines/shop/edit"),
		chromedp.WaitVisible(chromedp.CSS(`#editor[data-ready="true"]`)),
		chromedp.WaitVisible(chromedp.CSS("#clone")),
		chromedp.SendKeys(chromedp.CSS(`#clone input[name="name"]`), "shop-copy"),
		chromedp.Click(chromedp.CSS(`#clone button[type="submit"]`)))
	waitJS(t, ctx, 10*time.Second, `location.pathname === "/pipelines/shop-copy" || document.querySelector("#clone-error").textContent !== ""`,
		`"clone name: " + document.querySelector('#clone input[name="name"]').value`)
	if msg := eval[string](t, ctx, `location.pathname === "/pipelines/shop-copy" ? "" : document.querySelector("#clone-error").textContent`); msg != "" {
		t.Fatalf("clone: %s", msg)
	}
	if rec := pipelineRecord(t, env, "shop-copy"); len(rec.Spec.Steps) != 3 {
		t.Errorf("the clone has %d steps, want 3", len(rec.Spec.Steps))
	}
	noJSErrors("in the editor flow")
}

// pipelineRecord reads a pipeline's latest version through the API.
func pipelineRecord(t *testing.T, env *pipelinetest.Env, name string) *apiv1.Pipeline {
	t.Helper()
	resp, err := env.Client.Get(env.Srv.URL + "/api/v1/pipelines/" + name)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var rec apiv1.Pipeline
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&rec) != nil || rec.Spec == nil {
		t.Fatalf("GET pipeline %s: %d", name, resp.StatusCode)
	}
	return &rec
}

// waitFor polls cond until it holds.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s never happened", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// trickyYAML holds every part of the spec the emitter must write back:
// strings YAML would read as something else, line breaks, a command list,
// triggers, conditions, retries, secrets, nested settings and YAML text.
const trickyYAML = `pipeline:
  name: tricky
  description: "Round trip: every kind of value"
  variables:
    YES: "yes"
    NUM: "1.0"
    COLON: "a: b"
    HASH: "#not a comment"
    SPACE: " leading"
    TRAIL: "trailing "
    MULTI: "one\ntwo\n"
    EMPTY: ""
    UNI: "é ünï ✓"
    TILDE: "~"
    HEX: "0x10"
    DATE: "2026-01-02"
    BANG: "!x"
    QUOTES: "it's \"q\""
    DASH: "- item"
    BRACE: "{a}"
  timeout: 1h
  concurrency: 2
  cancel_previous: true
  triggers:
    - type: cron
      schedule: "0 3 * * *"
      branch: main
  steps:
    - name: build
      type: docker_build
      docker_image: shop/web
      docker_tag: "2.10"
      docker_registry: 7
      docker_config:
        build_args: {A: "x y", B: "true"}
        cache_from: [shop/web:cache]
        no_cache: true
    - name: test
      type: docker_run
      order: 2
      command: ["sh", "-c", "echo 'hi' # not a comment"]
      conditions:
        - type: branch_matches
          value: "release/*"
        - type: variable_equals
          name: YES
          value: "yes"
      when: always
      timeout: 90s
      retry_policy: {max_retries: 2, retry_delay_seconds: 1.5, backoff: exponential}
      continue_on_failure: true
      secrets: [{name: TOKEN, env: API_TOKEN}]
      docker_config:
        environment: {MODE: "on", NONE: ""}
        volumes: ["./data:/data:ro"]
    - name: deploy
      type: k8s_deploy
      needs: [build]
      k8s_cluster: prod
      k8s_namespace: shop
      k8s_resource_name: web
      k8s_config:
        manifest: |
          apiVersion: v1
          kind: ConfigMap
          metadata: {name: web}
        wait: true
        timeout: 5m
`

// validated parses text with the API's validate route and returns the
// pipeline's JSON.
func validated(t *testing.T, env *pipelinetest.Env, text string) map[string]any {
	t.Helper()
	resp, err := env.Client.Post(env.Srv.URL+"/api/v1/validate", "application/yaml", strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&p); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("validate: %d %v %v\n%s", resp.StatusCode, err, p, text)
	}
	return p
}

// TestBrowserEditorRoundTrip opens a pipeline using every part of the spec
// in the editor, changes one field in the form, and checks that the YAML
// the form writes parses to the same pipeline but for that field.
func TestBrowserEditorRoundTrip(t *testing.T) {
	env := pipelinetest.Start(t)
	apply(t, env, trickyYAML)
	want := validated(t, env, trickyYAML)
	want["description"] = want["description"].(string) + " and more"

	ctx := browser(t)
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	jsErrs := jsErrors(t, ctx)
	do(t, ctx, chromedp.Navigate(env.Srv.URL+"/login"), chromedp.WaitVisible(chromedp.CSS("#login")))
	// A browser sends no bearer token: log in as a user.
	resp, err := env.Client.Post(env.Srv.URL+"/api/v1/users", "application/json",
		strings.NewReader(`{"name":"bo","role":"operator","password":"correct horse battery"}`))
	if err != nil || resp.StatusCode/100 != 2 {
		t.Fatalf("create user: %v %v", resp, err)
	}
	resp.Body.Close()
	do(t, ctx,
		chromedp.SendKeys(chromedp.CSS(`input[name="username"]`), "bo"),
		chromedp.SendKeys(chromedp.CSS(`input[name="password"]`), "correct horse battery"),
		chromedp.Click(chromedp.CSS(`#login button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#pipelines`)),
		chromedp.Navigate(env.Srv.URL+"/pipelines/tricky/edit"))
	waitJS(t, ctx, 15*time.Second, `document.querySelector("#editor") && document.querySelector("#editor").dataset.ready === "true" &&
		document.querySelector("#editor").dataset.valid === "true"`)
	if got := eval[string](t, ctx, `document.querySelector("#yaml").value`); got != trickyYAML {
		t.Errorf("the editor does not start from the stored YAML:\n%s", got)
	}
	// The form shows what the YAML says.
	for what, expr := range map[string]string{
		"the manifest":        `document.querySelector('fieldset.step-form[data-step="2"] [data-field="manifest"] textarea').value.includes("kind: ConfigMap")`,
		"a condition":         `document.querySelector('fieldset.step-form[data-step="1"] [data-field="conditions"] [data-field="value"] input').value === "release/*"`,
		"the retry backoff":   `document.querySelector('fieldset.step-form[data-step="1"] [data-field="retry_policy"] [data-field="backoff"] select').value === "exponential"`,
		"allow failure":       `document.querySelector('fieldset.step-form[data-step="1"] > [data-field="continue_on_failure"] select').value === "true"`,
		"a build arg":         `[...document.querySelectorAll('fieldset.step-form[data-step="0"] [data-field="build_args"] input.v')].map(i => i.value).join() === "x y,true"`,
		"the command list":    `document.querySelector('fieldset.step-form[data-step="1"] > [data-field="command"] input').readOnly`,
		"a pipeline variable": `[...document.querySelectorAll('#form > [data-field="variables"] input.k')].some(i => i.value === "MULTI")`,
	} {
		if !eval[bool](t, ctx, expr) {
			t.Errorf("the form lacks %s: %s", what, expr)
		}
	}
	_ = eval[bool](t, ctx, `(() => { const i = document.querySelector('#form > .field[data-field="description"] > input');
		i.focus(); i.setSelectionRange(i.value.length, i.value.length); return true })()`)
	do(t, ctx, chromedp.KeyEvent(" and more"))
	waitJS(t, ctx, 10*time.Second, `document.querySelector("#yaml").value.includes("every kind of value and more") && document.querySelector("#editor").dataset.valid === "true"`)
	text := eval[string](t, ctx, `document.querySelector("#yaml").value`)
	got := validated(t, env, text)
	gb, _ := json.MarshalIndent(got, "", " ")
	wb, _ := json.MarshalIndent(want, "", " ")
	if string(gb) != string(wb) {
		t.Errorf("the form's YAML parses to another pipeline.\nYAML:\n%s\ngot:\n%s\nwant:\n%s", text, gb, wb)
	}
	if errs := jsErrs(); len(errs) > 0 {
		t.Fatalf("JavaScript errors:\n%s", strings.Join(errs, "\n"))
	}

	// Leaving with the change unsaved asks first (the test's browser
	// accepts every dialog).
	dialogs := chromedp.Events(ctx, page.JavascriptDialogOpening)
	asked := make(chan page.DialogType, 1)
	go func() {
		for ev, err := range dialogs {
			if err != nil {
				return
			}
			asked <- ev.Type
			return
		}
	}()
	go func() { _ = chromedp.Do(ctx, chromedp.Navigate(env.Srv.URL+"/pipelines")) }()
	select {
	case typ := <-asked:
		if typ != page.DialogTypeBeforeunload {
			t.Errorf("leaving the editor opens a %s dialog, want beforeunload", typ)
		}
	case <-time.After(10 * time.Second):
		t.Error("leaving the editor with an unsaved change does not ask")
	}
}
