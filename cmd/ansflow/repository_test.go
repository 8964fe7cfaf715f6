package main

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/apiv1"
)

// bareRepo is a real bare repository on disk that a test commits to
// through a work tree.
type bareRepo struct {
	t          *testing.T
	work, bare string
}

func newBareRepo(t *testing.T) *bareRepo {
	t.Helper()
	g := &bareRepo{t: t, work: t.TempDir(), bare: filepath.Join(t.TempDir(), "app.git")}
	g.git(g.work, "init", "-q", "-b", "main")
	return g
}

func (g *bareRepo) git(dir string, args ...string) string {
	g.t.Helper()
	out, err := exec.Command("git", append([]string{"-C", dir, "-c", "user.name=t", "-c", "user.email=t@example.com"}, args...)...).CombinedOutput()
	if err != nil {
		g.t.Fatalf("git %v: %v: %s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// commit writes files on branch (created from the current one when new),
// commits, pushes, and returns the commit.
func (g *bareRepo) commit(branch string, files map[string]string) string {
	g.t.Helper()
	switch {
	case g.git(g.work, "symbolic-ref", "--short", "HEAD") == branch:
	case g.git(g.work, "branch", "--list", branch) == "":
		g.git(g.work, "checkout", "-q", "-b", branch)
	default:
		g.git(g.work, "checkout", "-q", branch)
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(g.work, name), []byte(text), 0o644); err != nil {
			g.t.Fatal(err)
		}
	}
	g.git(g.work, "add", ".")
	g.git(g.work, "commit", "-q", "-m", "change")
	if _, err := os.Stat(g.bare); err != nil {
		g.git(g.work, "clone", "-q", "--bare", ".", g.bare)
		g.git(g.work, "remote", "add", "origin", g.bare)
	}
	g.git(g.work, "push", "-q", "origin", branch)
	return g.git(g.work, "rev-parse", "HEAD")
}

// TestRunsTakeTheirSourceAndStepsFromTheRepository: a pipeline naming a
// repository gives runs started without one (the API, the CLI, cron) that
// repository, pinned to the commit their branch or tag points at; with
// from_repository its steps come from .ansflow.yml at that commit, and an
// invalid or missing file fails the run at once with the file's
// file:line: field: message errors; an unknown branch is a 400.
func TestRunsTakeTheirSourceAndStepsFromTheRepository(t *testing.T) {
	useScriptedEngines(t)
	repo := newBareRepo(t)
	good := repo.commit("main", map[string]string{".ansflow.yml": `pipeline:
  name: ignored-the-stored-name-wins
  variables:
    who: repo
  steps:
    - name: From the repository
      type: docker_run
      command: "echo hello {{who}}; output where=repo"
`, "app.txt": "v1\n"})
	repo.git(repo.work, "tag", "v1")
	repo.git(repo.work, "push", "-q", "origin", "v1")
	broken := repo.commit("broken", map[string]string{".ansflow.yml": "pipeline:\n  name: x\n  steps:\n    - name: a\n      type: docker_bild\n"})
	repo.commit("main", map[string]string{"app.txt": "v2\n"})
	head := repo.git(repo.work, "rev-parse", "main")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := startStack(ctx, stackConfig{DataDir: t.TempDir(), NATSAddr: "off", DockerRunner: true, Pipeline: true, Concurrency: 2, AllowLocalClone: true}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer st.stop()
	c := newClient(st.URL, st.Token)
	url := "file://" + repo.bare
	apply := func(yaml string) {
		t.Helper()
		if _, err := c.applyPipeline(ctx, "p.yaml", []byte(yaml)); err != nil {
			t.Fatal(err)
		}
	}
	apply("pipeline:\n  name: from-repo\n  repository: " + url + "\n  from_repository: true\n")
	apply("pipeline:\n  name: stored\n  repository: " + url + "\n  steps:\n    - name: Show\n      type: docker_run\n      command: echo {{git_commit}}\n")

	// A branch: the run is pinned to its head, with the file's steps.
	run, err := c.trigger(ctx, "from-repo", apiv1.TriggerBody{Branch: "main"})
	if err != nil {
		t.Fatal(err)
	}
	waitRun(t, c, run.ID)
	run, _ = c.getRun(ctx, run.ID)
	if run.Status != "succeeded" || len(run.Steps) != 1 || run.Steps[0].Name != "From the repository" || run.Steps[0].Outputs["where"] != "repo" {
		t.Fatalf("run from the repository's file: %s %q, steps %+v", run.Status, run.Error, run.Steps)
	}
	if run.Source == nil || run.Source.RepoURL != url || run.Source.Commit != head || run.Vars["git_commit"].Value != head {
		t.Errorf("source %+v, git_commit %q; want %s at %s", run.Source, run.Vars["git_commit"].Value, url, head)
	}
	if run.Pipeline != "from-repo" || !strings.Contains(run.Steps[0].Logs.Stdout, "hello repo") {
		t.Errorf("pipeline %q, stdout %q", run.Pipeline, run.Steps[0].Logs.Stdout)
	}
	// The run read back from the store (not the orchestrator's cached
	// copy) keeps the spec it executed, the file's, not the stored
	// pipeline's, which has no steps.
	if run.Spec == nil || len(run.Spec.Steps) != 1 || run.Spec.Steps[0].Name != "From the repository" {
		t.Errorf("the stored run's spec is not the file's: %+v", run.Spec)
	}

	// Re-running it runs the file's steps again (the re-run starts from
	// the stored run, so it needs the stored run's spec).
	var re apiv1.Run
	if err := c.do(ctx, http.MethodPost, "/api/v1/runs/"+run.ID+"/rerun", "application/json", strings.NewReader(`{"all":true}`), &re); err != nil {
		t.Fatalf("rerun all: %v", err)
	}
	waitRun(t, c, re.ID)
	if got, _ := c.getRun(ctx, re.ID); got.Status != "succeeded" || len(got.Steps) != 1 || got.Steps[0].Outputs["where"] != "repo" {
		t.Errorf("re-run of the file's steps: %s %q, steps %+v", got.Status, got.Error, got.Steps)
	}

	// An invalid file fails the run before any step, with its errors.
	run, err = c.trigger(ctx, "from-repo", apiv1.TriggerBody{Branch: "broken"})
	if err != nil {
		t.Fatal(err)
	}
	if run.Status != "failed" || !strings.Contains(run.Error, `.ansflow.yml:5: pipeline.steps[0].type: unknown step type "docker_bild"`) || run.Source.Commit != broken {
		t.Errorf("broken file: %s %q at %s", run.Status, run.Error, run.Source.Commit)
	}
	code, out := capture(t, "runs", "get", run.ID, "--server", st.URL, "--token", st.Token)
	if !strings.Contains(out, "docker_bild") {
		t.Errorf("runs get (exit %d) does not show the file's error:\n%s", code, out)
	}
	// Such a run has no step to run again: a re-run is refused, not a
	// green run of nothing.
	err = c.do(ctx, http.MethodPost, "/api/v1/runs/"+run.ID+"/rerun", "application/json", strings.NewReader(`{"all":true}`), nil)
	if err == nil || !strings.Contains(err.Error(), "failed before any step") || !strings.Contains(err.Error(), "400") {
		t.Errorf("rerun of a run that failed before any step: %v, want a 400 saying why", err)
	}

	// A tag of a stored pipeline: its commit, not the branch head.
	run, err = c.trigger(ctx, "stored", apiv1.TriggerBody{Tag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	waitRun(t, c, run.ID)
	run, _ = c.getRun(ctx, run.ID)
	if run.Status != "succeeded" || run.Source == nil || run.Source.Commit != good || !strings.Contains(run.Steps[0].Logs.Stdout, good) {
		t.Errorf("tag v1: %s, source %+v, stdout %q; want commit %s", run.Status, run.Source, run.Steps[0].Logs.Stdout, good)
	}

	// No branch: the default branch's head; an unknown one: 400.
	run, err = c.trigger(ctx, "stored", apiv1.TriggerBody{})
	if err != nil || run.Source == nil || run.Source.Commit != head {
		t.Errorf("default branch: %+v, %v; want %s", run.Source, err, head)
	}
	if _, err := c.trigger(ctx, "stored", apiv1.TriggerBody{Branch: "nope"}); err == nil || !strings.Contains(err.Error(), "no such branch or tag") || !strings.Contains(err.Error(), "400") {
		t.Errorf("unknown branch: %v", err)
	}
}
