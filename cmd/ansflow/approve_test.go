package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/ansflow/ansflow/pkg/apiv1"
)

// TestRunsGetShowsARunWaitingForApproval: `runs get` tells the operator the
// run waits for approval, why, and the command that approves it.
func TestRunsGetShowsARunWaitingForApproval(t *testing.T) {
	r := &apiv1.Run{ID: "run-9", Pipeline: "web", BuildNumber: 3, Status: "queued", Waiting: "approval",
		Approval: &apiv1.Approval{Reason: "pull request from fork mallory/app"}}
	var out bytes.Buffer
	printSummary(&out, r)
	for _, want := range []string{"QUEUED — waiting: approval", "pull request from fork mallory/app", "ansflow runs approve run-9"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
}
