package webhook_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/ansflow/ansflow/pkg/metrics"
	"github.com/ansflow/ansflow/pkg/metrics/metricstest"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/services/pipeline/pipelinetest"
	"github.com/ansflow/ansflow/services/pipeline/service"
)

// TestDeliveriesAreCountedByProviderAndOutcome posts real deliveries to a
// pipeline service given metrics through service.Config: an accepted one,
// its replay, a badly signed one and one for a provider no forge is, whose
// name must not become a label value.
func TestDeliveriesAreCountedByProviderAndOutcome(t *testing.T) {
	m := metrics.New(metrics.Options{PipelineLabel: true})
	env := pipelinetest.StartWith(t, func(c *service.Config) { c.Metrics = m })
	env.Svc.Hooks.Secret = func(name string) string {
		if name == "ANSFLOW_WEBHOOK_WEB" {
			return secret
		}
		return ""
	}
	p, err := spec.Parse("web.yaml", []byte(pipelineYAML))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Svc.Store.PutPipeline(context.Background(), p, pipelineYAML, "test"); err != nil {
		t.Fatal(err)
	}
	f := &fixture{svc: env.Svc, srv: env.Srv}

	body := pushBody("main", "counted", "src/a.go")
	if code, resp := f.post(t, "github", body, github(body, "m-1")); code != http.StatusAccepted {
		t.Fatalf("delivery: %d %+v", code, resp)
	}
	if code, resp := f.post(t, "github", body, github(body, "m-1")); code != http.StatusOK || resp.Status != "duplicate" {
		t.Fatalf("replay: %d %+v", code, resp)
	}
	bad := map[string]string{"X-GitHub-Event": "push", "X-GitHub-Delivery": "m-2", "X-Hub-Signature-256": "sha256=00"}
	if code, _ := f.post(t, "github", body, bad); code != http.StatusUnauthorized {
		t.Fatalf("badly signed delivery answered %d, want 401", code)
	}
	if code, _ := f.post(t, "bitbucket-lookalike", body, nil); code != http.StatusNotFound {
		t.Fatalf("unknown provider answered %d, want 404", code)
	}
	for _, c := range []struct {
		provider, outcome string
		want              float64
	}{
		{"github", "accepted", 1}, {"github", "duplicate", 1}, {"github", "rejected", 1}, {"other", "rejected", 1},
		{"gitlab", "accepted", 0},
	} {
		l := metricstest.Labels{metrics.LabelProvider: c.provider, metrics.LabelOutcome: c.outcome}
		if got := metricstest.Value(t, m, metrics.WebhookDeliveries, l); got != c.want {
			t.Errorf("webhook deliveries %v = %v, want %v", l, got, c.want)
		}
	}
	if _, found := metricstest.Get(t, m, metrics.WebhookDeliveries, metricstest.Labels{metrics.LabelProvider: "bitbucket-lookalike"}); found {
		t.Errorf("a provider from the URL became a label value")
	}
	// the accepted delivery's run was counted by the same registry
	if got := metricstest.Value(t, m, metrics.RunsStarted, metricstest.Labels{metrics.LabelPipeline: "web"}); got != 1 {
		t.Errorf("runs started of web = %v, want 1", got)
	}
	metricstest.Lint(t, m)
}
