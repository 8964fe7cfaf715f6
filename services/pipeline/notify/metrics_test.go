package notify_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/ansflow/ansflow/pkg/metrics"
	"github.com/ansflow/ansflow/pkg/metrics/metricstest"
	. "github.com/ansflow/ansflow/services/pipeline/notify"
)

// TestDeliveriesAreCounted sends one notification that is delivered after
// a retry and one that gives up: each counts once, by channel and outcome,
// whatever its number of tries.
func TestDeliveriesAreCounted(t *testing.T) {
	m := metrics.New(metrics.Options{PipelineLabel: true})
	e := start(t, Config{Attempts: 2, Backoff: 10 * time.Millisecond, Metrics: m})
	rc := newReceiver(t, hookSecret)
	rc.fail = []int{http.StatusInternalServerError}
	e.setSecret(t, "api", "HOOK", hookSecret)
	e.apply(t, fmt.Sprintf(failingPipeline, rc.srv.URL))
	r := e.run(t, "api", "", "main")
	waitFor(t, "the delivery", 10*time.Second, func() bool { return e.deliveriesDone(r.ID, 1) })
	rc.mu.Lock()
	rc.fail = []int{503, 503}
	rc.mu.Unlock()
	r = e.run(t, "api", "", "main")
	waitFor(t, "the delivery to give up", 10*time.Second, func() bool { return e.deliveriesDone(r.ID, 1) })
	webhook := func(outcome string) metricstest.Labels {
		return metricstest.Labels{metrics.LabelChannel: "webhook", metrics.LabelOutcome: outcome}
	}
	if got := metricstest.Value(t, m, metrics.NotificationDeliveries, webhook(StateDelivered)); got != 1 {
		t.Errorf("delivered webhook notifications = %v, want 1", got)
	}
	if got := metricstest.Value(t, m, metrics.NotificationDeliveries, webhook(StateFailed)); got != 1 {
		t.Errorf("failed webhook notifications = %v, want 1", got)
	}
	metricstest.Lint(t, m)
}
