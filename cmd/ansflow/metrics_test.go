package main

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/metrics"
	"github.com/ansflow/ansflow/pkg/metrics/metricstest"
)

// TestTheEmbeddedStackSharesOneRegistry runs a failing and a succeeding
// run on the embedded stack (scripted engines) and reads its /metrics
// handler: the pipeline service, the runner and the audit service all
// recorded into the one registry, and the exposition lints clean.
func TestTheEmbeddedStackSharesOneRegistry(t *testing.T) {
	useScriptedEngines(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := startStack(ctx, stackConfig{DataDir: t.TempDir(), NATSAddr: "off", DockerRunner: true, Audit: true, Pipeline: true, Concurrency: 2}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer st.stop()
	c := newClient(st.URL, st.Token)
	for _, y := range []string{
		"pipeline:\n  name: stack-ok\n  steps:\n    - {name: hi, type: docker_run, command: \"echo hi\"}\n",
		"pipeline:\n  name: stack-bad\n  steps:\n    - {name: no, type: docker_run, command: \"exit 4\"}\n",
	} {
		if _, err := c.applyPipeline(ctx, "p.yaml", []byte(y)); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"stack-ok", "stack-bad"} {
		r, err := c.trigger(ctx, p, apiv1.TriggerBody{})
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for !r.Terminal() {
			if time.Now().After(deadline) {
				t.Fatalf("run of %s still %s", p, r.Status)
			}
			time.Sleep(20 * time.Millisecond) // polling the run, with a deadline
			if r, err = c.getRun(ctx, r.ID); err != nil {
				t.Fatal(err)
			}
		}
	}
	metricstest.WaitFor(t, st.Metrics, metrics.AuditRecordsIngested, nil, 10*time.Second, "audit records",
		func(s metricstest.Sample) bool { return s.Value > 0 })

	srv := httptest.NewServer(st.Metrics.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(b)
	for _, want := range []string{
		`ansflow_runs_finished_total{pipeline="stack-ok",status="succeeded"} 1`,
		`ansflow_runs_finished_total{pipeline="stack-bad",status="failed"} 1`,
		`ansflow_step_duration_seconds_count{status="failed",type="docker_run"} 1`,
		`ansflow_step_queue_wait_seconds_count{kind="docker",pool="default"} 2`,
		`ansflow_runner_slots{kind="docker",pool="default"} 2`,
		`ansflow_pool_runners_online{kind="docker",pool="default"} 1`,
		`ansflow_audit_records_ingested_total{stream="ANSFLOW_EVENTS"}`,
		`go_goroutines`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(text, st.Token) {
		t.Errorf("/metrics shows the admin token")
	}
	metricstest.Lint(t, st.Metrics)
}
