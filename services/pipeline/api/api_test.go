package api_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/spec/steps"

	"github.com/ansflow/ansflow/services/pipeline/pipelinetest"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// bearerFor is the token call sends to each test server (by base URL): the
// server's admin token unless a test sets another.
var bearerFor = map[string]string{}

func server(t *testing.T) string {
	env := pipelinetest.Start(t)
	bearerFor[env.Srv.URL] = env.AdminToken
	return env.Srv.URL
}

func tokenFor(url string) string {
	for base, tok := range bearerFor {
		if strings.HasPrefix(url, base) {
			return tok
		}
	}
	return ""
}

func call(t *testing.T, method, url, ctype, body string, out any) int {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	req.Header.Set("Authorization", "Bearer "+tokenFor(url))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if p, ok := out.(*string); ok {
			*p = string(b)
		} else if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, url, err, b)
		}
	}
	return resp.StatusCode
}

const pipe = "pipeline:\n  name: api-demo\n  variables:\n    who: world\n  steps:\n    - name: hello\n      type: docker_run\n      command: \"echo hello {{who}}; warn careful\"\n    - name: gate\n      type: docker_run\n      command: \"exit {{code}}\"\n"

func TestPipelinesAndRuns(t *testing.T) {
	base := server(t)
	yamlText := strings.Replace(pipe, "    who: world\n", "    who: world\n    code: \"0\"\n", 1)
	var errBody apiv1.ErrorBody
	if code := call(t, "POST", base+"/api/v1/pipelines", "application/yaml", pipe, &errBody); code != 400 || len(errBody.Errors) == 0 ||
		errBody.Errors[0].Line != 11 || !strings.Contains(errBody.Errors[0].Message, "unknown variable {{code}}") {
		t.Fatalf("invalid pipeline: %d %+v", code, errBody)
	}
	var rec apiv1.Pipeline
	if code := call(t, "POST", base+"/api/v1/pipelines", "application/yaml", yamlText, &rec); code != 200 || rec.Version != 1 {
		t.Fatalf("apply: %d %+v", code, rec)
	}
	v2 := strings.Replace(yamlText, "who: world", "who: api", 1)
	if call(t, "PUT", base+"/api/v1/pipelines/api-demo", "application/yaml", v2, &rec); rec.Version != 2 {
		t.Fatalf("second apply version %d", rec.Version)
	}
	var exported string
	call(t, "GET", base+"/api/v1/pipelines/api-demo/export?version=1", "", "", &exported)
	if exported != yamlText {
		t.Errorf("export of version 1 differs")
	}
	var versions []apiv1.Pipeline
	call(t, "GET", base+"/api/v1/pipelines/api-demo/versions", "", "", &versions)
	if len(versions) != 2 {
		t.Errorf("%d versions", len(versions))
	}
	if code := call(t, "POST", base+"/api/v1/pipelines/api-demo/clone", "application/json", `{"name":"api-copy"}`, &rec); code != 201 || rec.Name != "api-copy" {
		t.Errorf("clone: %d %+v", code, rec)
	}
	var list []apiv1.Pipeline
	call(t, "GET", base+"/api/v1/pipelines", "", "", &list)
	if len(list) != 2 {
		t.Errorf("list: %d pipelines", len(list))
	}
	if code := call(t, "POST", base+"/api/v1/pipelines/api-demo/runs", "application/json", `{"vars":{"nope":"1"}}`, &errBody); code != 400 {
		t.Errorf("undeclared variable: %d", code)
	}
	var run store.Run
	if code := call(t, "POST", base+"/api/v1/pipelines/api-demo/runs", "application/json", `{"vars":{"code":"3"},"branch":"main"}`, &run); code != 201 {
		t.Fatalf("trigger: %d", code)
	}
	// live logs: follow until the run ends
	lreq, _ := http.NewRequest(http.MethodGet, base+"/api/v1/runs/"+run.ID+"/logs", nil)
	lreq.Header.Set("Authorization", "Bearer "+tokenFor(base))
	resp, err := http.DefaultClient.Do(lreq)
	if err != nil {
		t.Fatal(err)
	}
	var lines []apiv1.LogLine
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if l, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			var ll apiv1.LogLine
			_ = json.Unmarshal([]byte(l), &ll)
			lines = append(lines, ll)
		}
	}
	resp.Body.Close()
	var sawStdout, sawStderr, sawEnd bool
	for _, l := range lines {
		sawStdout = sawStdout || (l.Kind == "log" && l.Stream == "stdout" && l.Text == "hello api\n")
		sawStderr = sawStderr || (l.Kind == "log" && l.Stream == "stderr" && l.Text == "careful\n")
		sawEnd = sawEnd || (l.Kind == "run" && l.Status == "failed")
	}
	if !sawStdout || !sawStderr || !sawEnd {
		t.Errorf("log stream incomplete: %+v", lines)
	}
	call(t, "GET", base+"/api/v1/runs/"+run.ID, "", "", &run)
	if run.Status != "failed" || run.Steps[1].ExitCode == nil || *run.Steps[1].ExitCode != 3 {
		t.Fatalf("run: %s %+v", run.Status, run.Steps[1])
	}
	if code := call(t, "POST", base+"/api/v1/runs/"+run.ID+"/cancel", "", "", &errBody); code != 409 {
		t.Errorf("cancel finished run: %d", code)
	}
	var re store.Run
	if code := call(t, "POST", base+"/api/v1/runs/"+run.ID+"/rerun", "", "", &re); code != 201 || re.RerunOf != run.ID {
		t.Errorf("rerun: %d", code)
	}
	var runs []store.Run
	call(t, "GET", base+"/api/v1/runs?pipeline=api-demo", "", "", &runs)
	if len(runs) != 2 {
		for _, r := range runs {
			t.Logf("run %s %s rerun_of=%s", r.ID, r.Status, r.RerunOf)
		}
		t.Errorf("runs list: %d (rerun %s)", len(runs), re.ID)
	}
	if code := call(t, "GET", base+"/api/v1/runs/does-not-exist", "", "", &errBody); code != 404 {
		t.Errorf("missing run: %d", code)
	}
	if code := call(t, "DELETE", base+"/api/v1/pipelines/api-copy", "", "", nil); code != 204 {
		t.Errorf("delete: %d", code)
	}
}

// TestStepTypes checks GET /api/v1/step-types, which editors build forms
// from, and that validation through the API reports a wrongly typed
// setting at its line.
func TestStepTypes(t *testing.T) {
	base := server(t)
	var types []steps.StepType
	if code := call(t, "GET", base+"/api/v1/step-types", "", "", &types); code != 200 {
		t.Fatalf("step types: %d", code)
	}
	if want := steps.Types(); !reflect.DeepEqual(types, want) {
		t.Errorf("served %+v, want %+v", types, want)
	}
	var names []string
	for _, st := range types {
		names = append(names, st.Name)
	}
	if fmt.Sprint(names) != "[docker_build docker_run docker_push docker_pull k8s_deploy k8s_scale k8s_delete k8s_wait k8s_exec k8s_logs]" {
		t.Errorf("step types %v", names)
	}
	bad := "pipeline:\n  name: typed\n  steps:\n    - name: scale\n      type: k8s_scale\n      k8s_config:\n        replicas: five\n"
	var errBody apiv1.ErrorBody
	if code := call(t, "POST", base+"/api/v1/validate", "application/yaml", bad, &errBody); code != 400 || len(errBody.Errors) != 1 ||
		errBody.Errors[0].Line != 7 || errBody.Errors[0].Field != "pipeline.steps[0].k8s_config.replicas" ||
		errBody.Errors[0].Message != `must be an integer, got "five"` {
		t.Errorf("validate: %d %+v", code, errBody)
	}
}

func TestCatalogue(t *testing.T) {
	base := server(t)
	if code := call(t, "POST", base+"/api/v1/registries", "application/json", `{"id":"1","name":"local","url":"127.0.0.1:5000"}`, nil); code != 200 {
		t.Fatalf("add registry: %d", code)
	}
	if code := call(t, "POST", base+"/api/v1/registries", "application/json", `{"name":"no-id"}`, nil); code != 400 {
		t.Errorf("registry without id: %d", code)
	}
	if code := call(t, "POST", base+"/api/v1/clusters", "application/json", `{"id":"c1","name":"local","context":"ansflow-local"}`, nil); code != 200 {
		t.Fatalf("add cluster: %d", code)
	}
	var regs []apiv1.Registry
	call(t, "GET", base+"/api/v1/registries", "", "", &regs)
	if len(regs) != 1 || regs[0].URL != "127.0.0.1:5000" {
		t.Errorf("registries: %+v", regs)
	}
	// a step naming a registry that is not in the catalogue fails with the reason
	p := "pipeline:\n  name: reg\n  steps:\n    - name: push\n      type: docker_push\n      docker_image: x\n      docker_registry: 9\n"
	call(t, "POST", base+"/api/v1/pipelines", "application/yaml", p, nil)
	var run store.Run
	call(t, "POST", base+"/api/v1/pipelines/reg/runs", "application/json", "", &run)
	if run.Status != "failed" || !strings.Contains(run.Steps[0].Error, `registry "9": not found in the catalogue`) {
		t.Errorf("run = %s %q", run.Status, run.Steps[0].Error)
	}
	if code := call(t, "DELETE", base+"/api/v1/registries/1", "", "", nil); code != 204 {
		t.Errorf("delete registry: %d", code)
	}
	_ = bytes.MinRead
}

func TestDeletedPipelineReappliedKeepsNumbering(t *testing.T) {
	base := server(t)
	p := "pipeline:\n  name: again\n  steps:\n    - {name: a, type: docker_run}\n"
	var rec apiv1.Pipeline
	call(t, "POST", base+"/api/v1/pipelines", "application/yaml", p, &rec)
	call(t, "DELETE", base+"/api/v1/pipelines/again", "", "", nil)
	if code := call(t, "POST", base+"/api/v1/pipelines", "application/yaml", strings.Replace(p, "name: a,", "name: b,", 1), &rec); code != 200 || rec.Version != 2 {
		t.Fatalf("re-applied after delete: %d version %d, want 2", code, rec.Version)
	}
	var run store.Run
	if code := call(t, "POST", base+"/api/v1/pipelines/again/runs", "application/json", "", &run); code != 201 || run.Spec == nil || run.Spec.Steps[0].Name != "b" {
		t.Fatalf("run of version 2: %d %+v", code, run.Spec)
	}
	call(t, "GET", base+"/api/v1/runs/"+run.ID, "", "", &run)
	if run.Spec == nil || run.PipelineVersion != 2 {
		t.Errorf("stored run lacks its spec: %+v", run.Spec)
	}
}
