package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/services/k8s-runner/engine"
)

func TestParseConfig(t *testing.T) {
	env := map[string]string{"ANSFLOW_NATS_URL": "nats://n1:4222", "ANSFLOW_K8S_CLUSTERS": "prod=ctx-prod, dev ,default", "ANSFLOW_CONCURRENCY": "6"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	var out bytes.Buffer
	c, err := parseConfig([]string{"--concurrency", "3", "--id", "r1", "--kubeconfig", "/etc/kube/config", "--field-manager", "ci", "--grace", "1m"}, lookup, &out)
	if err != nil {
		t.Fatal(err)
	}
	if c.Engine.Access.Namespaces != nil || len(c.Engine.Access.Kinds) != len(engine.DefaultKinds) {
		t.Errorf("default access %+v", c.Engine.Access)
	}
	env["ANSFLOW_K8S_NAMESPACES"] = "apps, team-*"
	if ac, err := parseConfig([]string{"--kinds", "*,ClusterRole"}, lookup, &out); err != nil ||
		fmt.Sprint(ac.Engine.Access.Namespaces) != "[apps team-*]" || fmt.Sprint(ac.Engine.Access.Kinds) != "[* ClusterRole]" {
		t.Errorf("access flags: %+v, %v", ac, err)
	}
	delete(env, "ANSFLOW_K8S_NAMESPACES")
	want := []engine.Cluster{{Name: "prod", Context: "ctx-prod"}, {Name: "dev", Context: "dev"}, {Name: "default"}}
	if fmt.Sprint(c.Clusters) != fmt.Sprint(want) {
		t.Errorf("clusters %v, want %v", c.Clusters, want)
	}
	if c.NATSURL != "nats://n1:4222" || c.Runner.Concurrency != 3 || c.Runner.ID != "r1" || c.Runner.Kind != event.KindK8s ||
		c.Engine.Kubeconfig != "/etc/kube/config" || c.Engine.FieldManager != "ci" || c.Runner.Grace != time.Minute ||
		strings.Join(c.Runner.Targets, ",") != "prod,dev,default" {
		t.Errorf("config %+v", c)
	}
	none := func(string) (string, bool) { return "", false }
	c, err = parseConfig(nil, none, &out)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Clusters) != 1 || c.Clusters[0].Name != "default" || c.Clusters[0].Context != "" || c.Runner.Concurrency != 4 || !strings.HasPrefix(c.Runner.ID, "k8s-runner@") ||
		c.Engine.FieldManager != "ansflow" {
		t.Errorf("defaults %+v", c)
	}
	for _, bad := range [][]string{{"--clusters", " , "}, {"--clusters", "a=,b"}, {"--clusters", "=ctx"}, {"--clusters", "a,a=x"}, {"extra"}} {
		if _, err := parseConfig(bad, none, &out); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	env["ANSFLOW_CONCURRENCY"] = "many"
	if _, err := parseConfig(nil, lookup, &out); err == nil || !strings.Contains(err.Error(), "ANSFLOW_CONCURRENCY") {
		t.Errorf("bad env: %v", err)
	}
}

// TestClustersFile: --clusters-file lists each cluster with its own
// kubeconfig, context, namespaces and kinds; the flags are the defaults of
// entries that set none; mistakes name the file and line.
func TestClustersFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("clusters.yaml", `clusters:
  - name: prod
    kubeconfig: /etc/ansflow/prod.kubeconfig
    context: prod-deployer
    namespaces: [apps-*]
    kinds: [Deployment, Service]
  - name: dev
    context: dev
`)
	none := func(string) (string, bool) { return "", false }
	var out strings.Builder
	c, err := parseConfig([]string{"--clusters-file", good, "--namespaces", "dev-*", "--kubeconfig", "/etc/kube/config"}, none, &out)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.Runner.Targets, ",") != "prod,dev" {
		t.Fatalf("targets %v", c.Runner.Targets)
	}
	prod, dev := c.Clusters[0].Config(c.Engine), c.Clusters[1].Config(c.Engine)
	if prod.Kubeconfig != "/etc/ansflow/prod.kubeconfig" || prod.Context != "prod-deployer" || prod.Cluster != "prod" ||
		fmt.Sprint(prod.Access.Namespaces) != "[apps-*]" || fmt.Sprint(prod.Access.Kinds) != "[Deployment Service]" {
		t.Errorf("prod engine config %+v", prod)
	}
	if dev.Kubeconfig != "/etc/kube/config" || dev.Context != "dev" || fmt.Sprint(dev.Access.Namespaces) != "[dev-*]" ||
		len(dev.Access.Kinds) != len(engine.DefaultKinds) {
		t.Errorf("dev engine config (flag defaults) %+v", dev)
	}
	for _, tc := range []struct{ body, want string }{
		{"clusters:\n  - name: a\n    contxt: x\n", "line 3: field contxt not found"},
		{"clusters:\n  - context: x\n", "bad.yaml:2: clusters[0].name: required"},
		{"clusters:\n  - name: a\n  - name: a\n", `bad.yaml:3: clusters[1].name: "a" is also listed at line 2`},
		{"clusters:\n  - name: a\n    namespaces: [\"[\"]\n", "bad.yaml:2: clusters[0] (a): namespaces:"},
		{"clusters: []\n", "no clusters listed"},
	} {
		_, err := parseConfig([]string{"--clusters-file", write("bad.yaml", tc.body)}, none, &out)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.body, err, tc.want)
		}
	}
	if _, err := parseConfig([]string{"--clusters-file", good, "--clusters", "x"}, none, &out); err == nil || !strings.Contains(err.Error(), "exclude each other") {
		t.Errorf("--clusters with --clusters-file: %v", err)
	}
}

// TestRunServesClusters runs the real main loop against an in-process
// JetStream server and the local control plane, serving the current context
// as "default" and the same context by name as "local": a step sent to
// either cluster's subject is executed there.
func TestRunServesClusters(t *testing.T) {
	kubeconfig := os.Getenv("KUBECONFIG")
	if kubeconfig == "" {
		t.Fatal("KUBECONFIG is not set: this test runs against the local Kubernetes control plane. " +
			"Start it with `make cluster-up` (or `eval \"$(deploy/cluster/up.sh)\"`) and export the KUBECONFIG it prints.")
	}
	ns := natstest.Run(t)
	var out bytes.Buffer
	cfg, err := parseConfig([]string{"--nats", ns.ClientURL(), "--clusters", "default,local=ansflow-local", "--work-dir", t.TempDir(),
		"--log-level", "warn"}, func(string) (string, bool) { return "", false }, &out)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	for _, target := range []string{"default", "local"} {
		deadline := time.Now().Add(20 * time.Second)
		for {
			if _, err := ns.JS.Consumer(ctx, event.StreamSteps, runner.DurableName(event.KindK8s, target)); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no consumer for cluster %s", target)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for _, target := range []string{"default", "local"} {
		runID := fmt.Sprintf("main-%s-%d", target, time.Now().UnixNano())
		req := event.StepRequested{RunID: runID, StepID: "wait", Attempt: 1, Type: "k8s_wait", Kind: event.KindK8s, Target: target,
			ResourceName: "ansflow-node-0", K8sConfig: map[string]any{"resource_type": "node", "condition": "Ready", "timeout": 10}}
		e, err := event.New("ansflow/test", event.TypeStepRequested, event.Meta{RunID: runID, StepID: "wait", Attempt: 1}, req)
		if err != nil {
			t.Fatal(err)
		}
		if err := bus.Publish(ctx, ns.JS, event.StepRequestedSubject(event.KindK8s, target), e); err != nil {
			t.Fatal(err)
		}
		cons, err := ns.JS.OrderedConsumer(ctx, event.StreamEvents, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{event.LifecycleSubject(event.TypeStepCompleted, runID)}})
		if err != nil {
			t.Fatal(err)
		}
		msg, err := cons.Next(jetstream.FetchMaxWait(30 * time.Second))
		if errors.Is(err, jetstream.ErrNoMessages) {
			t.Fatalf("cluster %s: no step.completed", target)
		}
		if err != nil {
			t.Fatal(err)
		}
		var c event.StepCompleted
		if err := json.Unmarshal(msg.Data(), &c); err != nil {
			t.Fatal(err)
		}
		if c.Status != event.StatusSucceeded || !strings.HasSuffix(c.Runner, "/"+target) {
			t.Errorf("cluster %s: %s by %s: %s", target, c.Status, c.Runner, c.Error)
		}
	}
}
