// Package runner is the loop every AnsFlow runner shares: it consumes
// step.requested events for its pools, claims each (run, step, attempt) once,
// heartbeats, executes the step through an [Engine], streams its stdout and
// stderr as log events, and publishes step.started and step.completed.
package runner

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/ansflow/ansflow/pkg/event"
)

// Engine executes step attempts of one kind (Docker, Kubernetes).
//
// Execute is called concurrently for different attempts, up to the runner's
// configured concurrency. It must return when ctx is done (step timeout or
// run cancellation), stopping whatever it started. It returns the step's
// named outputs; an error fails the attempt, and an [*ExitError] in the chain
// records the process exit code. Execute is never called twice for the same
// (run, step, attempt): the loop claims each attempt first.
type Engine interface {
	// Types lists the step types the engine executes, e.g. "docker_build".
	Types() []string
	Execute(ctx context.Context, req *event.StepRequested, task *Task) (map[string]string, error)
}

// Reaper is implemented by engines that can clean up after an attempt whose
// runner died mid-step (containers, builds, processes). req is a request of
// the step (the lost attempt's own, or the attempt taking over from it);
// attempt is the lost attempt. Reap must be idempotent and is called by a
// runner that may run on another host than the lost one, so it removes what
// it can reach.
type Reaper interface {
	Reap(ctx context.Context, req *event.StepRequested, attempt int) error
}

// ExitError reports that the step's process ran and exited non-zero.
type ExitError struct {
	Code int
	Msg  string
}

func (e *ExitError) Error() string {
	if e.Msg != "" {
		return fmt.Sprintf("exit code %d: %s", e.Code, e.Msg)
	}
	return fmt.Sprintf("exit code %d", e.Code)
}

// ExitCode returns the exit code recorded in err's chain, if any.
func ExitCode(err error) (int, bool) {
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code, true
	}
	return 0, false
}

// SourceFetcher materialises a run's source tree in dir.
type SourceFetcher interface {
	Fetch(ctx context.Context, src *event.Source, dir string) error
}

// Task is what an engine gets besides the request: the step's output
// streams, secret masking, the secrets it asked for, and its source tree.
type Task struct {
	stdout, stderr *logWriter
	// maskOut and maskErr mask the streams across writes before the log
	// writers cut them into chunks.
	maskOut, maskErr *maskWriter
	masker           *Masker
	logs             *pendingLogs
	source           func(ctx context.Context) (string, error)
	secretEnv        map[string]string
	registryPassword string
	clusterToken     string
}

// Stdout is the step's standard output log stream.
func (t *Task) Stdout() io.Writer { return t.maskOut }

// Stderr is the step's standard error log stream.
func (t *Task) Stderr() io.Writer { return t.maskErr }

// SecretEnv returns the secrets the step asked for (its request's Secrets,
// opened with the runner's identity) by environment variable name. The
// engine passes them to the step's container or exec as environment
// variables, never as arguments, and never logs them; every value is
// already registered with the task's masking. The map is a copy.
func (t *Task) SecretEnv() map[string]string {
	out := make(map[string]string, len(t.secretEnv))
	for k, v := range t.secretEnv {
		out[k] = v
	}
	return out
}

// RegistryPassword returns the password of the step's registry
// (Registry.Username's) when its catalogue entry keeps it in the secret
// store: opened with the runner's identity and registered with the task's
// masking. ok is false when the request carried none.
func (t *Task) RegistryPassword() (password string, ok bool) {
	return t.registryPassword, t.registryPassword != ""
}

// ClusterToken returns the bearer token the step authenticates to its
// cluster with when the cluster's catalogue entry keeps one in the secret
// store, opened and masked like RegistryPassword's.
func (t *Task) ClusterToken() (token string, ok bool) {
	return t.clusterToken, t.clusterToken != ""
}

// flushLogs writes out what the masking held back, then every buffered
// line and partial line.
func (t *Task) flushLogs() {
	t.maskOut.Flush()
	t.maskErr.Flush()
	t.stdout.Flush(true)
	t.stderr.Flush(true)
}

// Mask registers a secret value: it is replaced by "****" in logs, outputs
// and error messages of this attempt.
func (t *Task) Mask(secret string) { t.masker.Add(secret) }

// SourceDir returns a directory holding the run's source tree, fetching it on
// first use. It fails when the run has no source.
func (t *Task) SourceDir(ctx context.Context) (string, error) { return t.source(ctx) }
