package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/spec"
	k8sengine "github.com/ansflow/ansflow/services/k8s-runner/engine"
)

// TestKubeContext: the embedded k8s runner uses only a context named by the
// config, --kube-context or an explicitly set $KUBECONFIG, and `ansflow run`
// says which cluster and context each Kubernetes step uses, or fails before
// the run when a step's cluster has none.
func TestKubeContext(t *testing.T) {
	kubeconfig := os.Getenv("KUBECONFIG")
	if kubeconfig == "" {
		t.Fatal("KUBECONFIG is not set: start the local control plane with `make cluster-up`")
	}
	ctx := context.Background()
	p, err := spec.Parse("k.yaml", []byte(`pipeline:
  name: k
  steps:
    - name: wait
      type: k8s_wait
      k8s_namespace: apps
      k8s_resource_name: web
      k8s_config: {resource_type: deployment}
    - name: deploy
      type: k8s_deploy
      k8s_cluster: 1
      k8s_namespace: apps
      k8s_resource_name: web
      k8s_config: {deployment_spec: {image: "web:1"}}
`))
	if err != nil {
		t.Fatal(err)
	}
	fc := &fileConfig{Clusters: []clusterConfig{{ID: "1", Cluster: k8sengine.Cluster{Name: "local", Context: "ansflow-local", Namespaces: []string{"apps"}}}}}
	announce := func(cfg stackConfig) (string, error) {
		served, _ := newK8sEngines(ctx, fc, cfg, zap.NewNop())
		st := &stack{}
		st.recordClusters(fc, served)
		var out bytes.Buffer
		err := announceClusters(&out, p, st)
		return out.String(), err
	}

	// no $KUBECONFIG, no --kube-context: ~/.kube/config's current context is
	// never tried
	t.Setenv("KUBECONFIG", "")
	_, err = announce(stackConfig{})
	if err == nil || !strings.Contains(err.Error(), `step "wait" (k8s_wait): cluster "default" (steps without k8s_cluster) has no kubeconfig context: pass --kube-context, export KUBECONFIG`) {
		t.Errorf("without a named context: %v", err)
	}

	// --kube-context names it
	t.Setenv("KUBECONFIG", kubeconfig)
	out, err := announce(stackConfig{KubeContext: "ansflow-local"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`step "wait" (k8s_wait) uses cluster "default": context "ansflow-local" at https://`,
		`step "deploy" (k8s_deploy) uses cluster "local": context "ansflow-local" at https://`, "namespaces apps"} {
		if !strings.Contains(out, want) {
			t.Errorf("announcement lacks %q:\n%s", want, out)
		}
	}

	// an explicitly set $KUBECONFIG: its current context
	out, err = announce(stackConfig{})
	if err != nil || !strings.Contains(out, `uses cluster "default": context the current context of $KUBECONFIG at https://`) {
		t.Errorf("with $KUBECONFIG: %v\n%s", err, out)
	}

	// and the whole command fails before running anything
	t.Setenv("KUBECONFIG", "")
	file := filepath.Join(t.TempDir(), "k.yaml")
	os.WriteFile(file, []byte("pipeline:\n  name: k\n  steps:\n    - name: wait\n      type: k8s_wait\n      k8s_namespace: apps\n      k8s_resource_name: web\n      k8s_config: {resource_type: deployment}\n"), 0o644)
	if code, _ := capture(t, "run", file, "--data-dir", t.TempDir()); code == exitOK {
		t.Errorf("ansflow run without a context succeeded")
	}
}
