package engine

import (
	"testing"

	"github.com/ansflow/ansflow/pkg/spec/steps/stepstest"
)

// TestEveryErrorIsInTheStepReference: each sentinel error the Docker
// engine can fail a step with is listed in docs/steps.md.
func TestEveryErrorIsInTheStepReference(t *testing.T) {
	stepstest.CheckSentinels(t, ".", "docker")
}
