package engine_test

import (
	"context"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/services/k8s-runner/engine"
)

func int32p(n int32) *int32 { return &n }

func podTemplate(app string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": app}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: app, Image: app + ":1"}}}}
}

// deploy creates a Deployment of replicas through the engine and waits for
// its rollout.
func (h *harness) deploy(ns, name string, replicas int, image string) {
	h.t.Helper()
	h.run(h.step(engine.TypeDeploy, ns, name, map[string]any{"wait": true,
		"deployment_spec": map[string]any{"replicas": replicas, "image": image}}), event.StatusSucceeded, 60*time.Second)
}

// k8s_scale goes through the scale subresource of Deployments,
// StatefulSets and ReplicaSets and, with wait, until the replicas are ready.
func TestScale(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ns := h.c.namespace(t, "scale")
	ctx := context.Background()
	h.deploy(ns, "web", 1, "web:1")

	r := h.run(h.step(engine.TypeScale, ns, "web", map[string]any{"replicas": 3, "wait": true}), event.StatusSucceeded, 60*time.Second)
	wantOutputs(t, r, map[string]string{"replicas": "3", "previous_replicas": "1", "kind": "Deployment"})
	d, _ := h.c.cs.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
	if d.Status.ReadyReplicas != 3 || d.Status.Replicas != 3 {
		t.Errorf("deployment after scale: %d replicas, %d ready", d.Status.Replicas, d.Status.ReadyReplicas)
	}
	r = h.run(h.step(engine.TypeScale, ns, "web", map[string]any{"replicas": "0", "wait": "true"}), event.StatusSucceeded, 60*time.Second)
	wantOutputs(t, r, map[string]string{"replicas": "0", "previous_replicas": "3"})

	sts := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "db"}, Spec: appsv1.StatefulSetSpec{Replicas: int32p(1), ServiceName: "db",
		Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}, Template: podTemplate("db")}}
	if _, err := h.c.cs.AppsV1().StatefulSets(ns).Create(ctx, sts, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r = h.run(h.step(engine.TypeScale, ns, "db", map[string]any{"replicas": 2, "resource_type": "statefulset", "wait": true}), event.StatusSucceeded, 60*time.Second)
	wantOutputs(t, r, map[string]string{"replicas": "2", "kind": "StatefulSet"})

	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "cache"}, Spec: appsv1.ReplicaSetSpec{Replicas: int32p(1),
		Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "cache"}}, Template: podTemplate("cache")}}
	if _, err := h.c.cs.AppsV1().ReplicaSets(ns).Create(ctx, rs, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r = h.run(h.step(engine.TypeScale, ns, "cache", map[string]any{"replicas": 2, "resource_type": "rs", "wait": true}), event.StatusSucceeded, 60*time.Second)
	wantOutputs(t, r, map[string]string{"replicas": "2", "kind": "ReplicaSet"})
	got, _ := h.c.cs.AppsV1().ReplicaSets(ns).Get(ctx, "cache", metav1.GetOptions{})
	if got.Status.ReadyReplicas != 2 {
		t.Errorf("replicaset ready replicas %d, want 2", got.Status.ReadyReplicas)
	}

	r = h.run(h.step(engine.TypeScale, ns, "missing", map[string]any{"replicas": 2}), event.StatusFailed, 30*time.Second)
	wantContains(t, "error", r.Error, "deployments.apps "+ns+"/missing: not found")
	if _, err := h.c.cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "plain"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r = h.run(h.step(engine.TypeScale, ns, "plain", map[string]any{"replicas": 2, "resource_type": "configmap"}), event.StatusFailed, 30*time.Second)
	wantContains(t, "error", r.Error, "configmaps "+ns+"/plain has no scale subresource")
	r = h.run(h.step(engine.TypeScale, ns, "web", map[string]any{}), event.StatusFailed, 30*time.Second)
	wantContains(t, "error", r.Error, "invalid k8s_config: replicas: required")
}

// k8s_delete removes any kind (resolved through discovery, cluster-scoped
// ones too), by name or label selector, with a propagation policy, waiting
// until gone; deleting what is absent succeeds.
func TestDelete(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ns := h.c.namespace(t, "delete")
	ctx := context.Background()
	h.deploy(ns, "web", 2, "web:1")

	r := h.run(h.step(engine.TypeDelete, ns, "web", map[string]any{"propagation_policy": "Foreground"}), event.StatusSucceeded, 60*time.Second)
	wantOutputs(t, r, map[string]string{"deleted": "1", "kind": "Deployment"})
	wantContains(t, "stdout", r.Stdout, "deployments.apps/web deleted (propagation Foreground)", "gone")
	if _, err := h.c.cs.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("deployment still there after a waited delete: %v", err)
	}
	// Foreground propagation: the pods went before the Deployment.
	if pods, _ := h.c.cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"}); len(pods.Items) != 0 {
		t.Errorf("%d pods left after a foreground delete", len(pods.Items))
	}

	r = h.run(h.step(engine.TypeDelete, ns, "web", nil), event.StatusSucceeded, 30*time.Second)
	wantOutputs(t, r, map[string]string{"deleted": "0"})

	for _, name := range []string{"a", "b", "keep"} {
		role := "temp"
		if name == "keep" {
			role = "keep"
		}
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"role": role}}}
		if _, err := h.c.cs.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	r = h.run(h.step(engine.TypeDelete, ns, "inherited-name", map[string]any{"resource_type": "ConfigMap", "api_version": "v1", "label_selector": "role=temp"}),
		event.StatusSucceeded, 30*time.Second)
	wantOutputs(t, r, map[string]string{"deleted": "2"})
	left, _ := h.c.cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{LabelSelector: "role"})
	if len(left.Items) != 1 || left.Items[0].Name != "keep" {
		t.Errorf("config maps left: %v", left.Items)
	}

	role := "t-delete-" + randSuffix()
	if _, err := h.c.cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: role}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r = h.run(h.step(engine.TypeDelete, ns, role, map[string]any{"resource_type": "clusterroles.rbac.authorization.k8s.io", "wait": false}),
		event.StatusSucceeded, 30*time.Second)
	wantOutputs(t, r, map[string]string{"deleted": "1", "kind": "ClusterRole"})

	r = h.run(h.step(engine.TypeDelete, ns, "x", map[string]any{"resource_type": "widgets"}), event.StatusFailed, 30*time.Second)
	wantContains(t, "error", r.Error, `unknown resource type: cluster "local" serves no resource "widgets"`)
	r = h.run(h.step(engine.TypeDelete, ns, "x", map[string]any{"propagation_policy": "eventually"}), event.StatusFailed, 30*time.Second)
	wantContains(t, "error", r.Error, "propagation_policy", `must be one of Background, Foreground or Orphan, got "eventually"`)
}

// k8s_wait: rollout as kubectl decides it, pod readiness by selector, job
// completion, deletion, any Type=Status (cluster-scoped kinds too), and
// its failures.
func TestWait(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ns := h.c.namespace(t, "wait")
	ctx := context.Background()

	t.Run("available", func(t *testing.T) {
		h := h.with(t)
		h.run(h.step(engine.TypeDeploy, ns, "web", map[string]any{"deployment_spec": map[string]any{"replicas": 3, "image": "web:1"}}),
			event.StatusSucceeded, 60*time.Second)
		r := h.run(h.step(engine.TypeWait, ns, "web", map[string]any{"resource_type": "deployment", "condition": "available", "timeout": 300}),
			event.StatusSucceeded, 60*time.Second)
		wantOutputs(t, r, map[string]string{"revision": "1", "kind": "Deployment"})
		wantContains(t, "stdout", r.Stdout, `deployment "web" successfully rolled out`)
		d, _ := h.c.cs.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		if d.Status.AvailableReplicas != 3 {
			t.Errorf("wait returned with %d available replicas, want 3", d.Status.AvailableReplicas)
		}
	})

	t.Run("pods ready by selector", func(t *testing.T) {
		h := h.with(t)
		r := h.run(h.step(engine.TypeWait, ns, "", map[string]any{"pod_selector": "app=web", "timeout": "30s"}), event.StatusSucceeded, 60*time.Second)
		if n := len(strings.Split(r.Outputs["pods"], ",")); n != 3 {
			t.Errorf("pods output %q, want 3 pods", r.Outputs["pods"])
		}
	})

	t.Run("job complete", func(t *testing.T) {
		h := h.with(t)
		job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "migrate"}, Spec: batchv1.JobSpec{Template: podTemplate("migrate")}}
		job.Spec.Template.Spec.RestartPolicy = corev1.RestartPolicyNever
		if _, err := h.c.cs.BatchV1().Jobs(ns).Create(ctx, job, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		h.run(h.step(engine.TypeWait, ns, "migrate", map[string]any{"resource_type": "job", "timeout": 60}), event.StatusSucceeded, 90*time.Second)
	})

	t.Run("condition on a cluster-scoped kind", func(t *testing.T) {
		h := h.with(t)
		h.run(h.step(engine.TypeWait, ns, "ansflow-node-0", map[string]any{"resource_type": "nodes", "condition": "Ready=True", "timeout": 10}),
			event.StatusSucceeded, 30*time.Second)
		r := h.run(h.step(engine.TypeWait, ns, "ansflow-node-0", map[string]any{"resource_type": "node", "condition": "Ready=False", "timeout": 2}),
			event.StatusFailed, 30*time.Second)
		wantContains(t, "error", r.Error, "timed out after 2s waiting for nodes ansflow-node-0", "has Ready=True")
	})

	t.Run("deleted", func(t *testing.T) {
		h := h.with(t)
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "doomed"}}
		if _, err := h.c.cs.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		go func() {
			time.Sleep(500 * time.Millisecond) // let the wait start watching first
			_ = h.c.cs.CoreV1().ConfigMaps(ns).Delete(context.Background(), "doomed", metav1.DeleteOptions{})
		}()
		r := h.run(h.step(engine.TypeWait, ns, "doomed", map[string]any{"resource_type": "configmap", "condition": "deleted", "timeout": 30}),
			event.StatusSucceeded, 60*time.Second)
		wantContains(t, "stdout", r.Stdout, "configmaps "+ns+"/doomed: gone")
	})

	t.Run("progress deadline exceeded", func(t *testing.T) {
		h := h.with(t)
		h.run(h.step(engine.TypeDeploy, ns, "stuck", map[string]any{"deployment_spec": map[string]any{"image": "never-ready:1", "progress_deadline_seconds": 2}}),
			event.StatusSucceeded, 60*time.Second)
		r := h.run(h.step(engine.TypeWait, ns, "stuck", map[string]any{"timeout": 60}), event.StatusFailed, 90*time.Second)
		wantContains(t, "error", r.Error, "ProgressDeadlineExceeded", `deployment "stuck" exceeded its progress deadline`)
	})

	t.Run("rollout that is never available times out", func(t *testing.T) {
		h := h.with(t)
		h.run(h.step(engine.TypeDeploy, ns, "slow", map[string]any{"deployment_spec": map[string]any{"image": "never-ready:1"}}),
			event.StatusSucceeded, 60*time.Second)
		r := h.run(h.step(engine.TypeWait, ns, "slow", map[string]any{"timeout": 2}), event.StatusFailed, 30*time.Second)
		wantContains(t, "error", r.Error, "rollout of deployment "+ns+"/slow failed: Timeout: not rolled out within 2s",
			"0 of 1 updated replicas are available", "running but not ready")
	})

	t.Run("selector matches nothing", func(t *testing.T) {
		h := h.with(t)
		r := h.run(h.step(engine.TypeWait, ns, "", map[string]any{"pod_selector": "app=nobody", "timeout": 1}), event.StatusFailed, 30*time.Second)
		wantContains(t, "error", r.Error, `timed out after 1s waiting for pods in namespace `+ns+` matching "app=nobody": no matching pod`)
	})

	t.Run("missing namespace and object", func(t *testing.T) {
		h := h.with(t)
		r := h.run(h.step(engine.TypeWait, "no-such-namespace", "web", nil), event.StatusFailed, 30*time.Second)
		wantContains(t, "error", r.Error, `namespace "no-such-namespace" does not exist`)
		r = h.run(h.step(engine.TypeWait, ns, "nope", nil), event.StatusFailed, 30*time.Second)
		wantContains(t, "error", r.Error, "deployments.apps "+ns+"/nope: not found")
	})
}
