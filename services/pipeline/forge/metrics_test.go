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
// given to the service, not to the reporter. A run can end before its
// run.created is handled, and then its pending status is never sent (the
// reporter posts the latest state only), so the figures are compared with
// the statuses the forge received.
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
	// sent is the distinct states of the calls from the from'th on: the
	// statuses the reporter sent, each once however often it was retried.
	sent := func(from int) []string {
		var out []string
		for _, st := range states(f.rc.Calls()[from:])["ansflow/app"] {
			if len(out) == 0 || out[len(out)-1] != st {
				out = append(out, st)
			}
		}
		return out
	}

	f.rc.setFail(2, http.StatusInternalServerError)
	f.waitRun(t, f.trigger(t, "app", "github").ID)
	f.waitStates(t, map[string]string{"ansflow/app": "success"})
	f.drained(t)
	posted := sent(0)
	metricstest.WaitFor(t, m, metrics.CommitStatusDeliveries, gh("posted"), 10*time.Second, fmt.Sprintf("statuses %v posted", posted),
		func(s metricstest.Sample) bool { return s.Value == float64(len(posted)) })
	if got := metricstest.Value(t, m, metrics.CommitStatusDeliveries, gh("failed")); got != 0 {
		t.Errorf("failed statuses = %v after retried 500s, want 0", got)
	}

	from := len(f.rc.Calls())
	f.rc.setFail(-1, http.StatusBadGateway)
	f.waitRun(t, f.trigger(t, "app", "github").ID)
	f.waitStates(t, map[string]string{"ansflow/app": "success"}) // tried, and refused
	f.drained(t)
	failed := sent(from)
	if calls := states(f.rc.Calls()[from:])["ansflow/app"]; len(calls) != 3*len(failed) {
		t.Errorf("calls %v for statuses %v, want 3 attempts each", calls, failed)
	}
	metricstest.WaitFor(t, m, metrics.CommitStatusDeliveries, gh("failed"), 20*time.Second, fmt.Sprintf("statuses %v failed", failed),
		func(s metricstest.Sample) bool { return s.Value == float64(len(failed)) })
	if got := metricstest.Value(t, m, metrics.CommitStatusDeliveries, gh("posted")); got != float64(len(posted)) {
		t.Errorf("posted statuses = %v, want still %d", got, len(posted))
	}
	metricstest.Lint(t, m)
}
