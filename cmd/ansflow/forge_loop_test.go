package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/services/docker-runner/dockertest"
	"github.com/ansflow/ansflow/services/pipeline/forge"
	"github.com/ansflow/ansflow/services/pipeline/notify"
	"github.com/ansflow/ansflow/services/pipeline/notify/notifytest"
)

// forgeLoop is one test's real Gitea, real embedded AnsFlow stack with the
// real Docker runner, and a work tree of the Gitea repository.
type forgeLoop struct {
	t      *testing.T
	gitea  *giteaServer
	st     *stack
	c      *client
	work   string
	repo   string
	image  string
	ctx    context.Context
	seenID map[string]bool
	mail   *notifytest.MailServer
}

// newForgeLoop starts Gitea and AnsFlow, creates the repository "app"
// with a webhook to AnsFlow's pipeline "app" (from_repository, taking its
// steps from .ansflow.yml), and clones it.
func newForgeLoop(t *testing.T, extraYAML string) *forgeLoop {
	t.Helper()
	g := startGitea(t)
	cli := dockertest.Client(t)
	f := &forgeLoop{t: t, gitea: g, image: dockertest.BusyboxImage(t, cli), repo: "app", work: t.TempDir(), seenID: map[string]bool{}}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	f.ctx = ctx
	const smtpPassword = "smtp-password-of-the-forge-loop"
	f.mail = notifytest.StartMail(t, "ansflow", smtpPassword, true)
	st, err := startStack(ctx, stackConfig{DataDir: t.TempDir(), NATSAddr: "off", DockerRunner: true, Pipeline: true, Audit: true,
		Concurrency: 2, CloneCA: g.CAFile,
		Forge: forge.Config{CAFile: g.CAFile},
		Notify: notify.Config{AllowedHosts: "loopback", SMTP: notify.SMTPConfig{Addr: f.mail.Addr, From: "ci@example.com", Username: "ansflow",
			PasswordSecret: "SMTP_PASSWORD", TLS: &tls.Config{RootCAs: f.mail.Roots}}}}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.stop)
	f.st, f.c = st, newClient(st.URL, st.Token)
	const hookSecret = "gitea-hook-secret-for-the-test"
	f.putSecret("GITEA_HOOK", hookSecret)
	f.putSecret("GITEA_TOKEN", g.Token)
	f.putSecret("SMTP_PASSWORD", smtpPassword)
	g.API(http.MethodPost, "/api/v1/user/repos", map[string]any{"name": f.repo, "default_branch": "main"}, nil)
	pipeline := `pipeline:
  name: app
  repository: ` + g.CloneURL(f.repo) + `
  from_repository: true
  triggers:
    - type: webhook
      provider: gitea
      secret: GITEA_HOOK
      events: [push, tag, pull_request]
      pull_request: {forks: run}
  status:
    steps: true
    token_secret: GITEA_TOKEN
  notify:
    - when: [failure]
      targets:
        - type: email
          to: [dev@example.com]
` + extraYAML
	if _, err := f.c.applyPipeline(ctx, "app.yaml", []byte(pipeline)); err != nil {
		t.Fatal(err)
	}
	g.API(http.MethodPost, "/api/v1/repos/"+g.User+"/"+f.repo+"/hooks", map[string]any{
		"type": "gitea", "active": true, "events": []string{"push", "create", "pull_request"},
		"config": map[string]string{"url": st.URL + "/webhooks/gitea/app", "content_type": "json", "secret": hookSecret},
	}, nil)
	g.Git(f.work, "init", "-q")
	return f
}

func (f *forgeLoop) putSecret(name, value string) {
	f.t.Helper()
	if err := f.c.do(f.ctx, http.MethodPut, "/api/v1/secrets/"+name, "text/plain", strings.NewReader(value), nil); err != nil {
		f.t.Fatal(err)
	}
}

// push commits files on branch and pushes it, returning the commit.
func (f *forgeLoop) push(branch string, files map[string]string) string {
	f.t.Helper()
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(f.work, name), []byte(text), 0o644); err != nil {
			f.t.Fatal(err)
		}
	}
	f.gitea.Git(f.work, "add", ".")
	f.gitea.Git(f.work, "commit", "-q", "-m", "change on "+branch)
	f.gitea.Git(f.work, "push", "-q", f.gitea.PushURL(f.repo), "HEAD:refs/heads/"+branch)
	return f.gitea.Git(f.work, "rev-parse", "HEAD")
}

// newRun waits for the first run of pipeline app not seen before that
// matches cond, then for its end, and returns it.
func (f *forgeLoop) newRun(what string, cond func(*apiv1.Run) bool) *apiv1.Run {
	f.t.Helper()
	var found *apiv1.Run
	waitFor(f.t, 3*time.Minute, what, func() (bool, string) {
		var runs []*apiv1.Run
		if err := f.c.do(f.ctx, http.MethodGet, "/api/v1/runs?pipeline=app", "", nil, &runs); err != nil {
			return false, err.Error()
		}
		for _, r := range runs {
			if !f.seenID[r.ID] && cond(r) {
				if !r.Terminal() {
					return false, "run " + r.ID + " is " + r.Status
				}
				found = r
				f.seenID[r.ID] = true
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d runs, none new that matches", len(runs))
	})
	return found
}

// giteaStatus is a commit status as Gitea's API lists it.
type giteaStatus struct {
	State     string `json:"status"`
	Context   string `json:"context"`
	TargetURL string `json:"target_url"`
}

// statuses waits until Gitea holds a status of context in state for the
// commit, and returns every status of the commit (Gitea keeps each one
// posted).
func (f *forgeLoop) statuses(commit, context, state string) []giteaStatus {
	f.t.Helper()
	var all []giteaStatus
	waitFor(f.t, time.Minute, fmt.Sprintf("gitea status %s=%s on %.8s", context, state, commit), func() (bool, string) {
		all = nil
		f.gitea.API(http.MethodGet, fmt.Sprintf("/api/v1/repos/%s/%s/commits/%s/statuses?limit=50", f.gitea.User, f.repo, commit), nil, &all)
		for _, s := range all {
			if s.Context == context && s.State == state {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%+v", all)
	})
	return all
}

// has reports whether statuses hold context in state.
func has(statuses []giteaStatus, context, state string) bool {
	for _, s := range statuses {
		if s.Context == context && s.State == state {
			return true
		}
	}
	return false
}

// appFiles is a repository whose .ansflow.yml builds the Dockerfile and
// runs the image with test as its command.
func (f *forgeLoop) appFiles(test string) map[string]string {
	return map[string]string{
		"Dockerfile": "FROM " + f.image + "\nCOPY app.txt /app.txt\n",
		"app.txt":    "hello from gitea\n",
		".ansflow.yml": `pipeline:
  name: app
  steps:
    - name: Build
      type: docker_build
      docker_image: gitea-app
      docker_tag: "{{build_number}}"
    - name: Test
      type: docker_run
      command: "` + test + `"
`,
	}
}

// TestGiteaForgeLoop drives the loop against a real Gitea: a push of a
// commit holding .ansflow.yml and a Dockerfile reaches AnsFlow as Gitea's
// own signed webhook; the run reads its steps from that commit, clones
// from Gitea over HTTPS (trusting Gitea's CA with --clone-ca), builds the
// image and runs it, and Gitea's API shows the commit's status go from
// pending to success, for the run and each step, linking to the run's
// page. A breaking commit fails, shows failure and sends one email over
// STARTTLS to a real SMTP server; a tag push and a pull request start runs
// of their own.
func TestGiteaForgeLoop(t *testing.T) {
	f := newForgeLoop(t, "")
	good := f.push("main", f.appFiles("cat /app.txt"))
	run := f.newRun("the run of the first push", func(r *apiv1.Run) bool { return r.Vars["git_commit"].Value == good })
	if run.Status != "succeeded" || run.Trigger.Kind != "webhook" || run.Trigger.Provider != "gitea" {
		t.Fatalf("push run: %s %q (trigger %+v), steps %s", run.Status, run.Error, run.Trigger, describeSteps(run))
	}
	if out := run.Steps[1].Logs.Stdout; out != "hello from gitea\n" {
		t.Errorf("the image built from Gitea's commit printed %q", out)
	}
	if run.Source == nil || run.Source.RepoURL != f.gitea.CloneURL(f.repo) || run.Source.Commit != good {
		t.Errorf("source %+v, want %s at %s", run.Source, f.gitea.CloneURL(f.repo), good)
	}
	f.statuses(good, "ansflow/app/Build", "success")
	f.statuses(good, "ansflow/app/Test", "success")
	st := f.statuses(good, "ansflow/app", "success")
	if !has(st, "ansflow/app", "pending") || !has(st, "ansflow/app/Test", "pending") {
		t.Errorf("statuses of the good commit: %+v; want pending before success", st)
	}
	for _, s := range st {
		if !strings.HasSuffix(s.TargetURL, "/runs/"+run.ID) {
			t.Errorf("status %s/%s links to %q, not the run's page", s.Context, s.State, s.TargetURL)
		}
	}

	bad := f.push("main", f.appFiles("exit 3"))
	run = f.newRun("the run of the breaking push", func(r *apiv1.Run) bool { return r.Vars["git_commit"].Value == bad })
	if run.Status != "failed" || run.Steps[1].ExitCode == nil || *run.Steps[1].ExitCode != 3 {
		t.Errorf("breaking push: %s, steps %s", run.Status, describeSteps(run))
	}
	f.statuses(bad, "ansflow/app/Build", "success")
	f.statuses(bad, "ansflow/app/Test", "failure")
	f.statuses(bad, "ansflow/app", "failure")
	waitFor(t, time.Minute, "the failure email", func() (bool, string) { return len(f.mail.Received()) > 0, "no mail yet" })
	m := f.mail.Received()[0]
	if !m.TLS || !m.Authenticated || strings.Join(m.To, ",") != "dev@example.com" ||
		!strings.Contains(m.Data, "app") || !strings.Contains(m.Data, "Test") || !strings.Contains(m.Data, "exit code 3") ||
		!strings.Contains(m.Data, "/runs/"+run.ID) || !strings.Contains(m.Data, bad[:12]) {
		t.Errorf("failure email (tls %v, auth %v, to %v):\n%s", m.TLS, m.Authenticated, m.To, m.Data)
	}

	f.gitea.Git(f.work, "tag", "v1.0.0", good)
	f.gitea.Git(f.work, "push", "-q", f.gitea.PushURL(f.repo), "refs/tags/v1.0.0")
	run = f.newRun("the run of the tag push", func(r *apiv1.Run) bool { return r.Vars["git_tag"].Value == "v1.0.0" })
	if run.Status != "succeeded" || run.Source.Commit != good || run.Trigger.Event != "tag" {
		t.Errorf("tag run: %s at %s (event %q), steps %s", run.Status, run.Source.Commit, run.Trigger.Event, describeSteps(run))
	}

	f.gitea.Git(f.work, "checkout", "-q", "-b", "feature", good)
	feature := f.push("feature", map[string]string{"app.txt": "from the pull request\n"})
	f.newRun("the run of the feature branch push", func(r *apiv1.Run) bool {
		return r.Vars["git_commit"].Value == feature && r.Trigger.Event == "push"
	})
	f.gitea.API(http.MethodPost, "/api/v1/repos/"+f.gitea.User+"/"+f.repo+"/pulls", map[string]any{"title": "Change the greeting", "head": "feature", "base": "main"}, nil)
	run = f.newRun("the run of the pull request", func(r *apiv1.Run) bool { return r.Trigger.Event == "pull_request" })
	if run.Status != "succeeded" || run.Source.Commit != feature || run.Steps[1].Logs.Stdout != "from the pull request\n" {
		t.Errorf("pull request run: %s at %s, steps %s", run.Status, run.Source.Commit, describeSteps(run))
	}
	f.statuses(feature, "ansflow/app", "success")
	if n := len(f.mail.Received()); n != 1 {
		t.Errorf("%d emails; want one, for the one failure", n)
	}
}

// describeSteps is a run's steps for a failure message.
func describeSteps(r *apiv1.Run) string {
	var b strings.Builder
	for _, s := range r.Steps {
		fmt.Fprintf(&b, "\n  %s: %s %q stdout %q stderr %q", s.Name, s.Status, s.Error, s.Logs.Stdout, s.Logs.Stderr)
	}
	return b.String()
}
