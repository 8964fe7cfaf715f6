package engine_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/runner/runnertest"
	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/pkg/source"
	"github.com/ansflow/ansflow/services/k8s-runner/engine"
)

// Cluster targets the test runners serve: the admin credentials of the
// local control plane, and a service account that may do nothing.
const (
	clusterAdmin      = "local"
	clusterRestricted = "restricted"
)

// kubeconfigPath returns $KUBECONFIG. The tests need a real control plane
// and fail without one: CI starts it, and so should a developer.
func kubeconfigPath(t testing.TB) string {
	t.Helper()
	p := os.Getenv("KUBECONFIG")
	if p == "" {
		t.Fatal("KUBECONFIG is not set: these tests run against the local Kubernetes control plane. " +
			"Start it with `make cluster-up` (or `eval \"$(deploy/cluster/up.sh)\"`) and export the KUBECONFIG it prints.")
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("KUBECONFIG=%s: %v; run `make cluster-up` to (re)start the local control plane", p, err)
	}
	return p
}

// cluster is the admin view of the local control plane the tests use to
// prepare and check what the engine does.
type cluster struct {
	path string
	rest *rest.Config
	cs   kubernetes.Interface
	dyn  dynamic.Interface
}

var (
	clusterOnce sync.Once
	theCluster  *cluster
	clusterErr  error
)

func adminCluster(t testing.TB) *cluster {
	t.Helper()
	path := kubeconfigPath(t)
	clusterOnce.Do(func() {
		rc, err := clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			clusterErr = err
			return
		}
		rc.QPS, rc.Burst = 100, 200
		c := &cluster{path: path, rest: rc}
		if c.cs, err = kubernetes.NewForConfig(rc); err != nil {
			clusterErr = err
			return
		}
		if c.dyn, err = dynamic.NewForConfig(rc); err != nil {
			clusterErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := c.cs.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{}); err != nil {
			clusterErr = fmt.Errorf("the cluster in KUBECONFIG=%s does not answer (run `make cluster-up`): %w", path, err)
			return
		}
		theCluster = c
	})
	if clusterErr != nil {
		t.Fatal(clusterErr)
	}
	return theCluster
}

func randSuffix() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// namespace creates a fresh namespace deleted when the test ends.
func (c *cluster) namespace(t testing.TB, prefix string) string {
	t.Helper()
	name := fmt.Sprintf("t-%s-%s", prefix, randSuffix())
	ctx := context.Background()
	if _, err := c.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.cs.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	return name
}

// restricted returns a rest.Config impersonating a service account of ns
// that has no RBAC rights at all (the admin may impersonate anyone).
func (c *cluster) restricted(t testing.TB, ns string) *rest.Config {
	t.Helper()
	ctx := context.Background()
	sa := "nobody"
	if _, err := c.cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rc := rest.CopyConfig(c.rest)
	rc.Impersonate = rest.ImpersonationConfig{UserName: fmt.Sprintf("system:serviceaccount:%s:%s", ns, sa)}
	return rc
}

// pod creates a pod (scheduled onto a kwok node, so it becomes Running and
// Ready) and waits until it runs.
func (c *cluster) pod(t testing.TB, ns, name string, labels map[string]string, containers ...string) *corev1.Pod {
	t.Helper()
	if len(containers) == 0 {
		containers = []string{"main"}
	}
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	for _, cn := range containers {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: cn, Image: "busybox:test"})
	}
	ctx := context.Background()
	if _, err := c.cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var got *corev1.Pod
	eventually(t, 30*time.Second, func() bool {
		var err error
		got, err = c.cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		return err == nil && got.Status.Phase == corev1.PodRunning
	}, "pod %s/%s never ran", ns, name)
	return got
}

// podLogs makes kwok serve file as the log of pod (a kwok Logs object).
func (c *cluster) podLogs(t testing.TB, ns, pod, file string) {
	t.Helper()
	gvr := schema.GroupVersionResource{Group: "kwok.x-k8s.io", Version: "v1alpha1", Resource: "logs"}
	o := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Logs",
		"metadata": map[string]any{"name": pod, "namespace": ns},
		"spec":     map[string]any{"logs": []any{map[string]any{"logsFile": file, "follow": true}}},
	}}
	if _, err := c.dyn.Resource(gvr).Namespace(ns).Create(context.Background(), o, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// eventually polls cond until it holds or d passes.
func eventually(t testing.TB, d time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf(format, args...)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// harness is a real in-process JetStream server with the real runner loop
// serving engines for the local control plane: target "local" with the
// admin credentials and, once restrict is called, "restricted".
type harness struct {
	t  testing.TB
	ns *natstest.Server
	c  *cluster
}

var runSeq atomic.Int64

func newHarness(t testing.TB) *harness {
	t.Helper()
	c := adminCluster(t)
	h := &harness{t: t, ns: natstest.Run(t), c: c}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bus.EnsureStreams(ctx, h.ns.JS, 1); err != nil {
		t.Fatal(err)
	}
	eng, err := engine.New(engine.Config{Kubeconfig: c.path, Cluster: clusterAdmin, Access: testAccess}, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
	if err != nil {
		t.Fatal(err)
	}
	h.serve(clusterAdmin, eng)
	return h
}

// with returns h reporting to t, for subtests.
func (h *harness) with(t testing.TB) *harness {
	c := *h
	c.t = t
	return &c
}

// restrict serves target "restricted" with an engine impersonating a
// service account of ns without rights.
func (h *harness) restrict(ns string) {
	h.t.Helper()
	eng, err := engine.New(engine.Config{RESTConfig: h.c.restricted(h.t, ns), Cluster: clusterRestricted, Access: testAccess},
		zaptest.NewLogger(h.t, zaptest.Level(zap.WarnLevel)))
	if err != nil {
		h.t.Fatal(err)
	}
	h.serve(clusterRestricted, eng)
}

// poolIdentity is the secrets identity of the test runners' pools.
var poolIdentity = func() *secret.Identity {
	id, err := secret.GenerateIdentity()
	if err != nil {
		panic(err)
	}
	return id
}()

// seal seals value as the secret name, environment variable env, to the
// test runners' identity for req's attempt.
func seal(t testing.TB, req *event.StepRequested, name, env, value string) event.SealedSecret {
	t.Helper()
	boxes, err := secret.Seal([]byte(value), secret.Binding{RunID: req.RunID, StepID: req.StepID, Attempt: req.Attempt, Name: name, Env: env},
		[]string{poolIdentity.PublicKey()})
	if err != nil {
		t.Fatal(err)
	}
	return event.SealedSecret{Name: name, Env: env, Boxes: boxes}
}

// serve runs a runner loop for target with eng until the test ends.
func (h *harness) serve(target string, eng runner.Engine) {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cfg := runner.Config{Kind: event.KindK8s, Targets: []string{target}, ID: "test-" + target, Concurrency: 4,
		WorkDir: h.t.TempDir(), Lease: 30 * time.Second, Identity: poolIdentity}
	if err := cfg.Validate(); err != nil {
		h.t.Fatal(err)
	}
	r := runner.New(cfg, h.ns.NC, h.ns.JS, eng, &source.Fetcher{JS: h.ns.JS}, zaptest.NewLogger(h.t, zaptest.Level(zap.WarnLevel)))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = r.Run(ctx)
	}()
	h.t.Cleanup(func() { cancel(); <-done })
	eventually(h.t, 10*time.Second, func() bool {
		_, err := h.ns.JS.Consumer(context.Background(), event.StreamSteps, runner.DurableName(event.KindK8s, target))
		return err == nil
	}, "runner for %s never subscribed", target)
}

// step returns a request of typ for the admin cluster in a fresh run.
func (h *harness) step(typ, ns, name string, cfg map[string]any) *event.StepRequested {
	n := runSeq.Add(1)
	return &event.StepRequested{RunID: fmt.Sprintf("run-%d-%d", time.Now().UnixNano(), n), StepID: "step-1", StepName: typ,
		Pipeline: "k8s-engine-test", Attempt: 1, Type: typ, Kind: event.KindK8s, Target: clusterAdmin, Cluster: clusterAdmin,
		Namespace: ns, ResourceName: name, K8sConfig: cfg, RequestedAt: time.Now().UTC()}
}

// upload stores dir as req's run source.
func (h *harness) upload(req *event.StepRequested, dir string) {
	h.t.Helper()
	src, err := source.Upload(context.Background(), h.ns.JS, dir, req.RunID)
	if err != nil {
		h.t.Fatal(err)
	}
	req.Source = src
}

// result is what a step left on the bus.
type result struct {
	*event.StepCompleted
	Stdout, Stderr string
	Took           time.Duration
}

func (r *result) String() string {
	b, _ := json.MarshalIndent(r.StepCompleted, "", "  ")
	return fmt.Sprintf("%s\n--- stdout:\n%s--- stderr:\n%s", b, r.Stdout, r.Stderr)
}

// exec publishes req to its target and waits for its completion.
func (h *harness) exec(req *event.StepRequested, timeout time.Duration) *result {
	h.t.Helper()
	start := time.Now()
	e, err := event.New("ansflow/test", event.TypeStepRequested, event.Meta{RunID: req.RunID, StepID: req.StepID, Attempt: req.Attempt}, req)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout+10*time.Second)
	defer cancel()
	if err := bus.Publish(ctx, h.ns.JS, event.StepRequestedSubject(event.KindK8s, req.Target), e); err != nil {
		h.t.Fatal(err)
	}
	cons, err := h.ns.JS.OrderedConsumer(ctx, event.StreamEvents, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{event.LifecycleSubject(event.TypeStepCompleted, req.RunID)}})
	if err != nil {
		h.t.Fatal(err)
	}
	deadline := time.Now().Add(timeout)
	for {
		msg, err := cons.Next(jetstream.FetchMaxWait(time.Until(deadline)))
		if err != nil {
			if errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, context.DeadlineExceeded) || time.Now().After(deadline) {
				h.t.Fatalf("no step.completed for %s %s within %s", req.Type, req.RunID, timeout)
			}
			h.t.Fatalf("await step.completed: %v", err)
		}
		var c event.StepCompleted
		if err := json.Unmarshal(msg.Data(), &c); err != nil {
			h.t.Fatal(err)
		}
		if c.StepID != req.StepID || c.Attempt != req.Attempt {
			continue
		}
		r := &result{StepCompleted: &c, Took: time.Since(start)}
		r.Stdout, r.Stderr = h.logs(req)
		if _, bench := h.t.(*testing.B); !bench { // a benchmark would print every step
			h.t.Logf("%s %s/%s: %s in %s", req.Type, req.Namespace, req.ResourceName, c.Status, r.Took.Round(time.Millisecond))
		}
		return r
	}
}

// logs returns the step's stdout and stderr as published on the bus.
func (h *harness) logs(req *event.StepRequested) (stdout, stderr string) {
	h.t.Helper()
	return runnertest.StepLogs(h.t, h.ns.JS, req.RunID, req.StepID)
}

// run executes req and checks its status.
func (h *harness) run(req *event.StepRequested, status string, timeout time.Duration) *result {
	h.t.Helper()
	r := h.exec(req, timeout)
	if os.Getenv("ANSFLOW_TEST_VERBOSE") != "" {
		h.t.Logf("%s", r)
	}
	if r.Status != status {
		h.t.Fatalf("%s: status %s, want %s:\n%s", req.Type, r.Status, status, r)
	}
	return r
}

func wantContains(t testing.TB, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%s lacks %q:\n%s", what, sub, s)
		}
	}
}

func wantOutputs(t testing.TB, r *result, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if r.Outputs[k] != v {
			t.Errorf("output %s = %q, want %q:\n%s", k, r.Outputs[k], v, r)
		}
	}
}

// writeTree writes files (path → content) under a new directory.
func writeTree(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// criLog formats lines as a CRI log file, the format kwok serves.
func criLog(lines ...string) string {
	var b strings.Builder
	for _, l := range lines {
		fmt.Fprintf(&b, "%s stdout F %s\n", time.Now().UTC().Format(time.RFC3339Nano), l)
	}
	return b.String()
}

// fatalRecorder is a testing.TB that records Fatal messages instead of
// stopping the test.
type fatalRecorder struct {
	testing.TB
	msgs []string
}

func (f *fatalRecorder) Helper()                   {}
func (f *fatalRecorder) Fatal(args ...any)         { f.msgs = append(f.msgs, fmt.Sprint(args...)) }
func (f *fatalRecorder) Fatalf(s string, a ...any) { f.msgs = append(f.msgs, fmt.Sprintf(s, a...)) }

// Without a control plane the tests fail, and say how to start one: CI
// starts it, so a missing cluster must never pass silently as skipped.
func TestMissingClusterFails(t *testing.T) {
	t.Setenv("KUBECONFIG", "")
	rec := &fatalRecorder{TB: t}
	kubeconfigPath(rec)
	if len(rec.msgs) == 0 || !strings.Contains(rec.msgs[0], "make cluster-up") {
		t.Errorf("fatal messages %q, want one telling to run make cluster-up", rec.msgs)
	}
}

// testAccess lets the tests' steps touch every namespace and the kinds they
// use; TestAccess covers the defaults.
var testAccess = engine.Access{Namespaces: []string{"*"},
	Kinds: []string{"*", "Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}}
