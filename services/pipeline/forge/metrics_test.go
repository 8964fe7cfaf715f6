package forge_test

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/ansflow/ansflow/pkg/metrics"
	"github.com/ansflow/ansflow/pkg/metrics/metricstest"
	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/services/pipeline/forge"
	"github.com/ansflow/ansflow/services/pipeline/pipelinetest"
	"github.com/ansflow/ansflow/services/pipeline/service"
)

// TestStatusesAreCountedByForgeAndOutcome posts the statuses of a run
// through two 500s (each status counts once, posted) and of a run whose
// forge fails every call (each counts once, failed), with the metrics
// given to the service, not to the reporter. Each run is held for approval
// until its pending status was sent: a run that ends before its
// run.created is handled gets only its final status (the reporter posts
// the latest state), which CI once hit.
func TestStatusesAreCountedByForgeAndOutcome(t *testing.T) {
	m := metrics.New(metrics.Options{PipelineLabel: true})
	rc := newRecorder(t)
	key, _, err := secret.LoadOrCreateKey(filepath.Join(t.TempDir(), "secrets.key"))
	if err != nil {
		t.Fatal(err)
	}
	env := pipelinetest.StartWith(t, func(c *service.Config) {
		c.SecretsKey, c.Metrics = key, m
		c.Forge = forge.Config{ExternalURL: "https://ci.example/", Attempts: 3,
			Backoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, StepWait: 2 * time.Second}
	})
	if _, err := env.Svc.Secrets.Set(context.Background(), secret.Scope{}, forge.DefaultTokenSecret, []byte(forgeToken), secret.Filters{}, "test"); err != nil {
		t.Fatal(err)
	}
	f := &fixture{env: env, rc: rc}
	f.apply(t, fmt.Sprintf(twoSteps, "echo ok"))
	gh := func(outcome string) metricstest.Labels {
		return metricstest.Labels{metrics.LabelForge: "github", metrics.LabelOutcome: outcome}
	}
	// run sends a held run's pending status (the reporter holds the run
	// while it retries, so the final status comes after it), then lets
	// the run end.
	run := func() {
		t.Helper()
		r := f.triggerHeld(t, "app", "github", true)
		f.waitStates(t, map[string]string{"ansflow/app": "pending"})
		f.approve(t, r.ID)
		f.waitRun(t, r.ID)
		f.waitStates(t, map[string]string{"ansflow/app": "success"})
		f.drained(t)
	}

	f.rc.setFail(2, http.StatusInternalServerError)
	run() // two 500s, then posted
	metricstest.WaitFor(t, m, metrics.CommitStatusDeliveries, gh("posted"), 10*time.Second, "pending and success posted",
		func(s metricstest.Sample) bool { return s.Value == 2 })
	if got := metricstest.Value(t, m, metrics.CommitStatusDeliveries, gh("failed")); got != 0 {
		t.Errorf("failed statuses = %v after retried 500s, want 0", got)
	}

	f.rc.setFail(-1, http.StatusBadGateway)
	run() // three attempts each, all refused
	metricstest.WaitFor(t, m, metrics.CommitStatusDeliveries, gh("failed"), 20*time.Second, "pending and success failed",
		func(s metricstest.Sample) bool { return s.Value == 2 })
	if got := metricstest.Value(t, m, metrics.CommitStatusDeliveries, gh("posted")); got != 2 {
		t.Errorf("posted statuses = %v, want still 2", got)
	}
	metricstest.Lint(t, m)
}
