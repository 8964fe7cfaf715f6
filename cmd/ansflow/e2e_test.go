package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/services/docker-runner/dockertest"
	"github.com/ansflow/ansflow/services/pipeline/webhook"
)

// gitRepo makes a local repository with one commit and returns its file://
// URL and commit.
func gitRepo(t *testing.T, files map[string]string) (string, string) {
	t.Helper()
	dir := t.TempDir()
	run := func(args ...string) string {
		cmd := exec.Command("git", append([]string{"-C", dir, "-c", "user.name=t", "-c", "user.email=t@example.com"}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	run("init", "-q", "-b", "main")
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run("add", ".")
	run("commit", "-q", "-m", "init")
	return "file://" + dir, run("rev-parse", "HEAD")
}

// TestWebhookValuesCannotInjectShell sends a signed GitHub push whose branch
// and commit message are shell injections through the embedded stack to a
// real container, and checks they arrive as data.
func TestWebhookValuesCannotInjectShell(t *testing.T) {
	cli := dockertest.Client(t)
	image := dockertest.BusyboxImage(t, cli)
	const secret = "e2e-hook-secret"
	t.Setenv("ANSFLOW_WEBHOOK_E2E", secret)
	repo, commit := gitRepo(t, map[string]string{"README": "hi\n"})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := startStack(ctx, stackConfig{DataDir: t.TempDir(), NATSAddr: "off", DockerRunner: true, Pipeline: true, Concurrency: 2, AllowLocalClone: true}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer st.stop()
	c := newClient(st.URL, st.Token)
	yaml := `pipeline:
  name: injection
  triggers:
    - type: webhook
      provider: github
      secret_env: ANSFLOW_WEBHOOK_E2E
  steps:
    - name: show
      type: docker_run
      docker_image: "` + image + `"
      command: "echo {{git_branch}}; echo {{git_message}}; ls /workspace; test ! -e /tmp/pwned && echo clean"
      docker_config:
        mount_source: true
`
	if _, err := c.applyPipeline(ctx, "injection.yaml", []byte(yaml)); err != nil {
		t.Fatal(err)
	}
	branch := `zzz";echo${IFS}"hello";#`
	message := "$(touch /tmp/pwned)"
	body, _ := json.Marshal(map[string]any{
		"ref": "refs/heads/" + branch, "after": commit,
		"repository":  map[string]any{"clone_url": repo},
		"head_commit": map[string]any{"message": message, "author": map[string]any{"name": "Mallory"}},
	})
	req, _ := http.NewRequest(http.MethodPost, st.URL+"/webhooks/github/injection", bytes.NewReader(body))
	req.Header.Set("X-GitHub-Event", "push")
	req.Header.Set("X-GitHub-Delivery", "e2e-1")
	req.Header.Set("X-Hub-Signature-256", "sha256="+webhook.Sign(secret, body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("webhook answered %d", resp.StatusCode)
	}
	var run *apiv1.Run
	deadline := time.Now().Add(90 * time.Second)
	for {
		var runs []*apiv1.Run
		if err := c.do(ctx, http.MethodGet, "/api/v1/runs?pipeline=injection", "", nil, &runs); err != nil {
			t.Fatal(err)
		}
		if len(runs) == 1 && runs[0].Terminal() {
			run = runs[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("run did not finish: %+v", runs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	s := run.Steps[0]
	if run.Status != "succeeded" {
		t.Fatalf("run %s: %s / %s / %s", run.Status, s.Error, s.Logs.Stdout, s.Logs.Stderr)
	}
	want := branch + "\n" + message + "\nREADME\nclean\n"
	if s.Logs.Stdout != want {
		t.Errorf("stdout = %q, want %q (values must arrive verbatim, as data)", s.Logs.Stdout, want)
	}
}
