package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/services/docker-runner/dockertest"
)

// jaegerTrace is the part of Jaeger's query API answer
// (/api/traces/{id}) the tracing test reads.
type jaegerTrace struct {
	TraceID string `json:"traceID"`
	Spans   []struct {
		SpanID        string `json:"spanID"`
		OperationName string `json:"operationName"`
		ProcessID     string `json:"processID"`
		References    []struct {
			RefType string `json:"refType"`
			SpanID  string `json:"spanID"`
		} `json:"references"`
		Tags []struct {
			Key   string `json:"key"`
			Value any    `json:"value"`
		} `json:"tags"`
	} `json:"spans"`
	Processes map[string]struct {
		ServiceName string `json:"serviceName"`
	} `json:"processes"`
}

// span is one span of a jaegerTrace, with its service and tags.
type span struct {
	id, op, service, parent string
	tags                    map[string]string
}

func (tr *jaegerTrace) spans() map[string]*span {
	out := map[string]*span{}
	for _, s := range tr.Spans {
		sp := &span{id: s.SpanID, op: s.OperationName, service: tr.Processes[s.ProcessID].ServiceName, tags: map[string]string{}}
		for _, r := range s.References {
			if r.RefType == "CHILD_OF" {
				sp.parent = r.SpanID
			}
		}
		for _, tg := range s.Tags {
			sp.tags[tg.Key] = fmt.Sprint(tg.Value)
		}
		out[sp.id] = sp
	}
	return out
}

// ancestor returns the nearest ancestor of s (s excluded) for which match
// holds, or nil.
func ancestor(spans map[string]*span, s *span, match func(*span) bool) *span {
	for p := spans[s.parent]; p != nil; p = spans[p.parent] {
		if match(p) {
			return p
		}
	}
	return nil
}

// startJaeger starts the Jaeger binary (Jaeger v2, an OpenTelemetry
// Collector distribution) with in-memory storage, its OTLP HTTP receiver
// and query API on free loopback ports, and returns their base URLs.
func startJaeger(t *testing.T, bin string) (otlp, query string) {
	t.Helper()
	otlpAddr, queryAddr, grpcAddr := freePort(t), freePort(t), freePort(t)
	cfg := filepath.Join(t.TempDir(), "jaeger.yaml")
	if err := os.WriteFile(cfg, []byte(`service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_storage:
    backends:
      mem:
        memory:
          max_traces: 10000
  jaeger_query:
    storage:
      traces: mem
    http:
      endpoint: `+queryAddr+`
    grpc:
      endpoint: `+grpcAddr+`
receivers:
  otlp:
    protocols:
      http:
        endpoint: `+otlpAddr+`
exporters:
  jaeger_storage_exporter:
    trace_storage: mem
`), 0o600); err != nil {
		t.Fatal(err)
	}
	startProcess(t, bin, "--config", "file:"+cfg)
	waitTCP(t, otlpAddr)
	waitTCP(t, queryAddr)
	return "http://" + otlpAddr, "http://" + queryAddr
}

// TestTracingAcrossServices runs the distributed mode (the pipeline
// service, a docker runner, a Kubernetes runner and the audit service, each
// its own process) exporting to a real Jaeger, and checks that one run is
// one trace: from the API trigger through each step's dispatch to its
// execution by the runner, down to the Docker Engine and Kubernetes API
// calls, with the audit service's recording of the run's events in it too;
// and that the readiness checks' Engine and API server calls, made outside
// any span, are not traces of their own.
func TestTracingAcrossServices(t *testing.T) {
	jaeger := os.Getenv("ANSFLOW_TEST_JAEGER")
	if jaeger == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("ANSFLOW_TEST_JAEGER is not set: deploy/ci/setup.sh builds Jaeger (deploy/tracing/jaeger.sh)")
		}
		t.Skip("ANSFLOW_TEST_JAEGER is not set: run `eval $(bash deploy/tracing/jaeger.sh)`")
	}
	if os.Getenv("KUBECONFIG") == "" {
		t.Fatal("KUBECONFIG is not set: start the local control plane with `make cluster-up`")
	}
	cli := dockertest.Client(t)
	image := dockertest.BusyboxImage(t, cli)
	bin := t.TempDir()
	for _, b := range []struct{ name, pkg string }{
		{"ansflow", "."}, {"pipeline", "../../services/pipeline"}, {"docker-runner", "../../services/docker-runner"}, {"k8s-runner", "../../services/k8s-runner"},
		{"audit", "../../services/audit"},
	} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, b.name), b.pkg).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", b.name, err, out)
		}
	}
	otlp, query := startJaeger(t, jaeger)
	// Export every 100 ms, so the test need not wait for the default 5 s.
	env := []string{"OTEL_EXPORTER_OTLP_ENDPOINT=" + otlp, "OTEL_BSP_SCHEDULE_DELAY=100"}

	natsAddr, apiAddr := freePort(t), freePort(t)
	natsURL := "nats://" + natsAddr
	upDir := t.TempDir()
	startProcess(t, filepath.Join(bin, "ansflow"), "up", "--no-pipeline", "--no-runners", "--no-audit", "--nats", natsAddr, "--data-dir", upDir)
	waitTCP(t, natsAddr)
	env = append(env, "ANSFLOW_NATS_TOKEN_FILE="+filepath.Join(upDir, natsTokenFile))
	adminFile, admin := adminTokenFileFor(t)
	ops := map[string]string{"pipeline": freePort(t), "docker-runner": freePort(t), "k8s-runner": freePort(t), "audit": freePort(t)}
	startProcessEnv(t, env, filepath.Join(bin, "pipeline"), "--nats", natsURL, "--http", apiAddr, "--ops-addr", ops["pipeline"], "--admin-token-file", adminFile)
	startProcessEnv(t, env, filepath.Join(bin, "docker-runner"), "--nats", natsURL, "--ops-addr", ops["docker-runner"], "--pools", "default",
		"--id", "docker-a", "--work-dir", t.TempDir())
	startProcessEnv(t, env, filepath.Join(bin, "k8s-runner"), "--nats", natsURL, "--ops-addr", ops["k8s-runner"], "--clusters", "default",
		"--id", "k8s-a", "--work-dir", t.TempDir())
	startProcessEnv(t, env, filepath.Join(bin, "audit"), "--nats", natsURL, "--ops-addr", ops["audit"], "--data-dir", t.TempDir(),
		"--http", freePort(t))
	waitTCP(t, apiAddr)
	for name := range ops {
		waitReady(t, name, "http://"+ops[name], "[+]nats ok")
	}

	c := newClient("http://"+apiAddr, admin)
	ctx := context.Background()
	yaml := fmt.Sprintf(`pipeline:
  name: traced
  steps:
    - {name: build, type: docker_run, order: 1, docker_image: %q, command: "echo built"}
    - name: clean
      type: k8s_delete
      order: 2
      k8s_namespace: default
      k8s_resource_name: ansflow-tracing-absent
      k8s_config: {resource_type: deployment}
`, image)
	waitFor(t, 30*time.Second, "the pipeline to apply", func() (bool, string) {
		_, err := c.applyPipeline(ctx, "traced.yaml", []byte(yaml))
		return err == nil, fmt.Sprint(err)
	})
	run, err := c.trigger(ctx, "traced", apiv1.TriggerBody{})
	if err != nil {
		t.Fatal(err)
	}
	var r *apiv1.Run
	waitFor(t, 90*time.Second, "run "+run.ID+" to end", func() (bool, string) {
		if r, err = c.getRun(ctx, run.ID); err != nil {
			t.Fatal(err)
		}
		return r.Terminal(), r.Status
	})
	if r.Status != "succeeded" {
		t.Fatalf("run %s: %s", r.Status, r.Error)
	}

	// Poll Jaeger until the run's trace holds every span the test looks
	// for: spans arrive from three processes, each in its own batches.
	waitFor(t, 30*time.Second, "a complete trace of run "+run.ID+" in Jaeger", func() (bool, string) {
		problems, err := checkRunTrace(query, run.ID)
		if err != nil {
			return false, err.Error()
		}
		return len(problems) == 0, strings.Join(problems, "; ")
	})
	// The runners' readiness was checked above (the Engine's /_ping, the
	// API server's /version) before the run, so those spans were
	// exported, if at all, before the run's: none is a trace.
	for _, service := range []string{"ansflow-docker-runner", "ansflow-k8s-runner"} {
		var found struct {
			Data []jaegerTrace `json:"data"`
		}
		if err := getJSON(query+"/api/traces?service="+service+"&limit=1000&lookback=1h", &found); err != nil {
			t.Fatal(err)
		}
		for _, tr := range found.Data {
			for _, s := range tr.spans() {
				if s.parent == "" && s.tags["span.kind"] == "client" {
					t.Errorf("%s: trace %s is a client span %q made outside any span", service, tr.TraceID, s.op)
				}
			}
		}
	}
}

// checkRunTrace finds the trace of run runID in Jaeger's query API at
// query and returns what it lacks; none when it is complete.
func checkRunTrace(query, runID string) ([]string, error) {
	var found struct {
		Data []jaegerTrace `json:"data"`
	}
	if err := getJSON(query+"/api/traces?service=ansflow-pipeline&operation=run.trigger&limit=50&tags="+
		url.QueryEscape(`{"ansflow.run.id":"`+runID+`"}`), &found); err != nil {
		return nil, err
	}
	if len(found.Data) != 1 {
		return []string{fmt.Sprintf("%d traces with the run's run.trigger span, want 1", len(found.Data))}, nil
	}
	var full struct {
		Data []jaegerTrace `json:"data"`
	}
	if err := getJSON(query+"/api/traces/"+found.Data[0].TraceID, &full); err != nil {
		return nil, err
	}
	if len(full.Data) != 1 {
		return []string{"trace " + found.Data[0].TraceID + " not found"}, nil
	}
	spans := full.Data[0].spans()
	var problems []string
	services := map[string]bool{}
	for _, s := range spans {
		services[s.service] = true
	}
	for _, want := range []string{"ansflow-pipeline", "ansflow-docker-runner", "ansflow-k8s-runner", "ansflow-audit"} {
		if !services[want] {
			problems = append(problems, "no span of "+want)
		}
	}
	// The audit service stored the step requests the pipeline service
	// sent and the completions the runners sent, each in this trace.
	for _, ev := range []string{"step.requested", "step.completed"} {
		n := 0
		for _, s := range spans {
			if s.service == "ansflow-audit" && s.op == "audit.record" && strings.Contains(s.tags["cloudevents.event_type"], "."+ev+".") {
				n++
			}
		}
		if n < 2 {
			problems = append(problems, fmt.Sprintf("%d audit.record spans of %s events, want one per step (2)", n, ev))
		}
	}
	isRoot := func(s *span) bool { return s.op == "api.trigger" }
	for _, step := range []struct{ id, service, apiCall string }{
		{"build", "ansflow-docker-runner", "Docker Engine"}, {"clean", "ansflow-k8s-runner", "Kubernetes API"},
	} {
		var exec *span
		for _, s := range spans {
			if s.op == "step.execute" && s.tags["ansflow.step.id"] == step.id {
				exec = s
			}
		}
		if exec == nil {
			problems = append(problems, "no step.execute span of step "+step.id)
			continue
		}
		if exec.service != step.service {
			problems = append(problems, fmt.Sprintf("step %s executed in %s, want %s", step.id, exec.service, step.service))
		}
		if exec.tags["ansflow.step.status"] != "succeeded" {
			problems = append(problems, fmt.Sprintf("step %s execute span status %q", step.id, exec.tags["ansflow.step.status"]))
		}
		dispatch := ancestor(spans, exec, func(s *span) bool { return s.op == "step.dispatch" && s.tags["ansflow.step.id"] == step.id })
		if dispatch == nil {
			problems = append(problems, "step "+step.id+"'s step.execute span does not descend from its step.dispatch span")
		} else if dispatch.service != "ansflow-pipeline" || ancestor(spans, dispatch, isRoot) == nil {
			problems = append(problems, "step "+step.id+"'s dispatch span is not in the pipeline service under the api.trigger span")
		}
		calls := 0
		for _, s := range spans {
			if s.service == step.service && s.tags["span.kind"] == "client" && s.tags["http.request.method"] != "" &&
				ancestor(spans, s, func(p *span) bool { return p.id == exec.id }) != nil {
				calls++
			}
		}
		if calls == 0 {
			problems = append(problems, "no "+step.apiCall+" HTTP span under step "+step.id+"'s execution")
		}
	}
	return problems, nil
}
