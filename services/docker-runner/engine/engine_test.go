package engine_test

import (
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/services/docker-runner/dockertest"
	"github.com/ansflow/ansflow/services/docker-runner/engine"
)

const (
	regUser = "ansflow-ci"
	regPass = "s3cret-Registry-Pa55"
)

// appSource is a build context exercising build args, labels, COPY and
// .dockerignore.
func appSource(t *testing.T, base string) string {
	return writeTree(t, map[string]string{
		"Dockerfile": "FROM " + base + "\n" +
			"ARG GREETING=hello\n" +
			"COPY . /app\n" +
			"RUN test ! -e /app/ignored.txt && echo \"built with $GREETING\"\n" +
			"CMD [\"/app/hello.sh\"]\n",
		"hello.sh":      "#!/bin/sh\necho hello from the image\n",
		"ignored.txt":   "must not reach the daemon\n",
		".dockerignore": "ignored.txt\n",
	})
}

// TestPipeline builds an image from an uploaded source, runs its tests in
// it, pushes it to an authenticated registry and pulls it back: the seed's
// pipeline, one step type after another.
func TestPipeline(t *testing.T) {
	reg := dockertest.StartRegistry(t, regUser, regPass)
	h := newHarness(t, engine.Config{Credentials: engine.Credentials{
		"local": {Server: reg.Host, Username: regUser, Password: regPass}}})
	tag := fmt.Sprint(time.Now().UnixNano())
	image := "ansflow-e2e/app"
	t.Cleanup(func() {
		dockertest.RemoveImage(t, h.cli, image+":"+tag)
		dockertest.RemoveImage(t, h.cli, reg.Host+"/"+image+":"+tag)
	})

	// docker_build
	build := h.newRequest(engine.TypeBuild)
	build.Image, build.Tag = image, tag
	build.DockerConfig = map[string]any{
		"build_args": map[string]any{"GREETING": "ansflow"},
		"labels":     map[string]any{"org.example.team": "ci"},
	}
	h.upload(build, appSource(t, h.base))
	r := h.exec(build, 2*time.Minute)
	wantStatus(t, r, event.StatusSucceeded)
	t.Logf("docker_build took %s", r.Took)
	if r.Outputs["image"] != image+":"+tag || !strings.HasPrefix(r.Outputs["image_id"], "sha256:") {
		t.Fatalf("build outputs %v", r.Outputs)
	}
	wantContains(t, "build log", r.Stdout, "built with ansflow", "Successfully built")
	imageID := r.Outputs["image_id"]
	img, err := h.cli.ImageInspect(context.Background(), image+":"+tag)
	if err != nil {
		t.Fatal(err)
	}
	if img.Config.Labels["org.example.team"] != "ci" {
		t.Errorf("image labels %v", img.Config.Labels)
	}

	// docker_run: string command through the shell, untrusted values only
	// as environment variables, stdout and stderr apart
	run := h.newRequest(engine.TypeRun)
	run.Image = r.Outputs["image"]
	// the form pkg/tmpl.RenderCommand gives {{git_branch}} from a webhook
	run.Command = `echo branch="${ANSFLOW_GIT_BRANCH}"; echo "to stderr" >&2; /app/hello.sh`
	run.Env = map[string]string{"ANSFLOW_GIT_BRANCH": `main"; touch /tmp/pwned; echo "$(id)`}
	r = h.exec(run, time.Minute)
	wantStatus(t, r, event.StatusSucceeded)
	t.Logf("docker_run took %s", r.Took)
	wantContains(t, "stdout", r.Stdout, "branch=main\"; touch /tmp/pwned; echo \"$(id)\n", "hello from the image\n")
	if strings.Contains(r.Stdout, "to stderr") || !strings.Contains(r.Stderr, "to stderr") {
		t.Errorf("stdout and stderr mixed:\n%s", r)
	}
	if r.Outputs["exit_code"] != "0" || r.Outputs["container_id"] == "" || r.ExitCode == nil || *r.ExitCode != 0 {
		t.Errorf("run outputs %v exit %v", r.Outputs, r.ExitCode)
	}
	h.wantNoContainers(t, run)

	// docker_push to the catalogue registry "local"
	push := h.newRequest(engine.TypePush)
	push.Image, push.Tag = image, tag
	push.Registry = &event.Registry{Name: "local", URL: reg.URL()}
	r = h.exec(push, time.Minute)
	wantStatus(t, r, event.StatusSucceeded)
	t.Logf("docker_push took %s", r.Took)
	remote := reg.Host + "/" + image + ":" + tag
	if r.Outputs["image"] != remote || !strings.HasPrefix(r.Outputs["digest"], "sha256:") {
		t.Fatalf("push outputs %v", r.Outputs)
	}
	digest := r.Outputs["digest"]
	// the registry has it
	hreq, _ := http.NewRequest(http.MethodHead, reg.URL()+"/v2/"+image+"/manifests/"+tag, nil)
	hreq.SetBasicAuth(regUser, regPass)
	hreq.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json")
	resp, err := http.DefaultClient.Do(hreq)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != digest {
		t.Fatalf("registry answers %s, digest %q, want %s", resp.Status, resp.Header.Get("Docker-Content-Digest"), digest)
	}

	// docker_pull it back, after removing the local copies
	dockertest.RemoveImage(t, h.cli, remote)
	dockertest.RemoveImage(t, h.cli, image+":"+tag)
	pull := h.newRequest(engine.TypePull)
	pull.Image, pull.Tag = image, tag
	pull.Registry = &event.Registry{Name: "local", URL: reg.URL()}
	r = h.exec(pull, time.Minute)
	wantStatus(t, r, event.StatusSucceeded)
	t.Logf("docker_pull took %s", r.Took)
	if r.Outputs["image"] != remote || r.Outputs["image_id"] != imageID || r.Outputs["digest"] != digest {
		t.Fatalf("pull outputs %v, want image %s id %s digest %s", r.Outputs, remote, imageID, digest)
	}
	for _, s := range []string{r.Stdout, r.Stderr, r.Error} {
		if strings.Contains(s, regPass) {
			t.Fatalf("password in step output:\n%s", r)
		}
	}
}

// TestBuildFromGit builds from the repository and commit of a trigger.
func TestBuildFromGit(t *testing.T) {
	h := newHarness(t, engine.Config{})
	dir := writeTree(t, map[string]string{
		"app/Dockerfile":  "FROM " + h.base + "\nCOPY version.txt /version.txt\nRUN cat /version.txt\n",
		"app/version.txt": "v1\n",
	})
	git := func(args ...string) string {
		cmd := exec.Command("git", append([]string{"-C", dir, "-c", "user.name=t", "-c", "user.email=t@example.com"}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v: %s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	git("init", "-q")
	git("add", ".")
	git("commit", "-q", "-m", "v1")
	commit := git("rev-parse", "HEAD")
	if err := exec.Command("sh", "-c", "echo v2 > "+dir+"/app/version.txt").Run(); err != nil {
		t.Fatal(err)
	}
	git("commit", "-q", "-am", "v2")

	req := h.newRequest(engine.TypeBuild)
	req.Image, req.Tag = "ansflow-e2e/git", fmt.Sprint(time.Now().UnixNano())
	t.Cleanup(func() { dockertest.RemoveImage(t, h.cli, req.Image+":"+req.Tag) })
	req.Source = &event.Source{RepoURL: "file://" + dir, Commit: commit}
	req.DockerConfig = map[string]any{"context": "app"}
	r := h.exec(req, 2*time.Minute)
	wantStatus(t, r, event.StatusSucceeded)
	wantContains(t, "build log", r.Stdout, "v1\n")
	if strings.Contains(r.Stdout, "v2") {
		t.Errorf("built the branch head, not commit %s:\n%s", commit, r.Stdout)
	}
}

// TestBuildOptions covers target, dockerfile outside the context, no_cache
// and platform.
func TestBuildOptions(t *testing.T) {
	h := newHarness(t, engine.Config{})
	dir := writeTree(t, map[string]string{
		"docker/Multi.Dockerfile": "FROM " + h.base + " AS first\nRUN echo stage-one\n" +
			"FROM first AS second\nRUN echo stage-two\n",
		"ctx/file.txt": "x\n",
	})
	req := h.newRequest(engine.TypeBuild)
	req.Image, req.Tag = "ansflow-e2e/options", fmt.Sprint(time.Now().UnixNano())
	t.Cleanup(func() { dockertest.RemoveImage(t, h.cli, req.Image+":"+req.Tag) })
	h.upload(req, dir)
	req.DockerConfig = map[string]any{"context": "ctx", "dockerfile": "docker/Multi.Dockerfile",
		"target": "first", "no_cache": true, "platform": "linux/amd64", "cache_from": []any{h.base}}
	r := h.exec(req, 2*time.Minute)
	wantStatus(t, r, event.StatusSucceeded)
	wantContains(t, "build log", r.Stdout, "stage-one")
	if strings.Contains(r.Stdout, "stage-two") {
		t.Errorf("target first built stage two:\n%s", r.Stdout)
	}
}

// TestRunOptions covers list commands, entrypoint, user, workdir, network,
// mount_source, volumes and remove.
func TestRunOptions(t *testing.T) {
	h := newHarness(t, engine.Config{})
	src := writeTree(t, map[string]string{"input.txt": "from the source\n", "sub/data.txt": "sub data\n"})

	t.Run("mount_source, user, volumes, network", func(t *testing.T) {
		req := h.newRequest(engine.TypeRun)
		req.Image = h.base
		h.upload(req, src)
		req.Command = "pwd; cat input.txt; id -u; cat /mnt/sub/data.txt; ls /sys/class/net; echo $FROM_STEP $FROM_PIPELINE"
		req.DockerConfig = map[string]any{"mount_source": true, "user": "65534", "network": "none",
			"volumes": []any{"./sub:/mnt/sub:ro"}, "environment": map[string]any{"FROM_STEP": "step", "FROM_PIPELINE": "overridden"}}
		req.Env = map[string]string{"FROM_PIPELINE": "pipeline"}
		r := h.exec(req, time.Minute)
		wantStatus(t, r, event.StatusSucceeded)
		if r.Stdout != "/workspace\nfrom the source\n65534\nsub data\nlo\nstep pipeline\n" {
			t.Errorf("stdout:\n%s", r)
		}
	})
	t.Run("argv, entrypoint, workdir", func(t *testing.T) {
		req := h.newRequest(engine.TypeRun)
		req.Image = h.base
		req.Command = []any{"a b", "$HOME", ";"}
		req.DockerConfig = map[string]any{"entrypoint": []any{"/bin/echo", "ep"}, "workdir": "/tmp"}
		r := h.exec(req, time.Minute)
		wantStatus(t, r, event.StatusSucceeded)
		if r.Stdout != "ep a b $HOME ;\n" {
			t.Errorf("stdout %q", r.Stdout)
		}
	})
	t.Run("seed format: command in docker_config, untrusted values in argv", func(t *testing.T) {
		// An untrusted value reaches an argv only as an environment
		// reference: a shell in the argv expands it as data, and without a
		// shell it stays a reference. Substituting it into the argv would let
		// ["sh", "-c", "echo {{git_branch}}"] run a branch name as code.
		evil := `x"; touch /tmp/pwned; echo "$(id)`
		req := h.newRequest(engine.TypeRun)
		req.Image = h.base
		req.DockerConfig = map[string]any{"command": []any{"sh", "-c", `echo "${ANSFLOW_GIT_BRANCH}"; test ! -e /tmp/pwned && echo clean`}, "remove": true}
		req.Env = map[string]string{"ANSFLOW_GIT_BRANCH": evil}
		r := h.exec(req, time.Minute)
		wantStatus(t, r, event.StatusSucceeded)
		if r.Stdout != evil+"\nclean\n" {
			t.Errorf("sh -c argv: stdout %q", r.Stdout)
		}
		req = h.newRequest(engine.TypeRun)
		req.Image = h.base
		req.DockerConfig = map[string]any{"command": []any{"echo", `--branch="${ANSFLOW_GIT_BRANCH}"`}, "remove": true}
		req.Env = map[string]string{"ANSFLOW_GIT_BRANCH": evil}
		r = h.exec(req, time.Minute)
		wantStatus(t, r, event.StatusSucceeded)
		if r.Stdout != `--branch="${ANSFLOW_GIT_BRANCH}"`+"\n" {
			t.Errorf("plain argv: stdout %q", r.Stdout)
		}
	})
	t.Run("remove false keeps the container", func(t *testing.T) {
		req := h.newRequest(engine.TypeRun)
		req.Image = h.base
		req.Command = "echo kept"
		req.DockerConfig = map[string]any{"remove": false}
		r := h.exec(req, time.Minute)
		wantStatus(t, r, event.StatusSucceeded)
		list := dockertest.Containers(t, h.cli, engine.AttemptLabels(req.RunID, req.StepID, req.Attempt))
		if len(list) != 1 || list[0].ID != r.Outputs["container_id"] || list[0].State != "exited" {
			t.Errorf("containers %+v, want the exited %s", list, r.Outputs["container_id"])
		}
	})
}

// TestFailures: every failure is a failed step with a clear error.
func TestFailures(t *testing.T) {
	reg := dockertest.StartRegistry(t, regUser, regPass)
	// keyed by catalogue name; the registry reached as localhost:PORT is
	// another host, for which the runner holds no credential
	h := newHarness(t, engine.Config{Credentials: engine.Credentials{
		"local":    {Server: reg.Host, Username: regUser, Password: regPass},
		"wrong-pw": {Server: reg.Host, Username: regUser, Password: "Wrong-Password-123"},
	}})
	_, port, _ := strings.Cut(reg.Host, ":")
	otherName := "localhost:" + port
	tag := fmt.Sprint(time.Now().UnixNano())
	for _, tc := range []struct {
		name  string
		setup func(*event.StepRequested)
		want  []string // in the error
		exit  int      // recorded exit code, -1 for none
	}{
		{"bad Dockerfile", func(r *event.StepRequested) {
			r.Type, r.Image, r.Tag = engine.TypeBuild, "ansflow-e2e/bad", tag
			h.upload(r, writeTree(t, map[string]string{"Dockerfile": "FROM " + h.base + "\nFROMM nothing\n"}))
		}, []string{"docker_build ansflow-e2e/bad:" + tag, "unknown instruction"}, -1},
		{"failing RUN", func(r *event.StepRequested) {
			r.Type, r.Image, r.Tag = engine.TypeBuild, "ansflow-e2e/bad", tag
			h.upload(r, writeTree(t, map[string]string{"Dockerfile": "FROM " + h.base + "\nRUN echo about to fail && exit 7\n"}))
		}, []string{"returned a non-zero code: 7"}, -1},
		{"missing base image", func(r *event.StepRequested) {
			r.Type, r.Image, r.Tag = engine.TypeBuild, "ansflow-e2e/bad", tag
			h.upload(r, writeTree(t, map[string]string{"Dockerfile": "FROM ansflow-test/no-such-base:1\n"}))
		}, []string{"ansflow-test/no-such-base"}, -1},
		{"missing Dockerfile", func(r *event.StepRequested) {
			r.Type, r.Image, r.Tag = engine.TypeBuild, "ansflow-e2e/bad", tag
			h.upload(r, writeTree(t, map[string]string{"README": "no Dockerfile here\n"}))
		}, []string{`dockerfile "Dockerfile" not found`}, -1},
		{"context outside the source", func(r *event.StepRequested) {
			r.Type, r.Image, r.Tag = engine.TypeBuild, "ansflow-e2e/bad", tag
			h.upload(r, writeTree(t, map[string]string{"Dockerfile": "FROM scratch\n"}))
			r.DockerConfig["context"] = "../.."
		}, []string{"leaves the run's source"}, -1},
		{"non-zero exit", func(r *event.StepRequested) {
			r.Type, r.Image, r.Command = engine.TypeRun, h.base, "echo failing; exit 3"
		}, []string{"exit code 3"}, 3},
		{"command not found", func(r *event.StepRequested) {
			r.Type, r.Image, r.Command = engine.TypeRun, h.base, []any{"/no/such/binary"}
		}, []string{"exit code 127", "/no/such/binary"}, 127},
		{"run of a missing image", func(r *event.StepRequested) {
			r.Type, r.Image = engine.TypeRun, "127.0.0.1:1/ansflow/absent"
		}, []string{"registry unreachable", "127.0.0.1:1"}, -1},
		{"run without image", func(r *event.StepRequested) {
			r.Type = engine.TypeRun
		}, []string{"names no docker_image"}, -1},
		{"wrong registry password", func(r *event.StepRequested) {
			r.Type, r.Image, r.Tag = engine.TypePush, h.base, ""
			r.Registry = &event.Registry{Name: "wrong-pw", URL: reg.URL()}
		}, []string{"authentication failed for registry wrong-pw (" + reg.Host + ")"}, -1},
		{"registry without credentials", func(r *event.StepRequested) {
			r.Type, r.Image = engine.TypePush, h.base
			r.DockerConfig["registry_url"] = "http://" + otherName + "/anonymous"
		}, []string{"authentication failed for registry " + otherName, "holds no credentials"}, -1},
		{"wrong password on pull", func(r *event.StepRequested) {
			r.Type, r.Image = engine.TypePull, "ansflow-test/busybox"
			r.Registry = &event.Registry{Name: "wrong-pw", URL: reg.Host}
		}, []string{"authentication failed for registry wrong-pw (" + reg.Host + ")"}, -1},
		{"unreachable registry", func(r *event.StepRequested) {
			r.Type, r.Image = engine.TypePush, h.base
			r.Registry = &event.Registry{Name: "gone", URL: "http://127.0.0.1:1"}
		}, []string{"registry unreachable: gone (127.0.0.1:1)"}, -1},
		{"push of a missing image", func(r *event.StepRequested) {
			r.Type, r.Image = engine.TypePush, "ansflow-e2e/never-built"
			r.Registry = &event.Registry{Name: "local", URL: reg.URL()}
		}, []string{"ansflow-e2e/never-built:latest is not on this runner's Docker Engine"}, -1},
		{"bad docker_config", func(r *event.StepRequested) {
			r.Type, r.Image = engine.TypeRun, h.base
			r.DockerConfig["remove"] = "sometimes"
		}, []string{"docker_config.remove"}, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := h.newRequest(engine.TypeRun)
			tc.setup(req)
			t.Cleanup(func() { dockertest.RemoveImage(t, h.cli, reg.Host+"/ansflow-test/busybox:latest") })
			r := h.exec(req, 2*time.Minute)
			wantStatus(t, r, event.StatusFailed)
			wantContains(t, "error", r.Error, tc.want...)
			switch {
			case tc.exit < 0 && r.ExitCode != nil:
				t.Errorf("exit code %d recorded, want none", *r.ExitCode)
			case tc.exit >= 0 && (r.ExitCode == nil || *r.ExitCode != tc.exit):
				t.Errorf("exit code %v, want %d", r.ExitCode, tc.exit)
			}
			for _, s := range []string{r.Error, r.Stdout, r.Stderr} {
				if strings.Contains(s, regPass) || strings.Contains(s, "Wrong-Password-123") {
					t.Errorf("a password leaked:\n%s", r)
				}
			}
			h.wantNoContainers(t, req)
			t.Logf("error: %s (%s)", r.Error, r.Took)
		})
	}
}

// TestSecretMasking: a registry password the runner holds is masked in a
// step's output and outputs.
func TestSecretMasking(t *testing.T) {
	h := newHarness(t, engine.Config{Credentials: engine.Credentials{
		"local": {Server: "127.0.0.1:5999", Username: regUser, Password: regPass}}})
	req := h.newRequest(engine.TypeRun)
	req.Image = h.base
	req.Command = `echo "password is $PW"; echo "$PW" >&2; exit 4`
	req.Env = map[string]string{"PW": regPass}
	r := h.exec(req, time.Minute)
	wantStatus(t, r, event.StatusFailed)
	if r.Stdout != "password is ****\n" || r.Stderr != "****\n" || !strings.Contains(r.StdoutTail, "****") {
		t.Errorf("not masked:\n%s", r)
	}
	if strings.Contains(r.String(), regPass) {
		t.Errorf("password leaked:\n%s", r)
	}
}

// TestCancellation: a step.cancel stops a sleeping container at once and
// removes it.
func TestCancellation(t *testing.T) {
	h := newHarness(t, engine.Config{})
	req := h.newRequest(engine.TypeRun)
	req.Image = h.base
	req.Command = "echo started; sleep 300"
	h.publish(req)
	id := h.waitRunning(req, 30*time.Second)
	start := time.Now()
	h.cancelStep(req, "cancelled by the test")
	r := h.await(req, 30*time.Second)
	took := time.Since(start)
	wantStatus(t, r, event.StatusCancelled)
	wantContains(t, "error", r.Error, "cancelled by the test")
	if took > 10*time.Second {
		t.Errorf("cancellation took %s", took)
	}
	if n := len(dockertest.Containers(t, h.cli, engine.AttemptLabels(req.RunID, req.StepID, req.Attempt))); n != 0 {
		t.Errorf("container %s still exists after cancellation", id)
	}
	t.Logf("cancelled in %s", took)
}

// TestTimeout: a step timeout stops a sleeping container promptly.
func TestTimeout(t *testing.T) {
	h := newHarness(t, engine.Config{})
	req := h.newRequest(engine.TypeRun)
	req.Image = h.base
	req.Command = "sleep 300"
	req.TimeoutSeconds = 2
	r := h.exec(req, 30*time.Second)
	wantStatus(t, r, event.StatusFailed)
	wantContains(t, "error", r.Error, "timed out after 2s")
	if r.Took > 12*time.Second {
		t.Errorf("a 2s timeout took %s", r.Took)
	}
	if n := len(dockertest.Containers(t, h.cli, engine.AttemptLabels(req.RunID, req.StepID, req.Attempt))); n != 0 {
		t.Errorf("%d containers left after the timeout", n)
	}
	t.Logf("timed out step finished after %s", r.Took)
}

// TestBuildCancellation: cancelling a build aborts it, and the daemon
// removes the build's container.
func TestBuildCancellation(t *testing.T) {
	h := newHarness(t, engine.Config{})
	marker := fmt.Sprintf("ansflow-build-cancel-%d", time.Now().UnixNano())
	req := h.newRequest(engine.TypeBuild)
	req.Image, req.Tag = "ansflow-e2e/cancelled", "x"
	h.upload(req, writeTree(t, map[string]string{"Dockerfile": "FROM " + h.base + "\nRUN sleep 300 # " + marker + "\n"}))
	buildContainers := func() []container.Summary {
		var out []container.Summary
		for _, c := range dockertest.Containers(t, h.cli, nil) {
			if strings.Contains(c.Command, marker) {
				out = append(out, c)
			}
		}
		return out
	}
	h.publish(req)
	dockertest.Eventually(t, time.Minute, func() bool { return len(buildContainers()) > 0 }, "the build's RUN never started")
	start := time.Now()
	h.cancelStep(req, "build cancelled by the test")
	r := h.await(req, 30*time.Second)
	wantStatus(t, r, event.StatusCancelled)
	dockertest.Eventually(t, 15*time.Second, func() bool { return len(buildContainers()) == 0 }, "the build's container survived")
	t.Logf("build cancelled and its container gone after %s", time.Since(start))
}

// TestReap removes exactly the containers of one attempt and is idempotent.
func TestReap(t *testing.T) {
	h := newHarness(t, engine.Config{})
	ctx := context.Background()
	mk := func(attempt int) string {
		c, err := h.cli.ContainerCreate(ctx, &container.Config{Image: h.base, Cmd: []string{"sleep", "300"},
			Labels: engine.AttemptLabels("reap-run", "s", attempt)}, nil, nil, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dockertest.RemoveContainers(t, h.cli, engine.AttemptLabels("reap-run", "s", attempt)) })
		if err := h.cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
			t.Fatal(err)
		}
		return c.ID
	}
	mk(1)
	keep := mk(2)
	for i := 0; i < 2; i++ {
		if err := h.eng.Reap(ctx, &event.StepRequested{RunID: "reap-run", StepID: "s", Attempt: 2}, 1); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(dockertest.Containers(t, h.cli, engine.AttemptLabels("reap-run", "s", 1))); n != 0 {
		t.Errorf("%d containers of attempt 1 left", n)
	}
	left := dockertest.Containers(t, h.cli, engine.AttemptLabels("reap-run", "s", 2))
	if len(left) != 1 || left[0].ID != keep {
		t.Errorf("attempt 2's container was touched: %+v", left)
	}
}
