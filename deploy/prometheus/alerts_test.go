package prometheus

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/promql/promqltest"

	"github.com/ansflow/ansflow/pkg/metrics"
)

// rules parses alerts.yaml as Prometheus does, failing on any error.
func rules(t *testing.T) []rulefmt.Rule {
	t.Helper()
	p := parser.NewParser(parser.Options{})
	groups, errs := rulefmt.ParseFile("alerts.yaml", false, model.UTF8Validation, p, slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Errorf("alerts.yaml: %v", err)
	}
	if groups == nil {
		t.FailNow()
	}
	var out []rulefmt.Rule
	for _, g := range groups.Groups {
		out = append(out, g.Rules...)
	}
	return out
}

// selected returns the metric names expr selects.
func selected(t *testing.T, expr string) []string {
	t.Helper()
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		t.Fatalf("parse %q: %v", expr, err)
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
				name = m.Value
			}
		}
		if name == "" {
			t.Errorf("%q selects series without naming a metric", expr)
		}
		names = append(names, name)
		return nil
	})
	return names
}

// TestEveryRuleSelectsAnAnsFlowMetric checks each rule's selectors against
// the families pkg/metrics exposes (a histogram's _bucket, _sum and
// _count), and that each rule can be routed and read.
func TestEveryRuleSelectsAnAnsFlowMetric(t *testing.T) {
	exposed := metrics.Exposed()
	for _, r := range rules(t) {
		names := selected(t, r.Expr)
		if len(names) == 0 {
			t.Errorf("%s selects no metric", r.Alert)
		}
		for _, n := range names {
			if !exposed[n] {
				t.Errorf("%s selects %s, which pkg/metrics does not expose", r.Alert, n)
			}
		}
		if r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
			t.Errorf("%s lacks a severity label, a summary or a description", r.Alert)
		}
	}
}

// scenario is a rule's bad and good series, in promqltest's load syntax
// (one sample a minute from 0 to 89m).
type scenario struct{ bad, good string }

var scenarios = map[string]scenario{
	"AnsFlowRunFailureRateHigh": {
		bad: `ansflow_runs_finished_total{pipeline="deploy",status="failed"} 0+1x90
			ansflow_runs_finished_total{pipeline="deploy",status="succeeded"} 0+1x90`,
		good: `ansflow_runs_finished_total{pipeline="deploy",status="failed"} 0+0x90
			ansflow_runs_finished_total{pipeline="deploy",status="succeeded"} 0+2x90
			ansflow_runs_finished_total{pipeline="rare",status="failed"} 0+0x80 1+0x10`,
	},
	"AnsFlowStepQueueWaitHigh": {
		bad: `ansflow_step_queue_wait_seconds_bucket{kind="docker",pool="default",le="60"} 0+0x90
			ansflow_step_queue_wait_seconds_bucket{kind="docker",pool="default",le="300"} 0+1x90
			ansflow_step_queue_wait_seconds_bucket{kind="docker",pool="default",le="600"} 0+10x90
			ansflow_step_queue_wait_seconds_bucket{kind="docker",pool="default",le="+Inf"} 0+10x90`,
		good: `ansflow_step_queue_wait_seconds_bucket{kind="docker",pool="default",le="60"} 0+10x90
			ansflow_step_queue_wait_seconds_bucket{kind="docker",pool="default",le="300"} 0+10x90
			ansflow_step_queue_wait_seconds_bucket{kind="docker",pool="default",le="600"} 0+10x90
			ansflow_step_queue_wait_seconds_bucket{kind="docker",pool="default",le="+Inf"} 0+10x90`,
	},
	"AnsFlowNoRunnerOnlineForQueuedSteps": {
		// two pipeline instances report the same shared figures
		bad: `ansflow_steps_queued{instance="a",kind="docker",pool="gpu"} 3x90
			ansflow_steps_queued{instance="b",kind="docker",pool="gpu"} 3x90
			ansflow_pool_runners_online{instance="a",kind="docker",pool="gpu"} 0x90
			ansflow_pool_runners_online{instance="b",kind="docker",pool="gpu"} 0x90
			ansflow_steps_queued{instance="a",kind="docker",pool="default"} 2x90
			ansflow_pool_runners_online{instance="a",kind="docker",pool="default"} 1x90`,
		good: `ansflow_steps_queued{instance="a",kind="docker",pool="gpu"} 3x90
			ansflow_pool_runners_online{instance="a",kind="docker",pool="gpu"} 1x90
			ansflow_steps_queued{instance="a",kind="k8s",pool="prod"} 0x90
			ansflow_pool_runners_online{instance="a",kind="k8s",pool="prod"} 0x90`,
	},
	"AnsFlowDeadLettersIncreasing": {
		bad:  `ansflow_dead_letters_total{stream="ANSFLOW_EVENTS"} 0+1x90`,
		good: `ansflow_dead_letters_total{stream="ANSFLOW_EVENTS"} 5+0x90`,
	},
	"AnsFlowAuditIngestLagHigh": {
		bad: `ansflow_audit_ingest_lag_seconds_bucket{stream="ANSFLOW_EVENTS",le="1"} 0+0x90
			ansflow_audit_ingest_lag_seconds_bucket{stream="ANSFLOW_EVENTS",le="60"} 0+0x90
			ansflow_audit_ingest_lag_seconds_bucket{stream="ANSFLOW_EVENTS",le="300"} 0+50x90
			ansflow_audit_ingest_lag_seconds_bucket{stream="ANSFLOW_EVENTS",le="+Inf"} 0+50x90`,
		good: `ansflow_audit_ingest_lag_seconds_bucket{stream="ANSFLOW_EVENTS",le="1"} 0+50x90
			ansflow_audit_ingest_lag_seconds_bucket{stream="ANSFLOW_EVENTS",le="60"} 0+50x90
			ansflow_audit_ingest_lag_seconds_bucket{stream="ANSFLOW_EVENTS",le="300"} 0+50x90
			ansflow_audit_ingest_lag_seconds_bucket{stream="ANSFLOW_EVENTS",le="+Inf"} 0+50x90`,
	},
}

// firing evaluates expr every minute over the rule's for duration up to
// 85m, as the rule manager would, and returns the series of the last
// evaluation if every evaluation had one (the alert fires), else nil.
func firing(t *testing.T, load, expr string, hold time.Duration) promql.Vector {
	t.Helper()
	st := promqltest.LoadedStorage(t, "load 1m\n"+indent(load))
	eng := promqltest.NewTestEngine(t, false, 0, 1e6)
	end := time.Unix(0, 0).UTC().Add(85 * time.Minute)
	var last promql.Vector
	for at := end.Add(-hold); !at.After(end); at = at.Add(time.Minute) {
		q, err := eng.NewInstantQuery(context.Background(), st, nil, expr, at)
		if err != nil {
			t.Fatalf("query %q: %v", expr, err)
		}
		res := q.Exec(context.Background())
		if res.Err != nil {
			t.Fatalf("eval %q at %s: %v", expr, at, res.Err)
		}
		v, err := res.Vector()
		if err != nil {
			t.Fatalf("eval %q: %v", expr, err)
		}
		q.Close()
		if len(v) == 0 {
			return nil
		}
		last = v
	}
	return last
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		b.WriteString("  " + strings.TrimSpace(l) + "\n")
	}
	return b.String()
}

// TestAlertsFireOnBadDataAndStayQuietOnGood evaluates every rule on its
// scenario: it must fire (for all of its for duration) on the bad series
// and not at all on the good ones.
func TestAlertsFireOnBadDataAndStayQuietOnGood(t *testing.T) {
	want := map[string]map[string]string{
		"AnsFlowRunFailureRateHigh":           {"pipeline": "deploy"},
		"AnsFlowStepQueueWaitHigh":            {"kind": "docker", "pool": "default"},
		"AnsFlowNoRunnerOnlineForQueuedSteps": {"kind": "docker", "pool": "gpu"},
		"AnsFlowDeadLettersIncreasing":        {"stream": "ANSFLOW_EVENTS"},
		"AnsFlowAuditIngestLagHigh":           {"stream": "ANSFLOW_EVENTS"},
	}
	seen := map[string]bool{}
	for _, r := range rules(t) {
		seen[r.Alert] = true
		sc, ok := scenarios[r.Alert]
		if !ok {
			t.Errorf("alert %s has no scenario", r.Alert)
			continue
		}
		t.Run(r.Alert, func(t *testing.T) {
			hold := time.Duration(r.For)
			v := firing(t, sc.bad, r.Expr, hold)
			if len(v) != 1 {
				t.Fatalf("on bad data: %d series firing (%v), want 1", len(v), v)
			}
			for k, val := range want[r.Alert] {
				if got := v[0].Metric.Get(k); got != val {
					t.Errorf("on bad data: fired with %s=%q, want %q (%v)", k, got, val, v[0].Metric)
				}
			}
			if v := firing(t, sc.good, r.Expr, 0); v != nil {
				t.Errorf("on good data: fired %v", v)
			}
		})
	}
	for a := range want {
		if !seen[a] {
			t.Errorf("alerts.yaml lacks %s", a)
		}
	}
}
