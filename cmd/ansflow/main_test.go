package main

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/runner/runnertest"
)

// useScriptedEngines replaces the real engines with the scripted one, so the
// CLI and embedded stack are tested without Docker or Kubernetes.
func useScriptedEngines(t testing.TB) {
	saved := engines
	eng := &runnertest.Engine{}
	f := func(context.Context, *fileConfig, stackConfig, *zap.Logger) ([]servedEngine, error) {
		return []servedEngine{{Engine: eng, Targets: []string{"default"}}}, nil
	}
	engines = map[string]engineFactory{"docker": f, "k8s": f}
	t.Cleanup(func() { engines = saved })
}

// capture runs the CLI with args and returns its exit code and stdout.
func capture(t *testing.T, args ...string) (int, string) {
	t.Helper()
	r, w, _ := os.Pipe()
	old := os.Stdout
	os.Stdout = w
	done := make(chan string)
	go func() { b, _ := io.ReadAll(r); done <- string(b) }()
	code := dispatch(context.Background(), args)
	w.Close()
	os.Stdout = old
	return code, <-done
}

func TestRunExitCodesAndJSON(t *testing.T) {
	useScriptedEngines(t)
	code, out := capture(t, "run", "testdata/ok.yaml", "--output", "json", "--var", "who=tester", "--data-dir", t.TempDir())
	if code != exitOK {
		t.Fatalf("exit = %d, want 0; output:\n%s", code, out)
	}
	var run apiv1.Run
	if err := json.Unmarshal([]byte(out), &run); err != nil {
		t.Fatalf("stdout is not one JSON run: %v\n%s", err, out)
	}
	if run.Status != "succeeded" || len(run.Steps) != 2 {
		t.Fatalf("run = %s with %d steps", run.Status, len(run.Steps))
	}
	g := run.Steps[1]
	if g.Name != "Greet" || g.Attempts != 1 || g.ExitCode == nil || *g.ExitCode != 0 || g.StartedAt == nil || g.FinishedAt == nil {
		t.Errorf("step record incomplete: %+v", g)
	}
	if g.Logs.Stdout != "hello tester\n" || g.Logs.Stderr != "to stderr\n" || g.Outputs["greeting"] != "hi" {
		t.Errorf("logs/outputs = %q / %q / %v", g.Logs.Stdout, g.Logs.Stderr, g.Outputs)
	}
	if img := run.Steps[0].Outputs["image"]; img != "demo:1" {
		t.Errorf("build image = %q, want demo:1", img)
	}
	for _, key := range []string{`"id"`, `"status"`, `"steps"`, `"name"`, `"type"`, `"attempts"`, `"exit_code"`, `"outputs"`, `"started_at"`, `"finished_at"`, `"stdout"`, `"stderr"`} {
		if !strings.Contains(out, key) {
			t.Errorf("JSON lacks %s", key)
		}
	}

	code, out = capture(t, "run", "testdata/fail.yaml", "--data-dir", t.TempDir())
	if code != exitFailed {
		t.Fatalf("failing run exit = %d, want 1\n%s", code, out)
	}
	if !strings.Contains(out, "boom") || !strings.Contains(out, "stderr|") || !strings.Contains(out, "exit code 7") {
		t.Errorf("live output lacks the stderr line or exit code:\n%s", out)
	}
}

func TestInvalidInputExitsTwo(t *testing.T) {
	useScriptedEngines(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("pipeline:\n  name: x\n  steps:\n    - name: a\n      type: docker_run\n      command: echo {{nope}}\n"), 0o644)
	for _, args := range [][]string{
		{"validate", bad},
		{"run", bad, "--data-dir", t.TempDir()},
		{"run", "testdata/ok.yaml", "--var", "undeclared=1", "--data-dir", t.TempDir()},
		{"run", filepath.Join(dir, "missing.yaml")},
	} {
		if code, out := capture(t, args...); code != exitInvalid {
			t.Errorf("%v: exit = %d, want 2\n%s", args, code, out)
		}
	}
	if code, _ := capture(t, "validate", "testdata/ok.yaml"); code != exitOK {
		t.Errorf("validate ok.yaml: exit %d", code)
	}
}
