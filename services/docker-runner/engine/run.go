package engine

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/pkg/stdcopy"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/spec/steps"
	"github.com/ansflow/ansflow/services/docker-runner/policy"
)

// shell runs a command given as a string.
var shell = []string{"/bin/sh", "-c"}

// run executes docker_run: create a labelled container, attach to its
// output, start it, wait for it, and stop it when ctx ends.
//
// The container takes the calls the docker CLI makes for `docker run --rm`
// (create, attach, wait, start), with the daemon removing it on exit; an
// image missing from the engine is pulled first, as the CLI does. Unlike the
// CLI, the step ends at the container's exit rather than after its removal,
// which the daemon completes in the background.
func (e *Engine) run(ctx context.Context, req *event.StepRequested, t stepIO, creds Credentials) (map[string]string, error) {
	img, named, err := runImage(req)
	if err != nil {
		return nil, fmt.Errorf("docker_run: %w", err)
	}
	cfg, hc, err := e.containerSpec(ctx, req, t, img)
	if err != nil {
		return nil, fmt.Errorf("docker_run %s: %w", img, err)
	}
	remove := hc.AutoRemove

	// Creation is not cancelled half-way: a create whose client gave up can
	// still complete in the daemon after a reap looked for it, leaving a
	// container behind. It is quick; a cancellation is handled once the
	// engine knows the container's id.
	create := func() (container.CreateResponse, error) {
		cctx, cancel := e.cleanupContext(ctx)
		defer cancel()
		return e.cli.ContainerCreate(cctx, cfg, hc, nil, nil, "")
	}
	created, err := create()
	if cerrdefs.IsNotFound(err) && named != nil && ctx.Err() == nil {
		if _, perr := e.pullImage(ctx, named, "", t, creds); perr != nil {
			return nil, fmt.Errorf("docker_run: image %s is not on this runner's Docker Engine, and pulling it failed: %w", img, perr)
		}
		created, err = create()
	}
	if err != nil {
		if ctx.Err() != nil {
			e.reapAfter(ctx, req)
			return nil, stopped(ctx, "docker_run "+img)
		}
		return nil, fmt.Errorf("docker_run %s: create container: %w", img, err)
	}
	id := created.ID
	outputs := map[string]string{"container_id": id}
	for _, w := range created.Warnings {
		fmt.Fprintf(t.Stderr(), "docker: %s\n", w)
	}
	// abort stops the container after a failure or the end of ctx.
	abort := func() {
		cctx, cancel := e.cleanupContext(ctx)
		defer cancel()
		var err error
		if remove {
			err = e.removeContainer(cctx, id)
		} else if err = e.cli.ContainerKill(cctx, id, "KILL"); cerrdefs.IsNotFound(err) || cerrdefs.IsConflict(err) {
			err = nil // gone or not running
		}
		if err != nil {
			e.log.Warn("stop container", zap.String("container", shortID(id)), zap.Error(err))
		}
	}

	if ctx.Err() != nil {
		abort()
		return outputs, stopped(ctx, "docker_run "+img)
	}
	att, err := e.cli.ContainerAttach(ctx, id, container.AttachOptions{Stream: true, Stdout: true, Stderr: true})
	if err != nil {
		abort()
		if ctx.Err() != nil {
			return outputs, stopped(ctx, "docker_run "+img)
		}
		return outputs, fmt.Errorf("docker_run %s: attach to container %s: %w", img, shortID(id), err)
	}
	defer att.Close()
	// Wait for the exit, not the removal: with remove the daemon deletes the
	// container on its own, and the step's result is known ~100ms sooner.
	waitC, waitErrC := e.cli.ContainerWait(ctx, id, container.WaitConditionNextExit)
	copied := make(chan error, 1)
	go func() {
		_, err := stdcopy.StdCopy(t.Stdout(), t.Stderr(), att.Reader)
		copied <- err
	}()
	if err := e.cli.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
		abort()
		if ctx.Err() != nil {
			return outputs, stopped(ctx, "docker_run "+img)
		}
		if code := startFailureCode(err); code != 0 {
			outputs["exit_code"] = strconv.Itoa(code)
			return outputs, &runner.ExitError{Code: code, Msg: fmt.Sprintf("docker_run %s: cannot start the command: %v", img, err)}
		}
		return outputs, fmt.Errorf("docker_run %s: start container %s: %w", img, shortID(id), err)
	}

	select {
	case res := <-waitC:
		// the attach stream ends when the container exits; let it drain
		select {
		case <-copied:
		case <-time.After(10 * time.Second):
			e.log.Warn("container output did not end after exit", zap.String("container", shortID(id)))
		}
		if res.Error != nil && res.Error.Message != "" {
			return outputs, fmt.Errorf("docker_run %s: wait for container %s: %s", img, shortID(id), res.Error.Message)
		}
		code := int(res.StatusCode)
		outputs["exit_code"] = strconv.Itoa(code)
		if code != 0 {
			return outputs, &runner.ExitError{Code: code, Msg: "docker_run " + img}
		}
		return outputs, nil
	case err := <-waitErrC:
		abort()
		if ctx.Err() != nil {
			return outputs, stopped(ctx, "docker_run "+img)
		}
		return outputs, fmt.Errorf("docker_run %s: wait for container %s: %w", img, shortID(id), err)
	case <-ctx.Done():
		abort()
		return outputs, stopped(ctx, "docker_run "+img)
	}
}

// reapAfter removes any container of the step's attempt once its context
// ended during creation, when the engine may not have learnt its id.
func (e *Engine) reapAfter(ctx context.Context, req *event.StepRequested) {
	cctx, cancel := e.cleanupContext(ctx)
	defer cancel()
	if err := e.reap(cctx, req.RunID, req.StepID, req.Attempt); err != nil {
		e.log.Warn("remove container of a stopped step", zap.Error(err))
	}
}

// runImage returns the image docker_run starts: a reference (with its parsed
// form, for pulling) or an image id.
func runImage(req *event.StepRequested) (string, reference.Named, error) {
	if req.Image == "" {
		return "", nil, fmt.Errorf("%w: the step names no docker_image and no earlier step built or pulled one", ErrInvalidStep)
	}
	if req.Tag == "" {
		if _, err := reference.ParseAnyReference(req.Image); err == nil && !strings.ContainsAny(req.Image, "/:") && len(req.Image) == 64 {
			return req.Image, nil, nil // a bare image id
		}
		if strings.HasPrefix(req.Image, "sha256:") {
			return req.Image, nil, nil
		}
	}
	named, err := namedRef(req.Image, req.Tag)
	if err != nil {
		return "", nil, err
	}
	return reference.FamiliarString(named), named, nil
}

// containerSpec maps the step onto the container's configuration.
func (e *Engine) containerSpec(ctx context.Context, req *event.StepRequested, t stepIO, img string) (*container.Config, *container.HostConfig, error) {
	// Keys granting host access are no settings: they are only looked for
	// to be refused by the policy below, with its explanation.
	unsupported := hostAccessKeys(req.DockerConfig)
	c, err := decodeConfig[steps.DockerRunConfig](without(req.DockerConfig, unsupported))
	if err != nil {
		return nil, nil, err
	}
	cfg := &container.Config{
		Image:        img,
		Labels:       AttemptLabels(req.RunID, req.StepID, req.Attempt),
		AttachStdout: true,
		AttachStderr: true,
	}
	hc := &container.HostConfig{}

	// the seed's format puts docker_run's command in docker_config
	cmd := req.Command
	if cmd == nil {
		cmd = c.Command
	}
	list, script, err := argv(cmd)
	if err != nil {
		return nil, nil, err
	}
	entrypoint := c.Entrypoint
	switch {
	case script != "" && entrypoint != nil:
		// a wrapper entrypoint (tini, docker-entrypoint.sh) runs the shell
		cfg.Entrypoint, cfg.Cmd = entrypoint, append(append([]string{}, shell...), script)
	case script != "":
		cfg.Entrypoint, cfg.Cmd = shell, []string{script}
	default:
		cfg.Entrypoint, cfg.Cmd = entrypoint, list
	}

	stepEnv := c.Environment
	// req.Env next: the pipeline service passes values from outside
	// (webhook payloads) there, and commands refer to them as variables.
	// The step's secrets last, so neither can shadow them.
	var secrets map[string]string
	if se, ok := t.(secretEnver); ok {
		secrets = se.SecretEnv()
	}
	if cfg.Env, err = envList(stepEnv, req.Env, secrets); err != nil {
		return nil, nil, err
	}
	cfg.WorkingDir = c.Workdir
	if cfg.WorkingDir != "" && !strings.HasPrefix(cfg.WorkingDir, "/") {
		return nil, nil, fmt.Errorf("%w: workdir %q is not an absolute container path", ErrInvalidStep, cfg.WorkingDir)
	}
	cfg.User = c.User
	network := c.Network
	if network == "" {
		network = e.cfg.Network
	}
	hc.NetworkMode = container.NetworkMode(network)
	hc.AutoRemove, hc.Privileged = c.Remove, c.Privileged
	mountSource, volumes := c.MountSource, c.Volumes
	var src string
	source := func() (string, error) {
		if src != "" {
			return src, nil
		}
		s, err := t.SourceDir(ctx)
		if err != nil {
			return "", fmt.Errorf("source: %w", err)
		}
		src = s
		return s, nil
	}
	ask := policy.Step{Type: req.Type, Pipeline: req.Pipeline, Image: img, Privileged: hc.Privileged,
		Network: network, Unsupported: unsupported}
	if mountSource {
		s, err := source()
		if err != nil {
			return nil, nil, err
		}
		if cfg.WorkingDir == "" {
			cfg.WorkingDir = e.cfg.SourceMount
		}
		hc.Mounts = append(hc.Mounts, mount.Mount{Type: mount.TypeBind, Source: s, Target: cfg.WorkingDir})
	}
	for _, v := range volumes {
		host, rest, ok := strings.Cut(v, ":")
		if !ok || host == "" || rest == "" {
			return nil, nil, fmt.Errorf("%w: volume %q is not SOURCE:TARGET[:OPTIONS]", ErrInvalidStep, v)
		}
		switch {
		case host == "." || strings.HasPrefix(host, "./") || strings.HasPrefix(host, "../"):
			s, err := source()
			if err != nil {
				return nil, nil, err
			}
			rel := host
			if host, err = within(s, host, "volume"); err != nil {
				return nil, nil, err
			}
			// the Docker Engine follows links: one in the source may
			// point anywhere on the host
			if resolved, ok := outsideSource(s, host); ok {
				ask.HostPaths = append(ask.HostPaths, policy.HostPath{Given: rel, Resolved: resolved})
			}
		case strings.HasPrefix(host, "/"):
			hp := policy.HostPath{Given: filepath.Clean(host)}
			if r := resolveLinks(hp.Given); r != hp.Given {
				hp.Resolved = r
			}
			ask.HostPaths = append(ask.HostPaths, hp)
		case !volumeName.MatchString(host):
			return nil, nil, fmt.Errorf("%w: volume %q: source %q is neither an absolute host path, a path of the run's source (./...) nor a volume name", ErrInvalidStep, v, host)
		}
		hc.Binds = append(hc.Binds, host+":"+rest)
	}
	if err := e.cfg.Policy.Check(ask); err != nil {
		return nil, nil, err
	}
	return cfg, hc, nil
}

// volumeName is what Docker accepts as a named volume.
var volumeName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// hostAccessKeys returns the docker_config keys of cfg that would grant the
// container host access the engine never gives on its own. No step type
// defines them, so validation of pipeline files rejects them; a request
// carrying them anyway is refused by the policy, with its explanation, not
// run with them silently dropped.
func hostAccessKeys(cfg map[string]any) []string {
	var out []string
	for _, k := range []string{"cap_add", "devices", "pid", "ipc", "uts", "userns_mode", "cgroupns", "security_opt", "sysctls", "device_requests"} {
		if _, ok := cfg[k]; ok {
			out = append(out, k)
		}
	}
	return out
}

// without returns cfg less the keys drop (cfg itself when there are none).
func without(cfg map[string]any, drop []string) map[string]any {
	if len(drop) == 0 {
		return cfg
	}
	out := make(map[string]any, len(cfg))
	for k, v := range cfg {
		out[k] = v
	}
	for _, k := range drop {
		delete(out, k)
	}
	return out
}

// outsideSource resolves the links of p, a path under the source root src,
// and returns the result when it leaves src.
func outsideSource(src, p string) (string, bool) {
	root := resolveLinks(src)
	r := resolveLinks(p)
	rel, err := filepath.Rel(root, r)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return r, true
	}
	return "", false
}

// resolveLinks resolves the symbolic links of the longest existing prefix of
// the absolute path p, as the Docker Engine will when it creates a missing
// bind source. It sees the runner's filesystem, which is the Engine's for a
// local Engine.
func resolveLinks(p string) string {
	rest := ""
	for cur := filepath.Clean(p); ; {
		if r, err := filepath.EvalSymlinks(cur); err == nil {
			return filepath.Join(r, rest)
		}
		parent := filepath.Dir(cur)
		if parent == cur {
			return filepath.Clean(p)
		}
		rest = filepath.Join(filepath.Base(cur), rest)
		cur = parent
	}
}

// startFailureCode maps a failure to start the command to the exit code a
// shell would give, as the docker CLI does: 127 for a command not found, 126
// for one that cannot be executed; 0 for other failures.
func startFailureCode(err error) int {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "executable file not found"), strings.Contains(msg, "no such file or directory"):
		return 127
	case strings.Contains(msg, "permission denied"), strings.Contains(msg, "is a directory"):
		return 126
	}
	return 0
}

// secretEnver is implemented by [runner.Task]: the secrets the step asked
// for, by environment variable. They reach the container only as
// environment variables, never as arguments.
type secretEnver interface{ SecretEnv() map[string]string }
