package engine

import (
	"testing"

	"github.com/ansflow/ansflow/pkg/spec/steps/stepstest"
)

// TestEveryErrorIsInTheStepReference: each sentinel error the Kubernetes
// engine can fail a step with is listed in docs/steps.md. ErrNotInCluster
// fails the runner's start, never a step.
func TestEveryErrorIsInTheStepReference(t *testing.T) {
	stepstest.CheckSentinels(t, ".", "k8s", ErrNotInCluster.Error())
}
