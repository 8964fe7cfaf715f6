package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/services/docker-runner/dockertest"
)

// TestRunPolicy: `ansflow run` is strict by default: the pipeline
// (the host's root mounted, a file touched through it) fails with the
// setting that would allow it and touches nothing; --allow-host-path relaxes
// the policy for that path only.
func TestRunPolicy(t *testing.T) {
	cli := dockertest.Client(t)
	image := dockertest.BusyboxImage(t, cli)
	dir := t.TempDir()
	escaped := fmt.Sprintf("/tmp/ansflow-escaped-run-%d", time.Now().UnixNano())
	t.Cleanup(func() { os.Remove(escaped) })
	hostDir := t.TempDir()
	write := func(name, volume, cmd string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(`pipeline:
  name: `+strings.TrimSuffix(name, ".yaml")+`
  steps:
    - name: touch
      type: docker_run
      docker_image: "`+image+`"
      command: "`+cmd+`"
      docker_config:
        volumes: ["`+volume+`"]
`), 0o644)
		return p
	}
	run := func(args ...string) (int, *apiv1.Run) {
		t.Helper()
		code, out := capture(t, append(append([]string{"run"}, args...), "--output", "json", "--data-dir", t.TempDir())...)
		var r apiv1.Run
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("exit %d, output is not a run: %v\n%s", code, err, out)
		}
		return code, &r
	}

	escape := write("escape.yaml", "/:/host", "touch /host"+escaped)
	code, r := run(escape)
	if code != exitFailed || r.Status != "failed" {
		t.Fatalf("exit %d, run %s", code, r.Status)
	}
	want := `volumes: host path "/" is not allowed by this runner's policy (allow it with --allow-host-path / or policy file allowed_host_paths)`
	if !strings.Contains(r.Steps[0].Error, want) {
		t.Errorf("step error %q lacks %q", r.Steps[0].Error, want)
	}
	if _, err := os.Stat(escaped); !os.IsNotExist(err) {
		t.Fatalf("%s exists on the host", escaped)
	}

	// relaxed for hostDir only: a mount of it works, "/" still fails
	allowed := write("allowed.yaml", hostDir+":/data", "echo ok > /data/written")
	code, r = run(allowed, "--allow-host-path", hostDir)
	if code != exitOK {
		t.Fatalf("allowed host path: exit %d, %s: %s", code, r.Status, r.Steps[0].Error)
	}
	if b, err := os.ReadFile(filepath.Join(hostDir, "written")); err != nil || string(b) != "ok\n" {
		t.Errorf("written on the host: %q %v", b, err)
	}
	if code, _ = run(escape, "--allow-host-path", hostDir); code != exitFailed {
		t.Errorf("/ mounted with only %s allowed: exit %d", hostDir, code)
	}

	// a policy file, as ANSFLOW_RUNNER_POLICY
	pol := filepath.Join(dir, "policy.yaml")
	os.WriteFile(pol, []byte("allowed_host_paths: ["+hostDir+"]\ntrusted_pipelines: [other]\n"), 0o600)
	t.Setenv("ANSFLOW_RUNNER_POLICY", pol)
	code, r = run(allowed)
	if code != exitFailed || !strings.Contains(r.Steps[0].Error, `only for pipelines matching trusted_pipelines [other], not pipeline "allowed"`) {
		t.Errorf("untrusted pipeline: exit %d, error %q", code, r.Steps[0].Error)
	}
	if code, _ := capture(t, "run", allowed, "--server", "http://127.0.0.1:1", "--allow-privileged"); code != exitInvalid {
		t.Errorf("--allow-privileged with --server: exit %d, want %d", code, exitInvalid)
	}
	os.WriteFile(pol, []byte("allow_everything: true\n"), 0o600)
	if code, _ := capture(t, "run", allowed, "--data-dir", t.TempDir()); code != exitInvalid {
		t.Errorf("bad policy file: exit %d, want %d", code, exitInvalid)
	}
}
