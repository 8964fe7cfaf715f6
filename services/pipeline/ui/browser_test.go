package ui_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/services/pipeline/pipelinetest"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// browser starts a headless Chromium (Debian's chromium package) for the
// test and returns a context that drives it.
func browser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium not found (apt-get install chromium; deploy/ci/setup.sh installs it): %v", err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-dev-shm-usage", true))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelC := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelC(); cancelA() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	// A JavaScript error or console.error fails the test; first, the
	// listener must see one (so a clean run means something).
	probe := jsErrors(t, ctx)
	_ = eval[bool](t, ctx, `console.error("ansflow-probe"), true`)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if seen := probe(); len(seen) == 1 && strings.Contains(seen[0], "ansflow-probe") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the JavaScript error listener did not see console.error: %v", probe())
		}
	}
	errs := jsErrors(t, ctx)
	t.Cleanup(func() {
		for _, e := range errs() {
			t.Errorf("JavaScript error in the page: %s", e)
		}
	})
	// Accept every confirm() the pages ask.
	dialogs := chromedp.Events(ctx, page.JavascriptDialogOpening)
	go func() {
		for _, err := range dialogs {
			if err != nil {
				return
			}
			_, _ = chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true})
		}
	}()
	return ctx
}

// screenshotDir is where the browser tests write their screenshots:
// $ANSFLOW_UI_SCREENSHOTS, else ansflow-ui-screenshots in the temporary
// directory. They are for a person to look at, at both widths the UI is
// made for.
func screenshotDir(t *testing.T) string {
	dir := os.Getenv("ANSFLOW_UI_SCREENSHOTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "ansflow-ui-screenshots")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// screenshots saves the current page at 1280 and 390 pixels wide, and
// checks that at 390 nothing but the log and the graph scrolls sideways.
func screenshots(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	dir := screenshotDir(t)
	for _, width := range []int64{1280, 390} {
		do(t, ctx, chromedp.EmulateViewport(width, 900))
		if width == 390 {
			if wide := eval[bool](t, ctx, `document.documentElement.scrollWidth > window.innerWidth + 1`); wide {
				t.Errorf("%s at 390px: the page is wider than the screen", name)
			}
		}
		img, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		p := filepath.Join(dir, fmt.Sprintf("%s-%d.png", name, width))
		if err := os.WriteFile(p, img, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	do(t, ctx, chromedp.EmulateViewport(1280, 900))
}

// eval evaluates a JavaScript expression in the page.
func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// waitJS polls a JavaScript expression in the page until it is true; on
// the deadline it fails with the page and the values of the show
// expressions (each evaluating to a string).
func waitJS(t *testing.T, ctx context.Context, d time.Duration, expr string, show ...string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr)); err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			var also strings.Builder
			for _, e := range show {
				v, err := chromedp.Run(ctx, chromedp.Evaluate[string](e))
				fmt.Fprintf(&also, "%s: %q %v\n", e, v, err)
			}
			html, _ := chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("main")))
			t.Fatalf("%s never held; %spage:\n%.3000s", expr, also.String(), html)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// do runs actions, failing the test on an error.
func do(t *testing.T, ctx context.Context, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatal(err)
	}
}

// TestBrowser drives the UI in a real Chromium as a user would: log in
// (sent there from the pipelines page), open a pipeline, trigger it with a
// branch, watch the run page change live to succeeded without a reload
// (graph, step status, logs with stdout and stderr told apart and ANSI
// colours), filter the log, and rerun the run from the runs page's batch
// action.
func TestBrowser(t *testing.T) {
	env := pipelinetest.Start(t)
	apply(t, env, `pipeline:
  name: shop
  steps:
    - name: build
      type: docker_run
      docker_image: busybox
      command: "echo \e[32mgreen ok\e[0m; warn careful now; sleep 1500ms; echo build done"
    - name: test
      type: docker_run
      docker_image: busybox
      command: "echo tests pass"
`)
	apply(t, env, `pipeline:
  name: flaky
  steps:
    - name: check
      type: docker_run
      docker_image: busybox
      command: "exit 1"
`)
	broken := runToEnd(t, env, "flaky")
	apply(t, env, `pipeline:
  name: slow
  steps:
    - name: wait
      type: docker_run
      docker_image: busybox
      command: "echo waiting; sleep 60s"
    - name: after
      type: docker_run
      docker_image: busybox
      command: "echo never"
`)
	resp, err := env.Client.Post(env.Srv.URL+"/api/v1/users", "application/json",
		bytes.NewReader([]byte(`{"name":"ada","role":"operator","password":"correct horse battery"}`)))
	if err != nil || resp.StatusCode/100 != 2 {
		t.Fatalf("create user: %v %v", resp, err)
	}
	resp.Body.Close()

	ctx := browser(t)
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	base := env.Srv.URL
	do(t, ctx, chromedp.Navigate(base+"/pipelines"), chromedp.WaitVisible(chromedp.CSS("#login")))
	if loc := eval[string](t, ctx, "location.href"); !strings.HasSuffix(loc, "/login?next=%2Fpipelines") {
		t.Fatalf("without a session the browser is at %s, want the login page", loc)
	}
	screenshots(t, ctx, "login")
	// A wrong password says so and stays.
	do(t, ctx,
		chromedp.SendKeys(chromedp.CSS(`input[name="username"]`), "ada"),
		chromedp.SendKeys(chromedp.CSS(`input[name="password"]`), "wrong password"),
		chromedp.Click(chromedp.CSS(`#login button[type="submit"]`)))
	waitJS(t, ctx, 10*time.Second, `document.querySelector("#login-error").textContent.includes("invalid username or password")`)
	do(t, ctx,
		chromedp.SetValue(chromedp.CSS(`input[name="password"]`), "correct horse battery"),
		chromedp.Click(chromedp.CSS(`#login button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#pipelines a[href="/pipelines/shop"]`)))
	if who := eval[string](t, ctx, `document.querySelector(".who").textContent`); !strings.Contains(who, "ada") {
		t.Errorf("the frame names %q, want the user ada", who)
	}
	screenshots(t, ctx, "pipelines")

	// Trigger with a branch from the pipeline page.
	do(t, ctx,
		chromedp.Click(chromedp.CSS(`#pipelines a[href="/pipelines/shop"]`)),
		chromedp.WaitVisible(chromedp.CSS("#trigger")))
	screenshots(t, ctx, "pipeline")
	do(t, ctx,
		chromedp.SendKeys(chromedp.CSS(`#trigger input[name="branch"]`), "release/1.2"),
		chromedp.Click(chromedp.CSS(`#trigger button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#run")))
	loc := eval[string](t, ctx, "location.href")
	runID := loc[strings.LastIndex(loc, "/")+1:]
	if st := eval[string](t, ctx, `window.__loaded = Math.random(); document.querySelector("#run").dataset.status`); st == "succeeded" {
		t.Fatalf("the run had already succeeded when its page opened; the step should still be sleeping")
	}
	loaded := eval[float64](t, ctx, `window.__loaded`)

	// It changes to succeeded on this same page, without a reload.
	waitJS(t, ctx, 30*time.Second, `document.querySelector("#run-status .status").dataset.status === "succeeded"`)
	waitJS(t, ctx, 10*time.Second, `document.querySelector('#graph g.node[data-step="test"]').getAttribute("class") === "node s-succeeded"`)
	waitJS(t, ctx, 10*time.Second, `document.querySelector('pre.log[data-step="test"]').textContent.includes("tests pass")`)
	if again := eval[float64](t, ctx, `window.__loaded || 0`); again != loaded {
		t.Fatalf("the run page reloaded (%v → %v): it must update live", loaded, again)
	}
	checks := map[string]string{
		"the ANSI green line is coloured":      `!!document.querySelector('pre.log[data-step="build"] .line.stdout .ansi-fg-32')`,
		"the coloured text is the step's":      `document.querySelector('pre.log[data-step="build"] .ansi-fg-32').textContent === "green ok"`,
		"stderr is told apart":                 `document.querySelector('pre.log[data-step="build"] .line.stderr').textContent.includes("careful now")`,
		"lines are numbered with anchors":      `document.querySelector('pre.log[data-step="build"] .line a.ln').getAttribute("href") === "#L-build-1"`,
		"the build step's badge is succeeded":  `document.querySelector('section.step[data-step="build"] .status').dataset.status === "succeeded"`,
		"the cancel button is gone at the end": `document.querySelector("#cancel").hidden`,
		"the run's duration covers the sleep":  `(() => { const t = document.querySelector("#run-duration").textContent; return t.endsWith("s") && !t.endsWith("ms") && parseFloat(t) >= 1.5 })()`,
		"no escape character reaches the page": `!document.querySelector('pre.log[data-step="build"]').textContent.includes("\x1b")`,
	}
	for what, expr := range checks {
		if !eval[bool](t, ctx, expr) {
			t.Errorf("%s: %s is false", what, expr)
		}
	}

	screenshots(t, ctx, "run")
	if !eval[bool](t, ctx, `document.querySelector("#rerun").hidden && !document.querySelector("#rerun-all").hidden`) {
		t.Error("a succeeded run offers a rerun from its failed step, or no rerun of all steps")
	}

	// The search box filters the lines.
	do(t, ctx, chromedp.SendKeys(chromedp.CSS("#log-search"), "careful"))
	waitJS(t, ctx, 5*time.Second, `(() => { const ls = [...document.querySelectorAll('pre.log[data-step="build"] .line')].filter(l => !l.hidden);
		return ls.length === 1 && ls[0].textContent.includes("careful") })()`)

	// Rerun all of it from its page: the browser goes to the new run.
	do(t, ctx, chromedp.Click(chromedp.CSS("#rerun-all")))
	waitJS(t, ctx, 10*time.Second, fmt.Sprintf(`location.pathname.startsWith("/runs/") && !location.pathname.endsWith(%q) && !!document.querySelector("#run")`, runID))
	waitJS(t, ctx, 30*time.Second, `document.querySelector("#run-status .status").dataset.status === "succeeded"`)

	// Cancel a long run from its page: the graph and badges change.
	resp, err = env.Client.Post(base+"/api/v1/pipelines/slow/runs", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	var slow store.Run
	_ = json.NewDecoder(resp.Body).Decode(&slow)
	resp.Body.Close()
	do(t, ctx, chromedp.Navigate(base+"/runs/"+slow.ID), chromedp.WaitVisible(chromedp.CSS("#run")))
	waitJS(t, ctx, 15*time.Second, `document.querySelector('pre.log[data-step="wait"]').textContent.includes("waiting")`)
	if !eval[bool](t, ctx, `document.querySelector('#graph g.node[data-step="wait"]').getAttribute("class") === "node s-running"`) {
		t.Error("the long step's node is not running while its log arrives")
	}
	do(t, ctx, chromedp.Click(chromedp.CSS("#cancel")))
	waitJS(t, ctx, 20*time.Second, `document.querySelector("#run-status .status").dataset.status === "cancelled"`)
	waitJS(t, ctx, 10*time.Second, `document.querySelector('#graph g.node[data-step="wait"]').getAttribute("class") === "node s-cancelled"`)

	// The runs page filters by branch; a batch rerun of the failed run
	// makes a new run.
	do(t, ctx,
		chromedp.Navigate(base+"/runs?branch=release/1.2"),
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`tr[data-run="%s"]`, runID))))
	if n := eval[int](t, ctx, `document.querySelectorAll("#runs tbody tr").length`); n != 2 {
		t.Errorf("runs of branch release/1.2: %d rows, want 2 (the run and its rerun)", n)
	}
	screenshots(t, ctx, "runs")
	do(t, ctx,
		chromedp.Navigate(base+"/runs?status=failed"),
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`tr[data-run="%s"]`, broken.ID))),
		chromedp.Click(chromedp.CSS(fmt.Sprintf(`input.pick[value="%s"]`, broken.ID))),
		chromedp.Click(chromedp.CSS(`#batch button[data-action="rerun"]`)))
	waitJS(t, ctx, 15*time.Second, `document.querySelector("#batch-result").textContent.startsWith("rerun: 1 done")`)
	for _, p := range []struct{ name, path, ready string }{
		{"stats", "/stats", "#stats-pipelines"},
		{"catalogue", "/catalogue", "#runners"},
		{"api", "/api-docs", "#operations"},
		{"audit", "/audit", "#audit"},
	} {
		do(t, ctx, chromedp.Navigate(base+p.path), chromedp.WaitVisible(chromedp.CSS(p.ready)))
		screenshots(t, ctx, p.name)
	}
	// pipelinetest mounts no audit API: the page says so instead of
	// failing.
	waitJS(t, ctx, 5*time.Second, `document.querySelector("#audit-state").textContent.includes("not served by this pipeline service")`)
	t.Logf("screenshots in %s", screenshotDir(t))

	deadline := time.Now().Add(15 * time.Second)
	for {
		req, _ := http.NewRequest(http.MethodGet, base+"/api/v1/runs?pipeline=flaky", nil)
		r, err := env.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var runs []store.Run
		_ = json.NewDecoder(r.Body).Decode(&runs)
		r.Body.Close()
		reruns := 0
		for _, run := range runs {
			if run.RerunOf == broken.ID && run.Trigger.Actor == "user:ada" {
				reruns++
			}
		}
		if reruns == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d reruns of %s by ada among %d runs, want 1", reruns, broken.ID, len(runs))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestBrowserTokenLogin logs in with API tokens on the login page: a bad
// token gets the wrong password's message; a viewer token's session sees
// a live run without the cancel button; after logging out, an operator
// token's session cancels it. The token never appears in an address.
func TestBrowserTokenLogin(t *testing.T) {
	env := pipelinetest.Start(t)
	apply(t, env, `pipeline:
  name: slow
  steps:
    - name: wait
      type: docker_run
      docker_image: busybox
      command: "echo waiting; sleep 60s"
`)
	post := func(path, body string, out any) {
		t.Helper()
		resp, err := env.Client.Post(env.Srv.URL+path, "application/json", strings.NewReader(body))
		if err != nil || resp.StatusCode/100 != 2 {
			t.Fatalf("POST %s: %v %v", path, resp, err)
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatal(err)
		}
	}
	var viewer, operator apiv1.CreatedToken
	post("/api/v1/tokens", `{"name":"watcher","role":"viewer","pipelines":["slow"]}`, &viewer)
	post("/api/v1/tokens", `{"name":"deployer","role":"operator"}`, &operator)
	var run store.Run
	post("/api/v1/pipelines/slow/runs", `{}`, &run)

	ctx := browser(t)
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	jsErrs := jsErrors(t, ctx)
	var addresses []string
	remember := func() { addresses = append(addresses, eval[string](t, ctx, "location.href")) }
	base := env.Srv.URL
	do(t, ctx, chromedp.Navigate(base+"/runs/"+run.ID), chromedp.WaitVisible(chromedp.CSS("#token-login")))
	remember()
	if n := eval[int](t, ctx, `[...document.querySelectorAll("#token-login input, #token-login button")].filter(e => !(e.labels && e.labels.length) && !(e.tagName === "BUTTON" && e.textContent.trim())).length`); n != 0 {
		t.Errorf("%d controls of the token form are unlabelled", n)
	}
	if w := eval[int](t, ctx, `document.documentElement.scrollWidth`); w > 1280 {
		t.Errorf("the login page is %d px wide", w)
	}
	screenshots(t, ctx, "login-token")

	// A wrong token says what a wrong password says, and stays.
	do(t, ctx,
		chromedp.SendKeys(chromedp.CSS(`#token-login input[name="token"]`), "ansf_not-a-real-token"),
		chromedp.Click(chromedp.CSS(`#token-login button[type="submit"]`)))
	waitJS(t, ctx, 10*time.Second, `document.querySelector("#token-login-error").textContent.includes("invalid username or password")`)

	// The viewer token: back on the run page, without the cancel button.
	do(t, ctx,
		chromedp.SetValue(chromedp.CSS(`#token-login input[name="token"]`), viewer.Secret),
		chromedp.Click(chromedp.CSS(`#token-login button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#run")))
	remember()
	waitJS(t, ctx, 15*time.Second, `document.querySelector('pre.log[data-step="wait"]').textContent.includes("waiting")`)
	if who := eval[string](t, ctx, `document.querySelector(".who").textContent`); !strings.Contains(who, "token:"+viewer.ID+" (watcher)") {
		t.Errorf("the frame names %q, want the viewer token", who)
	}
	if eval[bool](t, ctx, `!!document.querySelector("#cancel") || !!document.querySelector("#rerun-all")`) {
		t.Error("a viewer token's session is offered cancel or rerun")
	}
	// Its grant is the token's.
	if body := eval[string](t, ctx, `(() => { const x = new XMLHttpRequest(); x.open("GET", "/api/v1/me", false); x.send();
		const m = JSON.parse(x.responseText); return m.identity.kind + " " + m.identity.role + " " + m.identity.pipelines.join() })()`); body != "token viewer slow" {
		t.Errorf("/api/v1/me in the browser: %q, want the viewer token's grant", body)
	}

	// Log out; the operator token may cancel the run.
	do(t, ctx, chromedp.Click(chromedp.CSS("#logout")), chromedp.WaitVisible(chromedp.CSS("#token-login")))
	remember()
	do(t, ctx, chromedp.Navigate(base+"/login?next=/runs/"+run.ID), chromedp.WaitVisible(chromedp.CSS("#token-login")),
		chromedp.SendKeys(chromedp.CSS(`#token-login input[name="token"]`), operator.Secret),
		chromedp.Click(chromedp.CSS(`#token-login button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#cancel")))
	remember()
	do(t, ctx, chromedp.Click(chromedp.CSS("#cancel")))
	waitJS(t, ctx, 20*time.Second, `document.querySelector("#run-status .status").dataset.status === "cancelled"`)
	for _, a := range addresses {
		if strings.Contains(a, viewer.Secret) || strings.Contains(a, operator.Secret) || strings.Contains(a, "ansf_") {
			t.Errorf("a token is in the address %s", a)
		}
	}
	if errs := jsErrs(); len(errs) > 0 {
		t.Fatalf("JavaScript errors:\n%s", strings.Join(errs, "\n"))
	}
}
