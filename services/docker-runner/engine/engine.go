// Package engine executes AnsFlow's Docker steps (docker_build, docker_run,
// docker_push and docker_pull) against a Docker Engine through its HTTP API,
// never through the docker CLI. An [*Engine] is the [runner.Engine] and
// [runner.Reaper] of the docker-runner service: the shared runner loop in
// package runner consumes step requests, and the engine turns each into API
// calls, streaming output into the step's log as it happens.
//
// Every container the engine starts carries the labels [LabelRun],
// [LabelStep] and [LabelAttempt], so that [Engine.Reap] can find and remove
// the containers of an attempt whose runner died. When a step's context ends
// (timeout, cancellation, runner shutdown) the engine kills and removes its
// container, or aborts its build, before Execute returns.
//
// What a step may ask of the runner's host (bind mounts of host paths, the
// Docker socket, privileged mode, host network) is decided by the runner's
// [policy.Policy] ([Config.Policy]), strict by default: a refused step fails
// with an error wrapping [policy.ErrDenied] before any container is created.
//
// Registry credentials are held by the runner ([Config.Credentials], loaded
// with [LoadCredentials]); a step request only names the registry. Passwords
// are registered with the step's masker and never appear in errors.
package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/services/docker-runner/policy"
)

// Step types executed by the engine.
const (
	TypeBuild = "docker_build"
	TypeRun   = "docker_run"
	TypePush  = "docker_push"
	TypePull  = "docker_pull"
)

// Labels set on every container the engine creates.
const (
	LabelRun     = "io.ansflow.run"
	LabelStep    = "io.ansflow.step"
	LabelAttempt = "io.ansflow.attempt"
)

// DefaultSourceMount is where docker_run's mount_source puts the run's
// source when the step sets no workdir.
const DefaultSourceMount = "/workspace"

// Errors that classify a failed step; test them with errors.Is.
var (
	// ErrInvalidStep reports a step request the engine cannot execute as
	// given: a missing image, a malformed docker_config value, a path that
	// leaves the source tree. Retrying it cannot help.
	ErrInvalidStep = errors.New("invalid step")
	// ErrAuthFailed reports that a registry refused the runner's
	// credentials, or that the runner holds none for a registry that
	// requires them.
	ErrAuthFailed = errors.New("authentication failed")
	// ErrRegistryUnreachable reports that the Docker Engine could not reach
	// a registry (refused connection, unknown host, timeout, TLS mismatch).
	ErrRegistryUnreachable = errors.New("registry unreachable")
)

// Config configures an [Engine]. The zero value is usable: it talks to the
// engine named by the environment and holds no credentials.
type Config struct {
	// DockerHost is the Docker Engine API endpoint, such as
	// unix:///var/run/docker.sock or tcp://10.0.0.5:2376. Empty means the
	// environment (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH) or the
	// default socket.
	DockerHost string
	// Credentials are the registry credentials the runner holds.
	Credentials Credentials
	// Network is the network docker_run containers join when the step names
	// none; empty means the daemon's default bridge.
	Network string
	// SourceMount is where mount_source mounts the run's source when the
	// step sets no workdir (default [DefaultSourceMount]).
	SourceMount string
	// Policy is what steps may ask of the runner's host; the zero value is
	// strict (see package policy). The engine adds the socket of the Docker
	// Engine it talks to to Policy.DockerSockets.
	Policy policy.Policy
	// CleanupTimeout bounds the API calls that stop and remove a container
	// after its step's context ended (default 30s).
	CleanupTimeout time.Duration
}

// Validate checks c and fills in defaults.
func (c *Config) Validate() error {
	if c.SourceMount == "" {
		c.SourceMount = DefaultSourceMount
	}
	if c.SourceMount[0] != '/' {
		return fmt.Errorf("source mount %q is not an absolute container path", c.SourceMount)
	}
	if c.CleanupTimeout <= 0 {
		c.CleanupTimeout = 30 * time.Second
	}
	if c.Credentials == nil {
		c.Credentials = Credentials{}
	}
	if err := c.Policy.Validate(); err != nil {
		return fmt.Errorf("runner policy: %w", err)
	}
	return nil
}

// Engine executes Docker steps through the Docker Engine API. Create it with
// [New]. Its methods are safe for concurrent use: the runner calls Execute
// for several attempts at once.
type Engine struct {
	cfg Config
	cli *client.Client
	log *zap.Logger
}

var (
	_ runner.Engine = (*Engine)(nil)
	_ runner.Reaper = (*Engine)(nil)
)

// New returns an engine for cfg. It makes no API call: use [Engine.Ping] to
// check the Docker Engine is reachable. The client negotiates the API
// version with the daemon on first use.
func New(cfg Config, log *zap.Logger) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("docker engine config: %w", err)
	}
	// The Docker client traces every Engine API call (otelhttp) with the
	// global TracerProvider, which package tracing sets when tracing is on:
	// each call is a client span of the step's trace.
	opts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if cfg.DockerHost != "" {
		opts = append(opts, client.WithHost(cfg.DockerHost))
	}
	cli, err := client.NewClientWithOpts(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker client for %q: %w", cfg.DockerHost, err)
	}
	if log == nil {
		log = zap.NewNop()
	}
	if len(cfg.Policy.DockerSockets) == 0 {
		cfg.Policy.DockerSockets = append([]string(nil), policy.DefaultDockerSockets...)
	}
	if sock, ok := strings.CutPrefix(cli.DaemonHost(), "unix://"); ok && !slices.Contains(cfg.Policy.DockerSockets, sock) {
		cfg.Policy.DockerSockets = append(cfg.Policy.DockerSockets, filepath.Clean(sock))
	}
	return &Engine{cfg: cfg, cli: cli, log: log.Named("docker")}, nil
}

// Ping checks that the Docker Engine answers and returns its API version.
func (e *Engine) Ping(ctx context.Context) (string, error) {
	p, err := e.cli.Ping(ctx)
	if err != nil {
		return "", fmt.Errorf("docker engine at %s: %w", e.cli.DaemonHost(), err)
	}
	return p.APIVersion, nil
}

// Close releases the API client's connections.
func (e *Engine) Close() error { return e.cli.Close() }

// Types returns the step types the engine executes.
func (e *Engine) Types() []string { return []string{TypeBuild, TypeRun, TypePush, TypePull} }

// stepIO is what the engine uses of a [runner.Task]; tests and benchmarks
// supply their own.
type stepIO interface {
	Stdout() io.Writer
	Stderr() io.Writer
	Mask(secret string)
	SourceDir(ctx context.Context) (string, error)
	RegistryPassword() (password string, ok bool)
}

// Execute runs one attempt of a Docker step and returns its outputs:
//
//   - docker_build: image (name:tag), image_id
//   - docker_run: exit_code, container_id
//   - docker_push: image (the registry-qualified reference), digest
//   - docker_pull: image, image_id, digest
//
// A docker_run whose command exits non-zero returns a [*runner.ExitError]
// with its code. Other errors wrap [ErrInvalidStep], [ErrAuthFailed] or
// [ErrRegistryUnreachable] where they apply. When ctx ends, Execute stops
// what it started (kills and removes the container, or only kills it when
// the step sets remove: false; aborts the build, push or pull) and returns an
// error wrapping ctx's cause.
func (e *Engine) Execute(ctx context.Context, req *event.StepRequested, task *runner.Task) (map[string]string, error) {
	return e.execute(ctx, req, task)
}

func (e *Engine) execute(ctx context.Context, req *event.StepRequested, t stepIO) (map[string]string, error) {
	// Any password the runner holds is masked in every step's output, not
	// only in the steps that use it: a command may print what it finds.
	for _, c := range e.cfg.Credentials {
		t.Mask(c.Password)
	}
	creds, err := e.stepCredentials(req, t)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", req.Type, err)
	}
	switch req.Type {
	case TypeBuild:
		return e.build(ctx, req, t, creds)
	case TypeRun:
		return e.run(ctx, req, t, creds)
	case TypePush:
		return e.push(ctx, req, t, creds)
	case TypePull:
		return e.pull(ctx, req, t, creds)
	default:
		return nil, fmt.Errorf("%w: the docker runner does not execute step type %q", ErrInvalidStep, req.Type)
	}
}

// AttemptLabels returns the labels of the containers of one attempt.
func AttemptLabels(runID, stepID string, attempt int) map[string]string {
	return map[string]string{LabelRun: runID, LabelStep: stepID, LabelAttempt: strconv.Itoa(attempt)}
}

// Reap force-removes every container of the attempt (run, step, attempt),
// running or not. It is idempotent: containers already gone are not an
// error. The runner calls it for an attempt whose runner lost its lease (it died).
// Builds need no reaping: the daemon aborts a build, and removes its
// intermediate container, when the connection of the client that started it
// closes.
func (e *Engine) Reap(ctx context.Context, req *event.StepRequested, attempt int) error {
	return e.reap(ctx, req.RunID, req.StepID, attempt)
}

func (e *Engine) reap(ctx context.Context, runID, stepID string, attempt int) error {
	args := filters.NewArgs()
	for k, v := range AttemptLabels(runID, stepID, attempt) {
		args.Add("label", k+"="+v)
	}
	list, err := e.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: args})
	if err != nil {
		return fmt.Errorf("list containers of %s/%s attempt %d: %w", runID, stepID, attempt, err)
	}
	var errs []error
	for _, c := range list {
		if err := e.removeContainer(ctx, c.ID); err != nil {
			errs = append(errs, err)
			continue
		}
		e.log.Info("reaped container of a lost attempt", zap.String("container", shortID(c.ID)),
			zap.String("run_id", runID), zap.String("step_id", stepID), zap.Int("attempt", attempt))
	}
	return errors.Join(errs...)
}

// removeContainer force-removes id (killing it if it runs) and waits until
// it is gone, also when the daemon is already auto-removing it.
func (e *Engine) removeContainer(ctx context.Context, id string) error {
	err := e.cli.ContainerRemove(ctx, id, container.RemoveOptions{Force: true, RemoveVolumes: true})
	switch {
	case err == nil, cerrdefs.IsNotFound(err):
		return nil
	case cerrdefs.IsConflict(err): // removal already in progress
		for {
			if _, err := e.cli.ContainerInspect(ctx, id); cerrdefs.IsNotFound(err) {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("container %s still present: %w", shortID(id), ctx.Err())
			case <-time.After(20 * time.Millisecond):
			}
		}
	default:
		return fmt.Errorf("remove container %s: %w", shortID(id), err)
	}
}

// cleanupContext returns a context for stopping what a step started after
// the step's own context ended.
func (e *Engine) cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), e.cfg.CleanupTimeout)
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// stopped returns the error for a step whose context ended.
func stopped(ctx context.Context, what string) error {
	cause := context.Cause(ctx)
	if cause == nil {
		cause = ctx.Err()
	}
	return fmt.Errorf("%s stopped: %w", what, cause)
}
