package policy

import (
	"testing"

	"github.com/ansflow/ansflow/pkg/spec/steps/stepstest"
)

// TestEveryErrorIsInTheStepReference: a step refused by the runner's
// policy reports an error docs/steps.md lists.
func TestEveryErrorIsInTheStepReference(t *testing.T) {
	stepstest.CheckSentinels(t, ".", "docker")
}
