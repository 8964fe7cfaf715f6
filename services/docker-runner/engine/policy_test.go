package engine_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/services/docker-runner/dockertest"
	"github.com/ansflow/ansflow/services/docker-runner/engine"
	"github.com/ansflow/ansflow/services/docker-runner/policy"
)

// TestPolicyRefusals: with the default (strict) policy every way a step
// could reach the runner's host fails with an error naming the runner
// setting that would allow it, and no container is created.
func TestPolicyRefusals(t *testing.T) {
	strict := newHarness(t, engine.Config{})
	// a runner allowing /var/run as a host path, but not the Docker socket
	// under it; and one whose relaxations apply to other pipelines only
	varRun := newHarness(t, engine.Config{Policy: policy.Policy{AllowedHostPaths: []string{"/var/run"}}})
	scoped := newHarness(t, engine.Config{Policy: policy.Policy{AllowPrivileged: true, TrustedPipelines: []string{"infra-*"}}})
	escaped := filepath.Join("/tmp", fmt.Sprintf("ansflow-escaped-%d", time.Now().UnixNano()))
	t.Cleanup(func() { os.Remove(escaped) })

	for _, tc := range []struct {
		name  string
		h     *harness
		typ   string
		cmd   string
		cfg   map[string]any
		want  string
		check func(t *testing.T)
	}{
		{"host root mounted", strict, engine.TypeRun, "touch /host" + escaped, map[string]any{"volumes": []any{"/:/host"}},
			`volumes: host path "/" is not allowed by this runner's policy (allow it with --allow-host-path / or policy file allowed_host_paths)`,
			func(t *testing.T) {
				if _, err := os.Stat(escaped); !os.IsNotExist(err) {
					t.Fatalf("%s exists on the host (stat: %v)", escaped, err)
				}
			}},
		{"host path with ..", strict, engine.TypeRun, "true", map[string]any{"volumes": []any{"/tmp/../etc:/etc2:ro"}},
			`volumes: host path "/etc" is not allowed by this runner's policy (allow it with --allow-host-path /etc or policy file allowed_host_paths)`, nil},
		{"docker socket", strict, engine.TypeRun, "true", map[string]any{"volumes": []any{"/var/run/docker.sock:/var/run/docker.sock"}},
			`host path "/var/run/docker.sock" is not allowed by this runner's policy (allow it with --allow-host-path /var/run/docker.sock`, nil},
		{"docker socket under an allowed host path", varRun, engine.TypeRun, "true", map[string]any{"volumes": []any{"/var/run/docker.sock:/docker.sock"}},
			`volumes: the Docker socket "/var/run/docker.sock" is not allowed by this runner's policy (allow it with --allow-docker-socket or policy file allow_docker_socket)`, nil},
		{"directory holding the docker socket", varRun, engine.TypeRun, "true", map[string]any{"volumes": []any{"/var/run:/hostrun"}},
			`volumes: host path "/var/run", which holds the Docker socket /var/run/docker.sock, is not allowed by this runner's policy (allow it with --allow-docker-socket`, nil},
		{"privileged", strict, engine.TypeRun, "true", map[string]any{"privileged": true},
			`privileged: true is not allowed by this runner's policy (allow it with --allow-privileged or policy file allow_privileged)`, nil},
		{"privileged outside the trusted pipelines", scoped, engine.TypeRun, "true", map[string]any{"privileged": true},
			`privileged: true is allowed by this runner's policy only for pipelines matching trusted_pipelines [infra-*], not pipeline "engine-test"`, nil},
		{"host network", strict, engine.TypeRun, "true", map[string]any{"network": "host"},
			`network: "host" is not allowed by this runner's policy (allow it with --allow-host-network or policy file allow_host_network)`, nil},
		{"another container's network", strict, engine.TypeRun, "true", map[string]any{"network": "container:ansflow-other"},
			`network: "container:ansflow-other" is not allowed by this runner's policy (allow it with --allow-host-network`, nil},
		{"added capabilities", strict, engine.TypeRun, "true", map[string]any{"cap_add": []any{"SYS_ADMIN"}},
			`docker_config.cap_add: a container setting that grants host access is not allowed by this runner's policy (the runner never grants it on its own; a step that needs it must set privileged: true, which --allow-privileged or policy file allow_privileged allows)`, nil},
		{"devices", strict, engine.TypeRun, "true", map[string]any{"devices": []any{"/dev/sda"}}, `docker_config.devices: a container setting`, nil},
		{"host PID namespace", strict, engine.TypeRun, "true", map[string]any{"pid": "host"}, `docker_config.pid: a container setting`, nil},
		{"build on the host network", strict, engine.TypeBuild, "", map[string]any{"network": "host"},
			`network: "host" is not allowed by this runner's policy (allow it with --allow-host-network`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.h
			req := h.newRequest(tc.typ)
			req.Image = h.base
			if tc.typ == engine.TypeBuild {
				req.Image, req.Tag = "ansflow-e2e/policy", "refused"
				h.upload(req, writeTree(t, map[string]string{"Dockerfile": "FROM " + h.base + "\nRUN true\n"}))
			} else {
				req.Command = tc.cmd
			}
			req.DockerConfig = tc.cfg
			r := h.exec(req, time.Minute)
			wantStatus(t, r, event.StatusFailed)
			wantContains(t, "error", r.Error, tc.want)
			if r.Outputs["container_id"] != "" {
				t.Errorf("a container was created: %v", r.Outputs)
			}
			if n := len(dockertest.Containers(t, h.cli, engine.AttemptLabels(req.RunID, req.StepID, req.Attempt))); n != 0 {
				t.Errorf("%d containers of the refused step exist", n)
			}
			if tc.check != nil {
				tc.check(t)
			}
			t.Logf("error: %s", r.Error)
		})
	}
}

// TestPolicyRelaxed: what the runner's policy allows works: a bind mount of
// an allowed host path, and privileged mode (which the engine used to
// ignore) for a trusted pipeline.
func TestPolicyRelaxed(t *testing.T) {
	hostDir := t.TempDir()
	h := newHarness(t, engine.Config{Policy: policy.Policy{AllowedHostPaths: []string{hostDir}, AllowPrivileged: true,
		TrustedPipelines: []string{"engine-*"}}})

	req := h.newRequest(engine.TypeRun)
	req.Image = h.base
	req.Command = "echo from the container > /data/sub/written"
	req.DockerConfig = map[string]any{"volumes": []any{hostDir + "/sub:/data/sub"}}
	r := h.exec(req, time.Minute)
	wantStatus(t, r, event.StatusSucceeded)
	if b, err := os.ReadFile(filepath.Join(hostDir, "sub", "written")); err != nil || string(b) != "from the container\n" {
		t.Fatalf("file on the host: %q, %v", b, err)
	}

	// mounting a filesystem needs CAP_SYS_ADMIN, which only a privileged
	// container has
	mountCmd := "mount -t tmpfs none /mnt && echo mounted"
	req = h.newRequest(engine.TypeRun)
	req.Image, req.Command = h.base, mountCmd
	req.DockerConfig = map[string]any{"privileged": true, "remove": false}
	r = h.exec(req, time.Minute)
	id := r.Outputs["container_id"]
	if id == "" {
		t.Fatalf("no container created for the privileged step:\n%s", r)
	}
	info, err := h.cli.ContainerInspect(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if !info.HostConfig.Privileged {
		t.Fatalf("the container is not privileged")
	}
	if r.Status == event.StatusSucceeded {
		wantContains(t, "stdout", r.Stdout, "mounted")
	} else {
		// a Docker Engine that itself runs without every capability (as
		// in some CI sandboxes) cannot start privileged containers
		wantContains(t, "error", r.Error, "unable to apply caps")
		t.Logf("this Docker Engine cannot start privileged containers: %s", r.Error)
	}

	req = h.newRequest(engine.TypeRun)
	req.Image, req.Command = h.base, mountCmd
	r = h.exec(req, time.Minute)
	wantStatus(t, r, event.StatusFailed) // not privileged: mount is denied
}
