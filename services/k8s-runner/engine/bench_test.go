package engine

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ansflow/ansflow/pkg/event"
)

// benchTask is the engine's view of a runner.Task for benchmarks: output is
// kept in memory and there is no source.
type benchTask struct {
	out, err bytes.Buffer
	// token is what the runner would have opened from the request's
	// sealed cluster token.
	token string
}

func (t *benchTask) Stdout() io.Writer                         { return &t.out }
func (t *benchTask) Stderr() io.Writer                         { return &t.err }
func (t *benchTask) Mask(string)                               {}
func (t *benchTask) SourceDir(context.Context) (string, error) { return "", fmt.Errorf("no source") }
func (t *benchTask) ClusterToken() (string, bool)              { return t.token, t.token != "" }

// BenchReplicas is the size of the Deployment both sides roll out.
const BenchReplicas = 2

// BenchKubeconfig returns $KUBECONFIG, failing the benchmark when it is
// unset: it runs against the local control plane.
func BenchKubeconfig(b testing.TB) string {
	b.Helper()
	p := os.Getenv("KUBECONFIG")
	if p == "" {
		b.Fatal("KUBECONFIG is not set: this benchmark runs against the local Kubernetes control plane. " +
			"Start it with `make cluster-up` (or `eval \"$(deploy/cluster/up.sh)\"`) and export the KUBECONFIG it prints.")
	}
	return p
}

// BenchNamespace creates a namespace for a benchmark with the engine's
// credentials and deletes it afterwards.
func BenchNamespace(b testing.TB, e *Engine) string {
	b.Helper()
	name := fmt.Sprintf("bench-%d", time.Now().UnixNano())
	ctx := context.Background()
	if _, err := e.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = e.cs.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	return name
}

// kubectlPath finds the kubectl the cluster scripts build:
// $ANSFLOW_KUBECTL, else the version cache (deploy/cluster/README.md), else
// $PATH.
func kubectlPath(b testing.TB) string {
	b.Helper()
	if p := os.Getenv("ANSFLOW_KUBECTL"); p != "" {
		return p
	}
	cache := os.Getenv("ANSFLOW_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "ansflow")
	}
	if p := filepath.Join(cache, "k8s-v1.37.2", "bin", "kubectl"); fileExists(p) {
		return p
	}
	p, err := exec.LookPath("kubectl")
	if err != nil {
		b.Fatal("no kubectl to compare against: build the cluster binaries with `make cluster-up` or set ANSFLOW_KUBECTL")
	}
	return p
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// BenchKubectl returns what the engine is compared with: iteration i
// applies the Deployment `name` with image web:<i> using `kubectl apply`
// and waits with `kubectl rollout status`, the same two steps a shell
// pipeline would run.
func BenchKubectl(b testing.TB, kubeconfig, ns, name string) func(i int) {
	b.Helper()
	kubectl := kubectlPath(b)
	dir := b.TempDir()
	return func(i int) {
		manifest := fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: %[1]s
  namespace: %[2]s
  labels: {app: %[1]s, app.kubernetes.io/managed-by: ansflow}
spec:
  replicas: %[3]d
  selector:
    matchLabels: {app: %[1]s}
  template:
    metadata:
      labels: {app: %[1]s}
    spec:
      containers:
      - name: %[1]s
        image: web:%[4]d
`, name, ns, BenchReplicas, i)
		file := filepath.Join(dir, "deployment.yaml")
		if err := os.WriteFile(file, []byte(manifest), 0o644); err != nil {
			b.Fatal(err)
		}
		for _, args := range [][]string{
			{"apply", "-f", file},
			{"rollout", "status", "deployment/" + name, "-n", ns, "--timeout", "120s"},
		} {
			cmd := exec.Command(kubectl, append([]string{"--kubeconfig", kubeconfig}, args...)...)
			if out, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("kubectl %v: %v\n%s", args, err, out)
			}
		}
	}
}

// BenchCompare times viaEngine and viaKubectl doing the same rollout b.N
// times each, alternating which goes first, and reports both and their
// ratio (engine/kubectl; below 1 means the engine is faster).
func BenchCompare(b *testing.B, viaEngine, viaKubectl func(i int)) {
	viaEngine(0) // warm both paths: connections, discovery caches
	viaKubectl(0)
	var eng, kctl time.Duration
	b.ResetTimer()
	for i := 1; i <= b.N; i++ {
		t0 := time.Now()
		if i%2 == 0 {
			viaEngine(i)
			t1 := time.Now()
			viaKubectl(i)
			eng += t1.Sub(t0)
			kctl += time.Since(t1)
		} else {
			viaKubectl(i)
			t1 := time.Now()
			viaEngine(i)
			kctl += t1.Sub(t0)
			eng += time.Since(t1)
		}
	}
	b.StopTimer()
	e := float64(eng.Nanoseconds()) / float64(b.N)
	k := float64(kctl.Nanoseconds()) / float64(b.N)
	b.ReportMetric(e/1e6, "engine-ms/op")
	b.ReportMetric(k/1e6, "kubectl-ms/op")
	b.ReportMetric(e/k, "engine/kubectl")
	fmt.Printf("%s: engine %.1f ms, kubectl %.1f ms, ratio %.3f over %d rollouts each\n", b.Name(), e/1e6, k/1e6, e/k, b.N)
}

// BenchmarkDeployWait compares a k8s_deploy of a Deployment (deployment_spec,
// 2 replicas, a new image each time) followed by k8s_wait (available)
// through the engine with `kubectl apply` + `kubectl rollout status` of the
// same Deployment.
func BenchmarkDeployWait(b *testing.B) {
	kubeconfig := BenchKubeconfig(b)
	e, err := New(Config{Kubeconfig: kubeconfig, Cluster: "local", Access: Access{Namespaces: []string{"*"}, Kinds: []string{"*"}}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	ns := BenchNamespace(b, e)
	ctx := context.Background()
	viaEngine := func(i int) {
		deploy := &event.StepRequested{RunID: "bench", StepID: "deploy", Attempt: i + 1, Type: TypeDeploy, Namespace: ns, ResourceName: "via-engine",
			K8sConfig: map[string]any{"deployment_spec": map[string]any{"replicas": BenchReplicas, "image": fmt.Sprintf("web:%d", i)}}}
		if _, err := e.execute(ctx, deploy, &benchTask{}); err != nil {
			b.Fatalf("k8s_deploy: %v", err)
		}
		wait := &event.StepRequested{RunID: "bench", StepID: "wait", Attempt: i + 1, Type: TypeWait, Namespace: ns, ResourceName: "via-engine",
			K8sConfig: map[string]any{"resource_type": "deployment", "condition": "available", "timeout": 120}}
		if _, err := e.execute(ctx, wait, &benchTask{}); err != nil {
			b.Fatalf("k8s_wait: %v", err)
		}
	}
	BenchCompare(b, viaEngine, BenchKubectl(b, kubeconfig, ns, "via-kubectl"))
}
