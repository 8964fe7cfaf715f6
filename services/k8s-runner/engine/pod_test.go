package engine_test

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/services/k8s-runner/engine"
)

// k8s_exec runs the command through the real apiserver (kwok runs it on
// this host): stdout and stderr arrive separately, the step's env is
// passed, and the exit code decides the step.
func TestExec(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ns := h.c.namespace(t, "exec")
	h.c.pod(t, ns, "shell", map[string]string{"app": "shell"}, "main", "sidecar")

	t.Run("string command with env", func(t *testing.T) {
		h := h.with(t)
		req := h.step(engine.TypeExec, ns, "", map[string]any{"pod": "shell", "container": "sidecar"})
		req.Command = `echo "out $GREETING"; echo err >&2`
		req.Env = map[string]string{"GREETING": "hi there"}
		r := h.run(req, event.StatusSucceeded, 30*time.Second)
		if r.Stdout != "out hi there\n" || r.Stderr != "err\n" {
			t.Errorf("stdout %q, stderr %q", r.Stdout, r.Stderr)
		}
		wantOutputs(t, r, map[string]string{"pod": "shell", "container": "sidecar", "exit_code": "0"})
		if r.ExitCode == nil || *r.ExitCode != 0 {
			t.Errorf("exit code %v, want 0", r.ExitCode)
		}
	})

	t.Run("secrets arrive as env, through stdin, masked", func(t *testing.T) {
		h := h.with(t)
		const value = "k8s-s3cret value\nwith a newline\n"
		req := h.step(engine.TypeExec, ns, "", map[string]any{"pod": "shell"})
		req.Command = `printf '%s' "$TOKEN" | sha256sum; echo "raw: $TOKEN"; echo "greeting: $GREETING"`
		req.Env = map[string]string{"GREETING": "hi"}
		req.Secrets = []event.SealedSecret{seal(t, req, "DEPLOY_TOKEN", "TOKEN", value)}
		r := h.run(req, event.StatusSucceeded, 30*time.Second)
		wantContains(t, "stdout", r.Stdout, fmt.Sprintf("%x", sha256.Sum256([]byte(value))), "raw: ****", "greeting: hi")
		if strings.Contains(r.Stdout, "k8s-s3cret") {
			t.Errorf("stdout holds the secret: %q", r.Stdout)
		}
	})

	t.Run("secrets sealed to another pool", func(t *testing.T) {
		h := h.with(t)
		req := h.step(engine.TypeExec, ns, "", map[string]any{"pod": "shell"})
		req.Command = "true"
		other, _ := secret.GenerateIdentity()
		boxes, _ := secret.Seal([]byte("value"), secret.Binding{RunID: req.RunID, StepID: req.StepID, Attempt: 1, Name: "T", Env: "T"}, []string{other.PublicKey()})
		req.Secrets = []event.SealedSecret{{Name: "T", Env: "T", Boxes: boxes}}
		r := h.run(req, event.StatusFailed, 30*time.Second)
		wantContains(t, "error", r.Error, "secret T was not sealed to this runner's identity")
	})

	t.Run("argv command by selector", func(t *testing.T) {
		h := h.with(t)
		req := h.step(engine.TypeExec, ns, "", map[string]any{"pod_selector": "app=shell"})
		req.Command = []any{"sh", "-c", "echo $0", "literal; not a shell"}
		r := h.run(req, event.StatusSucceeded, 30*time.Second)
		if r.Stdout != "literal; not a shell\n" {
			t.Errorf("stdout %q", r.Stdout)
		}
		wantOutputs(t, r, map[string]string{"pod": "shell", "container": "main"})
	})

	t.Run("non-zero exit", func(t *testing.T) {
		h := h.with(t)
		req := h.step(engine.TypeExec, ns, "", map[string]any{"pod": "shell", "command": "echo failing; exit 3"})
		r := h.run(req, event.StatusFailed, 30*time.Second)
		if r.ExitCode == nil || *r.ExitCode != 3 {
			t.Errorf("exit code %v, want 3:\n%s", r.ExitCode, r)
		}
		wantContains(t, "stdout", r.Stdout, "failing")
		wantContains(t, "error", r.Error, "exit code 3", "pod "+ns+"/shell")
	})

	t.Run("seed shape: selector of a deployment's pods and its container", func(t *testing.T) {
		h := h.with(t)
		h.deploy(ns, "my-app", 2, "my-app:1")
		dir := t.TempDir()
		req := h.step(engine.TypeExec, ns, "my-app", map[string]any{"pod_selector": "app=my-app", "container": "my-app"})
		req.Command = "cd " + dir + " && echo ran > marker && echo integration tests passed"
		r := h.run(req, event.StatusSucceeded, 30*time.Second)
		wantContains(t, "stdout", r.Stdout, "integration tests passed")
		if !strings.HasPrefix(r.Outputs["pod"], "my-app-") {
			t.Errorf("pod output %q", r.Outputs["pod"])
		}
		if b, err := os.ReadFile(filepath.Join(dir, "marker")); err != nil || string(b) != "ran\n" {
			t.Errorf("marker: %q %v", b, err)
		}
		// No pod or selector: the resource name's Deployment selects.
		req = h.step(engine.TypeExec, ns, "my-app", nil)
		req.Command = "echo via deployment"
		h.run(req, event.StatusSucceeded, 30*time.Second)
	})

	t.Run("selector matches nothing", func(t *testing.T) {
		h := h.with(t)
		req := h.step(engine.TypeExec, ns, "", map[string]any{"pod_selector": "app=nobody"})
		req.Command = "true"
		r := h.run(req, event.StatusFailed, 30*time.Second)
		wantContains(t, "error", r.Error, `no pod in namespace `+ns+` matches selector "app=nobody": no matching pod`)
	})

	t.Run("unknown container", func(t *testing.T) {
		h := h.with(t)
		req := h.step(engine.TypeExec, ns, "", map[string]any{"pod": "shell", "container": "nope"})
		req.Command = "true"
		r := h.run(req, event.StatusFailed, 30*time.Second)
		wantContains(t, "error", r.Error, `has no container "nope" (it has main, sidecar)`)
	})

	t.Run("forbidden by RBAC", func(t *testing.T) {
		h := h.with(t)
		h.restrict(ns)
		req := h.step(engine.TypeExec, ns, "", map[string]any{"pod": "shell"})
		req.Target, req.Cluster = clusterRestricted, clusterRestricted
		req.Command = "true"
		r := h.run(req, event.StatusFailed, 30*time.Second)
		wantContains(t, "error", r.Error, "forbidden by RBAC", `may not get pods "shell"`)
	})

	t.Run("timeout", func(t *testing.T) {
		h := h.with(t)
		req := h.step(engine.TypeExec, ns, "", map[string]any{"pod": "shell", "timeout": 1})
		req.Command = "sleep 5"
		start := time.Now()
		r := h.run(req, event.StatusFailed, 30*time.Second)
		wantContains(t, "error", r.Error, "did not finish within 1s")
		if took := time.Since(start); took > 4*time.Second {
			t.Errorf("a 1s exec timeout took %s", took)
		}
	})
}

// k8s_logs streams a pod's log lines into the step's stdout: tail, follow
// for a while, several pods by selector with prefixes.
func TestLogs(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ns := h.c.namespace(t, "logs")
	dir := t.TempDir()
	for _, name := range []string{"talker-a", "talker-b"} {
		h.c.pod(t, ns, name, map[string]string{"app": "talker"})
		file := filepath.Join(dir, name+".log")
		if err := os.WriteFile(file, []byte(criLog("one from "+name, "two", "three", "four", "five")), 0o644); err != nil {
			t.Fatal(err)
		}
		h.c.podLogs(t, ns, name, file)
	}

	t.Run("all lines", func(t *testing.T) {
		h := h.with(t)
		r := h.run(h.step(engine.TypeLogs, ns, "", map[string]any{"pod": "talker-a"}), event.StatusSucceeded, 30*time.Second)
		if r.Stdout != "one from talker-a\ntwo\nthree\nfour\nfive\n" {
			t.Errorf("stdout %q", r.Stdout)
		}
		wantOutputs(t, r, map[string]string{"lines": "5", "pods": "talker-a"})
	})

	t.Run("tail", func(t *testing.T) {
		h := h.with(t)
		r := h.run(h.step(engine.TypeLogs, ns, "", map[string]any{"pod": "talker-a", "tail_lines": 2, "since": "1h"}), event.StatusSucceeded, 30*time.Second)
		if r.Stdout != "four\nfive\n" {
			t.Errorf("stdout %q", r.Stdout)
		}
	})

	t.Run("selector prefixes each pod", func(t *testing.T) {
		h := h.with(t)
		r := h.run(h.step(engine.TypeLogs, ns, "", map[string]any{"pod_selector": "app=talker", "tail_lines": "1"}), event.StatusSucceeded, 30*time.Second)
		wantContains(t, "stdout", r.Stdout, "[talker-a/main] five\n", "[talker-b/main] five\n")
		wantOutputs(t, r, map[string]string{"pods": "talker-a,talker-b", "lines": "2"})
	})

	t.Run("follow for a while", func(t *testing.T) {
		h := h.with(t)
		file := filepath.Join(dir, "talker-b.log")
		go func() {
			time.Sleep(700 * time.Millisecond)
			f, err := os.OpenFile(file, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				return
			}
			defer f.Close()
			_, _ = f.WriteString(criLog("appended while following"))
		}()
		r := h.run(h.step(engine.TypeLogs, ns, "", map[string]any{"pod": "talker-b", "follow": true, "tail_lines": 1, "timeout": 3}),
			event.StatusSucceeded, 30*time.Second)
		if r.Stdout != "five\nappended while following\n" {
			t.Errorf("stdout %q", r.Stdout)
		}
	})

	t.Run("selector matches nothing", func(t *testing.T) {
		h := h.with(t)
		r := h.run(h.step(engine.TypeLogs, ns, "", map[string]any{"pod_selector": "app=silent"}), event.StatusFailed, 30*time.Second)
		wantContains(t, "error", r.Error, `no pod in namespace `+ns+` matches selector "app=silent"`)
	})

	t.Run("missing namespace", func(t *testing.T) {
		h := h.with(t)
		r := h.run(h.step(engine.TypeLogs, "no-such-namespace", "", map[string]any{"pod": "x"}), event.StatusFailed, 30*time.Second)
		wantContains(t, "error", r.Error, `namespace "no-such-namespace" does not exist`)
	})
}
