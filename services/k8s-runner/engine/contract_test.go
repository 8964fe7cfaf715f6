package engine_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/runner/runnertest"
	"github.com/ansflow/ansflow/services/k8s-runner/engine"
)

// TestEngineContract runs the runner loop's engine contract on the local
// control plane: a k8s_exec of a long command (kwok runs it on this host,
// where the test can see its process) is cancelled, timed out, and taken
// over after its runner is lost.
func TestEngineContract(t *testing.T) {
	c := adminCluster(t)
	ns := c.namespace(t, "contract")
	c.pod(t, ns, "shell", map[string]string{"app": "shell"}, "main")
	runnertest.EngineContract(t, runnertest.Contract{
		Kind: event.KindK8s, Target: clusterAdmin,
		NewEngine: func(t testing.TB) runner.Engine {
			eng, err := engine.New(engine.Config{Kubeconfig: c.path, Cluster: clusterAdmin, Access: testAccess}, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
			if err != nil {
				t.Fatal(err)
			}
			return eng
		},
		Long: func(t testing.TB) *event.StepRequested {
			n := runSeq.Add(1)
			req := &event.StepRequested{RunID: fmt.Sprintf("contract-%d", n), StepID: "long", StepName: "long",
				Pipeline: "contract", Attempt: 1, Type: engine.TypeExec, Kind: event.KindK8s, Target: clusterAdmin,
				Cluster: clusterAdmin, Namespace: ns, K8sConfig: map[string]any{"pod": "shell"}}
			// A unique sleep, so the test can find its process.
			req.Command = fmt.Sprintf("sleep 300.%d%d", os.Getpid(), n)
			return req
		},
		Running: func(t testing.TB, req *event.StepRequested) bool {
			return hostProcess(t, strings.TrimPrefix(req.Command.(string), "sleep "))
		},
	})
}

// hostProcess reports whether a process of this host has marker as an
// argument.
func hostProcess(t testing.TB, marker string) bool {
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range dirs {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, arg := range strings.Split(string(b), "\x00") {
			if arg == marker || strings.Contains(arg, "sleep "+marker) {
				return true
			}
		}
	}
	return false
}
