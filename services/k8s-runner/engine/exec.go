package engine

import (
	"context"
	"errors"
	"fmt"
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

	"github.com/ansflow/ansflow/pkg/runner"
)

// envName is what may be passed as `env NAME=value`.
var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// exec executes k8s_exec: it runs the step's command in a container of a
// running pod (k8s_config.pod, else the first running pod matching
// pod_selector, else the step's resource name, see [step.selectPods]) with
// stdout and stderr streamed separately into the step's log. A string
// command runs as `sh -c COMMAND`, a list as the argv itself; the step's
// env is passed by prefixing `env NAME=value ...`, so the container needs
// an `env` binary when env is set. A non-zero exit fails the step with a
// [*runner.ExitError]. timeout (seconds) bounds the command; the stream is
// then closed, which a real kubelet does not turn into a kill.
//
// The stream uses the WebSocket protocol and falls back to SPDY for
// apiservers that do not upgrade it.
func (s *step) exec(ctx context.Context) (map[string]string, error) {
	argv, err := s.command()
	if err != nil {
		return nil, err
	}
	if s.p.has("timeout") {
		d, err := s.p.seconds("timeout", 0)
		if err != nil {
			return nil, err
		}
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

	req := s.e.cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod.Name).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: argv, Stdout: true, Stderr: true}, scheme.ParameterCodec)
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
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: s.io.Stdout(), Stderr: s.io.Stderr()})
	s.log.Debug("exec done", zap.Duration("took", time.Since(start)))
	if err == nil {
		out["exit_code"] = "0"
		return out, nil
	}
	if ctx.Err() != nil {
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
		cmd = s.p["command"]
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
	if len(s.req.Env) == 0 {
		return argv, nil
	}
	names := make([]string, 0, len(s.req.Env))
	for k := range s.req.Env {
		if !envName.MatchString(k) {
			return nil, fmt.Errorf("%w: env name %q is not a valid variable name", ErrInvalidConfig, k)
		}
		names = append(names, k)
	}
	sort.Strings(names)
	prefix := []string{"env"}
	for _, k := range names {
		prefix = append(prefix, k+"="+s.req.Env[k])
	}
	return append(prefix, argv...), nil
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
