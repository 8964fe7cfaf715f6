// Package runnertest provides a scripted [runner.Engine] for testing the
// orchestration backbone without Docker or Kubernetes. It is a neighbour of
// the code under test, not a stand-in for the real engines.
//
// A step's command (the step's command field, or docker_config.command /
// k8s_config.command) is a ";"-separated script of:
//
//	echo TEXT      write TEXT to stdout
//	warn TEXT      write TEXT to stderr
//	exit N         fail with exit code N
//	sleep DUR      wait DUR (or until cancelled)
//	flaky K        fail with exit code 1 while the attempt is <= K
//	output K=V     set output K
//	env NAME       write the value of request env NAME to stdout
//	needfile PATH  fail with exit code 1 unless PATH exists
//
// An empty script succeeds. docker_build steps output image=<name>:<tag>.
package runnertest

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/spec"
)

// Engine is the scripted engine. Executed counts Execute calls.
type Engine struct {
	Executed atomic.Int64
}

// Types returns every step type.
func (e *Engine) Types() []string {
	return append(append([]string{}, spec.DockerTypes...), spec.K8sTypes...)
}

// Script returns the command script of a request.
func Script(req *event.StepRequested) string {
	for _, c := range []any{req.Command, req.DockerConfig["command"], req.K8sConfig["command"]} {
		if s, ok := c.(string); ok && s != "" {
			return s
		}
	}
	return ""
}

// Execute runs the step's script.
func (e *Engine) Execute(ctx context.Context, req *event.StepRequested, task *runner.Task) (map[string]string, error) {
	e.Executed.Add(1)
	out := map[string]string{}
	if req.Type == "docker_build" {
		tag := req.Tag
		if tag == "" {
			tag = "latest"
		}
		out["image"] = req.Image + ":" + tag
	}
	if req.Type == "docker_push" && req.Registry != nil {
		out["image"] = req.Registry.URL + "/" + req.Image
	}
	for _, cmd := range strings.Split(Script(req), ";") {
		verb, arg, _ := strings.Cut(strings.TrimSpace(cmd), " ")
		switch verb {
		case "":
		case "echo":
			fmt.Fprintln(task.Stdout(), arg)
		case "warn":
			fmt.Fprintln(task.Stderr(), arg)
		case "env":
			fmt.Fprintln(task.Stdout(), req.Env[arg])
		case "exit":
			n, _ := strconv.Atoi(arg)
			if n != 0 {
				return out, &runner.ExitError{Code: n}
			}
		case "sleep":
			d, err := time.ParseDuration(arg)
			if err != nil {
				return out, err
			}
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return out, context.Cause(ctx)
			}
		case "flaky":
			k, _ := strconv.Atoi(arg)
			if req.Attempt <= k {
				return out, &runner.ExitError{Code: 1, Msg: fmt.Sprintf("flaky attempt %d", req.Attempt)}
			}
		case "needfile":
			if _, err := os.Stat(arg); err != nil {
				return out, &runner.ExitError{Code: 1, Msg: err.Error()}
			}
		case "output":
			k, v, _ := strings.Cut(arg, "=")
			out[k] = v
		default:
			return out, fmt.Errorf("runnertest: unknown verb %q", verb)
		}
	}
	return out, nil
}
