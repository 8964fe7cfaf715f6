package engine_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/services/k8s-runner/engine"
)

// BenchmarkDeployWaitViaRunner is [engine.BenchmarkDeployWait] end to end:
// the k8s_deploy and k8s_wait steps travel as step.requested events through
// JetStream to the real runner loop and their step.completed events come
// back, so the figure includes claiming, log streaming and completion.
func BenchmarkDeployWaitViaRunner(b *testing.B) {
	h := newHarness(b)
	ns := h.c.namespace(b, "bench")
	viaRunner := func(i int) {
		deploy := h.step(engine.TypeDeploy, ns, "via-runner", map[string]any{
			"deployment_spec": map[string]any{"replicas": engine.BenchReplicas, "image": fmt.Sprintf("web:%d", i)}})
		h.run(deploy, event.StatusSucceeded, 2*time.Minute)
		wait := h.step(engine.TypeWait, ns, "via-runner", map[string]any{"resource_type": "deployment", "condition": "available", "timeout": 120})
		h.run(wait, event.StatusSucceeded, 2*time.Minute)
	}
	engine.BenchCompare(b, viaRunner, engine.BenchKubectl(b, h.c.path, ns, "via-kubectl"))
}
