package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/services/pipeline/orchestrator"
)

// TestSecretsCLI drives `ansflow secrets` against `ansflow up`: the first
// start makes the secrets key and identity (0600) and says so; set reads
// the value from standard input (one trailing newline dropped); list shows
// metadata and filters, never the value; bad names, short values and
// unknown pipelines exit 2.
func TestSecretsCLI(t *testing.T) {
	useScriptedEngines(t)
	t.Setenv("ANSFLOW_TOKEN", "")
	dir := t.TempDir()
	url, stderr := startUp(t, dir)
	for _, f := range []string{secretsKeyFile, secretsIdentityFile} {
		if !strings.Contains(stderr(), filepath.Join(dir, f)) {
			t.Errorf("first start did not say it made %s:\n%s", f, stderr())
		}
	}
	common := []string{"--server", url, "--data-dir", dir}
	const value = "cli-secret-value"
	var code int
	var out string
	withStdin(t, value+"\n", func() {
		code, out = capture(t, append([]string{"secrets", "set", "NPM_TOKEN", "--branches", "main,release/*", "--events", "push"}, common...)...)
	})
	if code != exitOK || !strings.Contains(out, "secret NPM_TOKEN (global) set") {
		t.Fatalf("set: exit %d: %s", code, out)
	}
	code, out = capture(t, append([]string{"secrets", "list", "--output", "json"}, common...)...)
	var list []secret.Meta
	if err := json.Unmarshal([]byte(out), &list); err != nil || code != exitOK {
		t.Fatalf("list: exit %d, %v: %s", code, err, out)
	}
	if len(list) != 1 || list[0].Name != "NPM_TOKEN" || strings.Join(list[0].Filters.Branches, ",") != "main,release/*" || list[0].UpdatedBy == "" {
		t.Errorf("list = %+v", list)
	}
	if strings.Contains(out, value) {
		t.Errorf("list shows the value: %s", out)
	}
	code, out = capture(t, append([]string{"secrets", "list"}, common...)...)
	if code != exitOK || !strings.Contains(out, "NPM_TOKEN") || strings.Contains(out, value) {
		t.Errorf("list (text): exit %d: %s", code, out)
	}

	for name, c := range map[string]struct {
		args  []string
		stdin string
	}{
		"bad name":         {[]string{"secrets", "set", "1BAD"}, "value"},
		"short value":      {[]string{"secrets", "set", "SHORT"}, "ab\n"},
		"unknown pipeline": {[]string{"secrets", "set", "X", "--pipeline", "nope"}, "value"},
		"bad filter":       {[]string{"secrets", "set", "X", "--events", "merge"}, "value"},
	} {
		withStdin(t, c.stdin, func() { code, out = capture(t, append(c.args, common...)...) })
		if code != exitInvalid {
			t.Errorf("%s: exit %d, want %d: %s", name, code, exitInvalid, out)
		}
	}

	code, out = capture(t, append([]string{"secrets", "delete", "NPM_TOKEN"}, common...)...)
	if code != exitOK {
		t.Fatalf("delete: exit %d: %s", code, out)
	}
	code, out = capture(t, append([]string{"secrets", "list", "--output", "json"}, common...)...)
	if code != exitOK || strings.TrimSpace(out) != "[]" {
		t.Errorf("list after delete: exit %d: %q", code, out)
	}
	if code, _ = capture(t, append([]string{"secrets", "delete", "NPM_TOKEN"}, common...)...); code != exitInvalid {
		t.Errorf("second delete: exit %d, want %d", code, exitInvalid)
	}
}

// A pool whose keys the pipeline service pins gets its secrets sealed to
// those keys only: a runner announcing another identity cannot open them,
// and the step fails saying so. `ansflow secrets identity FILE` prints the
// key to pin.
func TestPinnedPoolKeys(t *testing.T) {
	useScriptedEngines(t)
	file := filepath.Join(t.TempDir(), "other.identity")
	code, out := capture(t, "secrets", "identity", file)
	pinned := strings.TrimSpace(out)
	if code != exitOK || secret.CheckPublicKey(pinned) != nil {
		t.Fatalf("secrets identity: exit %d: %q", code, out)
	}
	if _, again := capture(t, "secrets", "identity", file); strings.TrimSpace(again) != pinned {
		t.Fatalf("the identity changed: %q, then %q", pinned, again)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := startStack(ctx, stackConfig{DataDir: t.TempDir(), NATSAddr: "off", DockerRunner: true, Pipeline: true, Concurrency: 2,
		Orchestrator: orchestrator.Config{PoolKeys: map[string][]string{"docker/default": {pinned}}}}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer st.stop()
	if _, err := st.svc.Secrets.Set(ctx, secret.Scope{}, "TOKEN", []byte("pinned-value"), secret.Filters{}, "test"); err != nil {
		t.Fatal(err)
	}
	c := newClient(st.URL, st.Token)
	yaml := "pipeline:\n  name: pinned\n  steps:\n    - {name: a, type: docker_run, command: \"echo hi\", secrets: [{name: TOKEN}]}\n"
	if _, err := c.applyPipeline(ctx, "pinned.yaml", []byte(yaml)); err != nil {
		t.Fatal(err)
	}
	run, err := c.trigger(ctx, "pinned", apiv1.TriggerBody{})
	if err != nil {
		t.Fatal(err)
	}
	waitRun(t, c, run.ID)
	r, err := c.getRun(ctx, run.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != "failed" || !strings.Contains(r.Steps[0].Error, "was not sealed to this runner's identity") {
		t.Fatalf("run %s, step error %q; want failed: not sealed to this runner's identity", r.Status, r.Steps[0].Error)
	}
}
