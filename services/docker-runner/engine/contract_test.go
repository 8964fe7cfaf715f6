package engine_test

import (
	"fmt"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/runner/runnertest"
	"github.com/ansflow/ansflow/services/docker-runner/dockertest"
	"github.com/ansflow/ansflow/services/docker-runner/engine"
)

// TestEngineContract runs the runner loop's engine contract on the real
// Docker Engine: cancellation, timeouts, and a lost runner's container
// removed by the runner that takes its step over.
func TestEngineContract(t *testing.T) {
	cli := dockertest.Client(t)
	base := dockertest.BusyboxImage(t, cli)
	runnertest.EngineContract(t, runnertest.Contract{
		Kind: event.KindDocker, Target: "contract",
		NewEngine: func(t testing.TB) runner.Engine {
			eng, err := engine.New(engine.Config{}, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { eng.Close() })
			return eng
		},
		Long: func(t testing.TB) *event.StepRequested {
			n := runSeq.Add(1)
			req := &event.StepRequested{RunID: fmt.Sprintf("contract-%d-%d", time.Now().UnixNano(), n), StepID: "long",
				StepName: "long", Pipeline: "contract", Attempt: 1, Type: "docker_run", Kind: event.KindDocker, Target: "contract",
				Image: base, DockerConfig: map[string]any{"command": "sleep 300"}, RequestedAt: time.Now().UTC()}
			labels := engine.AttemptLabels(req.RunID, req.StepID, req.Attempt)
			t.Cleanup(func() { dockertest.RemoveContainers(t, cli, labels) })
			return req
		},
		Running: func(t testing.TB, req *event.StepRequested) bool {
			for _, c := range dockertest.Containers(t, cli, engine.AttemptLabels(req.RunID, req.StepID, req.Attempt)) {
				if c.State == "running" {
					return true
				}
			}
			return false
		},
		Leftover: func(t testing.TB, req *event.StepRequested) bool {
			return len(dockertest.Containers(t, cli, engine.AttemptLabels(req.RunID, req.StepID, req.Attempt))) > 0
		},
	})
}
