package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/services/docker-runner/dockertest"
)

// TestSeedPipelineEndToEnd runs the original report's pipeline file, as-is,
// through `ansflow run` on the embedded stack: docker steps on the real
// Docker Engine and an authenticated registry, k8s steps on the local
// control plane (make cluster-up), and the branch condition deciding the
// scale step.
func TestSeedPipelineEndToEnd(t *testing.T) {
	if os.Getenv("KUBECONFIG") == "" {
		t.Fatal("KUBECONFIG is not set: start the local control plane with `make cluster-up` (make test does)")
	}
	dockertest.Client(t) // fails the test when the Docker Engine is not reachable
	if out, err := exec.Command("bash", "../../deploy/demo/base-images.sh", "node").CombinedOutput(); err != nil {
		t.Fatalf("base images: %v\n%s", err, out)
	}
	reg := dockertest.StartRegistry(t, "seed", "seed-registry-pw-42")
	t.Setenv("SEED_REGISTRY_PASSWORD", reg.Password)
	cfg := filepath.Join(t.TempDir(), "ansflow.yaml")
	os.WriteFile(cfg, []byte(`registries:
  - {id: "1", name: local, url: "`+reg.Host+`", username: seed, password_env: SEED_REGISTRY_PASSWORD}
clusters:
  - {id: "1", name: local, context: ansflow-local, namespaces: [development]}
  - {id: "0", name: default, context: ansflow-local, namespaces: [development]}
`), 0o600)

	// the cluster side of the seed: its namespace, and the integration tests
	// where kwok runs exec commands
	rc, err := clientcmd.BuildConfigFromFlags("", os.Getenv("KUBECONFIG"))
	if err != nil {
		t.Fatal(err)
	}
	kc := kubernetes.NewForConfigOrDie(rc)
	ctx := context.Background()
	_, err = kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "development"}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	_ = kc.AppsV1().Deployments("development").Delete(ctx, "my-app", metav1.DeleteOptions{})
	execDir := os.Getenv("ANSFLOW_CLUSTER_EXEC_WORKDIR")
	if execDir == "" {
		state := os.Getenv("ANSFLOW_CLUSTER_DIR")
		if state == "" {
			home, _ := os.UserHomeDir()
			state = filepath.Join(home, ".local", "state", "ansflow-cluster")
		}
		execDir = filepath.Join(state, "exec")
	}
	if out, err := exec.Command("cp", "-r", "../../examples/seed/package.json", "../../examples/seed/app.js", "../../examples/seed/tests", execDir+"/").CombinedOutput(); err != nil {
		t.Fatalf("prepare exec dir: %v %s", err, out)
	}

	run := func(branch string) *apiv1.Run {
		t.Helper()
		code, out := capture(t, "run", "../../examples/seed/pipeline.yaml", "--config", cfg, "--branch", branch, "--output", "json", "--data-dir", t.TempDir())
		var r apiv1.Run
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("exit %d, output is not a run: %v\n%s", code, err, out)
		}
		if (code == 0) != (r.Status == "succeeded") {
			t.Errorf("exit %d for a %s run", code, r.Status)
		}
		return &r
	}
	r := run("main")
	if r.Status != "succeeded" {
		for _, s := range r.Steps {
			t.Logf("%s: %s %s\nstdout: %s\nstderr: %s", s.Name, s.Status, s.Error, s.Logs.Stdout, s.Logs.Stderr)
		}
		t.Fatalf("seed run on main: %s (%s)", r.Status, r.Error)
	}
	want := reg.Host + "/my-app:1"
	if r.Steps[2].Outputs["image"] != want {
		t.Errorf("push output image = %q, want %q", r.Steps[2].Outputs["image"], want)
	}
	if !strings.Contains(r.Steps[1].Logs.Stdout, "# pass 3") || !strings.Contains(r.Steps[5].Logs.Stdout, "2 passed") {
		t.Errorf("npm test / pytest output:\n%s\n%s", r.Steps[1].Logs.Stdout, r.Steps[5].Logs.Stdout)
	}
	dep, err := kc.AppsV1().Deployments("development").Get(ctx, "my-app", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if img := dep.Spec.Template.Spec.Containers[0].Image; img != want {
		t.Errorf("deployed image = %q, want %q ({{docker_image}} after the push)", img, want)
	}
	if *dep.Spec.Replicas != 5 {
		t.Errorf("replicas = %d, want 5 after the scale step on main", *dep.Spec.Replicas)
	}

	r = run("feature/x")
	if r.Status != "succeeded" || r.Steps[6].Status != "skipped" || !strings.Contains(r.Steps[6].SkipReason, "branch_equals") {
		t.Fatalf("seed run on a feature branch: %s, scale %s (%s)", r.Status, r.Steps[6].Status, r.Steps[6].SkipReason)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		dep, _ = kc.AppsV1().Deployments("development").Get(ctx, "my-app", metav1.GetOptions{})
		if *dep.Spec.Replicas == 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if *dep.Spec.Replicas != 2 {
		t.Errorf("replicas = %d after the feature-branch deploy, want the spec's 2", *dep.Spec.Replicas)
	}
}
