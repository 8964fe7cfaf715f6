package engine

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/spec/steps"
)

// envName is what may be passed as `env NAME=value`.
var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// exec executes k8s_exec: it runs the step's command in a container of a
// running pod (k8s_config.pod, else the first running pod matching
// pod_selector, else the step's resource name, see [step.selectPods]) with
// stdout and stderr streamed separately into the step's log. A string
// command runs as `sh -c COMMAND`, a list as the argv itself; the step's
// env is passed by prefixing `env NAME=value ...`, so the container needs
// an `env` binary. A non-zero exit fails the step with a
// [*runner.ExitError]. timeout (seconds) bounds the command.
//
// Closing an exec stream does not kill the command (a real kubelet leaves
// it running), so every command runs with ANSFLOW_ATTEMPT=<attempt key> in
// its environment, inherited by whatever it starts, and a step that is
// cancelled, times out or is reaped after its runner was lost is stopped by
// a second exec that kills the processes carrying it (see [killScript]).
//
// The stream uses the WebSocket protocol and falls back to SPDY for
// apiservers that do not upgrade it.
func (s *step) exec(ctx context.Context) (map[string]string, error) {
	argv, err := s.command()
	if err != nil {
		return nil, err
	}
	if d := s.cfg.(*steps.K8sExecConfig).Timeout; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, d, fmt.Errorf("%w: the command did not finish within %s", ErrWaitTimeout, d))
		defer cancel()
	}
	ns := s.namespace()
	if err := s.checkNamespace(ctx, ns); err != nil {
		return nil, err
	}
	set, err := s.selectPods(ctx, ns)
	if err != nil {
		return nil, err
	}
	var pod *corev1.Pod
	var phases []string
	for i := range set.pods {
		if set.pods[i].Status.Phase == corev1.PodRunning {
			pod = &set.pods[i]
			break
		}
		phases = append(phases, fmt.Sprintf("%s %s", set.pods[i].Name, set.pods[i].Status.Phase))
	}
	if pod == nil {
		return nil, fmt.Errorf("%s: none is running (%s): %w", set.how, strings.Join(phases, ", "), ErrNoPods)
	}
	container, err := s.containerOf(pod)
	if err != nil {
		return nil, err
	}
	out := map[string]string{"namespace": ns, "pod": pod.Name, "container": container}
	s.log.Debug("exec", zap.String("pod", pod.Name), zap.String("container", container))

	stdin := s.secretsStdin()
	req := s.e.cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod.Name).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: argv, Stdin: stdin != nil, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	ws, err := remotecommand.NewWebSocketExecutor(s.e.rest, "GET", req.URL().String())
	if err != nil {
		return out, fmt.Errorf("exec in pod %s/%s: websocket executor: %w", ns, pod.Name, err)
	}
	spdy, err := remotecommand.NewSPDYExecutor(s.e.rest, "POST", req.URL())
	if err != nil {
		return out, fmt.Errorf("exec in pod %s/%s: spdy executor: %w", ns, pod.Name, err)
	}
	ex, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return out, fmt.Errorf("exec in pod %s/%s: %w", ns, pod.Name, err)
	}
	start := time.Now()
	streams := remotecommand.StreamOptions{Stdout: s.io.Stdout(), Stderr: s.io.Stderr()}
	if stdin != nil {
		streams.Stdin = stdin
	}
	err = ex.StreamWithContext(ctx, streams)
	s.log.Debug("exec done", zap.Duration("took", time.Since(start)))
	if err == nil {
		out["exit_code"] = "0"
		return out, nil
	}
	if ctx.Err() != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if kerr := s.e.killAttempt(cctx, ns, pod.Name, container, runner.AttemptKey(s.req.RunID, s.req.StepID, s.req.Attempt)); kerr != nil {
			s.log.Warn("stop the command of a stopped step", zap.String("pod", pod.Name), zap.Error(kerr))
		}
		return out, context.Cause(ctx)
	}
	if code, ok := exitCode(err); ok {
		out["exit_code"] = strconv.Itoa(code)
		return out, &runner.ExitError{Code: code, Msg: fmt.Sprintf("command in pod %s/%s container %s", ns, pod.Name, container)}
	}
	if apierrors.IsForbidden(err) {
		return out, s.apiErr(err, apiReq{verb: "create", resource: "pods/exec", ns: ns, name: pod.Name})
	}
	return out, fmt.Errorf("exec in pod %s/%s container %s: %s", ns, pod.Name, container, s.redactEnv(err.Error()))
}

// kwokExit matches the exit status in the error a kwok node reports for a
// failed local exec ("... cmd wait: sh -c ...: exit status 3"): kwok wraps
// the process error, so the apiserver passes it on as an internal error
// instead of a NonZeroExitCode status.
var kwokExit = regexp.MustCompile(`cmd wait: .*: exit status (\d+)\s*$`)

// exitCode extracts the remote command's exit code from a stream error.
func exitCode(err error) (int, bool) {
	var ee utilexec.ExitError
	if errors.As(err, &ee) && ee.Exited() {
		return ee.ExitStatus(), true
	}
	if m := kwokExit.FindStringSubmatch(err.Error()); m != nil {
		n, convErr := strconv.Atoi(m[1])
		return n, convErr == nil
	}
	return 0, false
}

// command returns the argv to run: the step's command (else
// k8s_config.command), prefixed by `env NAME=value ...` for the step's env.
func (s *step) command() ([]string, error) {
	var cmd any = s.req.Command
	if c, ok := cmd.(string); cmd == nil || (ok && strings.TrimSpace(c) == "") {
		cmd = nil
		if c, ok := s.cfg.(*steps.K8sExecConfig); ok {
			cmd = c.Command
		}
	}
	var argv []string
	switch c := cmd.(type) {
	case string:
		if strings.TrimSpace(c) == "" {
			return nil, fmt.Errorf("%w: k8s_exec needs a command", ErrInvalidConfig)
		}
		argv = []string{"sh", "-c", c}
	case []any:
		for i, a := range c {
			str, ok := a.(string)
			if !ok {
				return nil, fmt.Errorf("%w: command[%d]: want a string, got %T", ErrInvalidConfig, i, a)
			}
			argv = append(argv, str)
		}
	case []string:
		argv = append(argv, c...)
	case nil:
		return nil, fmt.Errorf("%w: k8s_exec needs a command", ErrInvalidConfig)
	default:
		return nil, fmt.Errorf("%w: command: want a string or a list of strings, got %T", ErrInvalidConfig, cmd)
	}
	if len(argv) == 0 {
		return nil, fmt.Errorf("%w: k8s_exec needs a command", ErrInvalidConfig)
	}
	names := make([]string, 0, len(s.req.Env))
	for k := range s.req.Env {
		if !envName.MatchString(k) {
			return nil, fmt.Errorf("%w: env name %q is not a valid variable name", ErrInvalidConfig, k)
		}
		names = append(names, k)
	}
	sort.Strings(names)
	prefix := []string{"env", attemptEnv + "=" + runner.AttemptKey(s.req.RunID, s.req.StepID, s.req.Attempt)}
	for _, k := range names {
		prefix = append(prefix, k+"="+s.req.Env[k])
	}
	if len(s.secrets()) > 0 {
		// The secrets arrive on standard input (see secretsStdin), never in
		// the argv, which the apiserver may log.
		prefix = append(prefix, "sh", "-c", secretsScript, "ansflow-secrets")
	}
	return append(prefix, argv...), nil
}

// secretsScript reads the step's secrets from standard input, one
// NAME=base64(value) line each up to an empty line, exports them and
// executes its arguments (the step's command). The trailing x keeps a
// value's own trailing newlines, which $(...) would strip. It needs sh and
// base64 in the container, as busybox and every distribution image have.
const secretsScript = `while IFS= read -r l && [ -n "$l" ]; do n=${l%%=*}; ` +
	`v=$(printf '%s' "${l#*=}" | base64 -d; echo x) || exit 97; export "$n=${v%x}"; done; exec "$@"`

// secretEnver is implemented by [runner.Task]: the secrets the step asked
// for, by environment variable name.
type secretEnver interface{ SecretEnv() map[string]string }

func (s *step) secrets() map[string]string {
	if se, ok := s.io.(secretEnver); ok {
		return se.SecretEnv()
	}
	return nil
}

// secretsStdin is what secretsScript reads, nil when the step has no
// secrets.
func (s *step) secretsStdin() io.Reader {
	sec := s.secrets()
	if len(sec) == 0 {
		return nil
	}
	names := make([]string, 0, len(sec))
	for k := range sec {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, k := range names {
		b.WriteString(k + "=" + base64.StdEncoding.EncodeToString([]byte(sec[k])) + "\n")
	}
	b.WriteString("\n")
	return strings.NewReader(b.String())
}

// redactEnv hides env values in a message that may quote the argv.
func (s *step) redactEnv(msg string) string {
	for k, v := range s.req.Env {
		if v != "" {
			msg = strings.ReplaceAll(msg, k+"="+v, k+"=****")
		}
	}
	return msg
}

// attemptEnv marks the processes of one k8s_exec attempt.
const attemptEnv = "ANSFLOW_ATTEMPT"

// killScript kills every process of the container whose environment holds
// ANSFLOW_ATTEMPT=$0 (the command and whatever it started), except itself.
// It needs sh, tr, grep and kill in the container, as busybox and every
// distribution image have; without them nothing is killed, and the command
// runs on until it ends.
const killScript = `for e in /proc/[0-9]*/environ; do p=${e#/proc/}; p=${p%/environ}; ` +
	`[ "$p" = "$$" ] && continue; ` +
	`if tr '\000' '\n' < "$e" 2>/dev/null | grep -qx "` + attemptEnv + `=$0"; then kill -9 "$p" 2>/dev/null; fi; done; exit 0`

// killAttempt runs killScript for the attempt key in a container.
func (e *Engine) killAttempt(ctx context.Context, ns, pod, container, key string) error {
	req := e.cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: []string{"sh", "-c", killScript, key},
			Stdout: true, Stderr: true}, scheme.ParameterCodec)
	ws, err := remotecommand.NewWebSocketExecutor(e.rest, "GET", req.URL().String())
	if err != nil {
		return fmt.Errorf("kill in pod %s/%s: %w", ns, pod, err)
	}
	spdy, err := remotecommand.NewSPDYExecutor(e.rest, "POST", req.URL())
	if err != nil {
		return fmt.Errorf("kill in pod %s/%s: %w", ns, pod, err)
	}
	ex, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return fmt.Errorf("kill in pod %s/%s: %w", ns, pod, err)
	}
	var stderr strings.Builder
	if err := ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: io.Discard, Stderr: &stderr}); err != nil {
		return fmt.Errorf("kill in pod %s/%s container %s: %w (%s)", ns, pod, container, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// Reap stops what a lost attempt of a k8s_exec step left running: its
// command in every running pod the step selects (the pod it ran in may not
// be the first any more). The other step types leave nothing owned by the
// attempt: they apply, scale, delete or watch objects, which the next
// attempt does again idempotently.
func (e *Engine) Reap(ctx context.Context, req *event.StepRequested, attempt int) error {
	if req.Type != TypeExec {
		return nil
	}
	s := &step{e: e, req: req, io: nil, log: e.log}
	if err := s.decode(); err != nil {
		return fmt.Errorf("reap attempt %d of %s/%s: %w", attempt, req.RunID, req.StepID, err)
	}
	ns := s.namespace()
	set, err := s.selectPods(ctx, ns)
	if err != nil {
		return fmt.Errorf("reap attempt %d of %s/%s: %w", attempt, req.RunID, req.StepID, err)
	}
	key := runner.AttemptKey(req.RunID, req.StepID, attempt)
	var errs []error
	for i := range set.pods {
		pod := &set.pods[i]
		if pod.Status.Phase != corev1.PodRunning {
			continue
		}
		container, err := s.containerOf(pod)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := e.killAttempt(ctx, ns, pod.Name, container, key); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
