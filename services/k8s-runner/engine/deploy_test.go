package engine_test

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/services/k8s-runner/engine"
)

// The seed's deployment_spec, extended with resources, labels and probes,
// becomes a Deployment and a Service through server-side apply; the
// revision output follows each template change, and re-applying the same
// spec changes nothing.
func TestDeploySpec(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ns := h.c.namespace(t, "deploy")
	spec := func(image string) map[string]any {
		return map[string]any{
			"wait": true,
			"deployment_spec": map[string]any{
				"replicas": 2,
				"image":    image,
				"ports": []any{
					map[string]any{"container_port": 8080},
					map[string]any{"container_port": 9090, "protocol": "udp", "service_port": 90},
				},
				"environment": map[string]any{"NODE_ENV": "production", "VERSION": float64(7)},
				"resources": map[string]any{
					"requests": map[string]any{"cpu": "100m", "memory": "64Mi"},
					"limits":   map[string]any{"memory": "128Mi"},
				},
				"labels": map[string]any{"tier": "web"},
				"probes": map[string]any{
					"readiness": map[string]any{"http_get": map[string]any{"path": "/healthz", "port": 8080}, "period_seconds": "5"},
					"liveness":  map[string]any{"tcp_socket": map[string]any{"port": "8080"}},
				},
			},
		}
	}
	r := h.run(h.step(engine.TypeDeploy, ns, "my-app", spec("registry.local/my-app:1")), event.StatusSucceeded, 90*time.Second)
	wantOutputs(t, r, map[string]string{"revision": "1", "namespace": ns, "name": "my-app", "kind": "Deployment", "service": "my-app"})
	wantContains(t, "stdout", r.Stdout, "deployment.apps/my-app applied", "successfully rolled out")

	ctx := context.Background()
	d, err := h.c.cs.AppsV1().Deployments(ns).Get(ctx, "my-app", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Status.AvailableReplicas != 2 {
		t.Errorf("available replicas %d, want 2", d.Status.AvailableReplicas)
	}
	if got := d.Spec.Selector.MatchLabels; len(got) != 1 || got["app"] != "my-app" {
		t.Errorf("selector %v, want app=my-app", got)
	}
	c := d.Spec.Template.Spec.Containers[0]
	if c.Name != "my-app" || c.Image != "registry.local/my-app:1" {
		t.Errorf("container %s image %s", c.Name, c.Image)
	}
	if len(c.Env) != 2 || c.Env[0].Name != "NODE_ENV" || c.Env[1].Value != "7" {
		t.Errorf("env %v", c.Env)
	}
	if c.Resources.Requests.Cpu().String() != "100m" || c.Resources.Limits.Memory().String() != "128Mi" {
		t.Errorf("resources %v", c.Resources)
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet.Path != "/healthz" || c.ReadinessProbe.PeriodSeconds != 5 ||
		c.LivenessProbe == nil || c.LivenessProbe.TCPSocket.Port.IntValue() != 8080 {
		t.Errorf("probes %+v %+v", c.ReadinessProbe, c.LivenessProbe)
	}
	if d.Spec.Template.Labels["tier"] != "web" || d.Labels["app.kubernetes.io/managed-by"] != "ansflow" {
		t.Errorf("labels: template %v, deployment %v", d.Spec.Template.Labels, d.Labels)
	}
	var managedByAnsflow bool
	for _, mf := range d.ManagedFields {
		managedByAnsflow = managedByAnsflow || (mf.Manager == "ansflow" && mf.Operation == metav1.ManagedFieldsOperationApply)
	}
	if !managedByAnsflow {
		t.Errorf("no server-side apply by field manager ansflow in %v", d.ManagedFields)
	}
	svc, err := h.c.cs.CoreV1().Services(ns).Get(ctx, "my-app", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(svc.Spec.Ports) != 2 || svc.Spec.Ports[0].Port != 8080 || svc.Spec.Ports[1].Port != 90 ||
		svc.Spec.Ports[1].TargetPort.IntValue() != 9090 || svc.Spec.Ports[1].Protocol != corev1.ProtocolUDP || svc.Spec.Selector["app"] != "my-app" {
		t.Errorf("service spec %+v", svc.Spec)
	}

	r = h.run(h.step(engine.TypeDeploy, ns, "my-app", spec("registry.local/my-app:2")), event.StatusSucceeded, 90*time.Second)
	wantOutputs(t, r, map[string]string{"revision": "2"})
	r = h.run(h.step(engine.TypeDeploy, ns, "my-app", spec("registry.local/my-app:2")), event.StatusSucceeded, 90*time.Second)
	wantOutputs(t, r, map[string]string{"revision": "2"})
}

// The seed's form: no image in deployment_spec uses the step's
// docker_image, and without wait the step returns once the controller has
// observed the Deployment (which gives it its revision).
func TestDeploySeedShape(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ns := h.c.namespace(t, "seed")
	req := h.step(engine.TypeDeploy, ns, "my-app", map[string]any{"deployment_spec": map[string]any{
		"replicas": "2", "ports": []any{map[string]any{"container_port": "8080"}},
		"environment": map[string]any{"NODE_ENV": "production", "VERSION": "42"},
	}})
	req.Image = "registry.example.com/my-app:42"
	r := h.run(req, event.StatusSucceeded, 60*time.Second)
	wantOutputs(t, r, map[string]string{"revision": "1", "name": "my-app", "namespace": ns})
	d, err := h.c.cs.AppsV1().Deployments(ns).Get(context.Background(), "my-app", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if img := d.Spec.Template.Spec.Containers[0].Image; img != req.Image {
		t.Errorf("image %s, want %s", img, req.Image)
	}
}

// Inline manifests of several documents and kinds, and manifest files from
// the run's source (a directory, including a Namespace that the other
// objects go into), are applied through discovery and the dynamic client.
func TestDeployManifests(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ns := h.c.namespace(t, "manifest")
	manifest := `
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  greeting: hello
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: web:1
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - port: 80
`
	r := h.run(h.step(engine.TypeDeploy, ns, "", map[string]any{"manifest": manifest, "wait": "true"}), event.StatusSucceeded, 90*time.Second)
	wantOutputs(t, r, map[string]string{"kind": "Deployment", "name": "web", "namespace": ns, "revision": "1", "applied": "3"})
	wantContains(t, "stdout", r.Stdout, "configmaps/settings applied", "deployments.apps/web applied", "services/web applied", `deployment "web" successfully rolled out`)
	cm, err := h.c.cs.CoreV1().ConfigMaps(ns).Get(context.Background(), "settings", metav1.GetOptions{})
	if err != nil || cm.Data["greeting"] != "hello" {
		t.Fatalf("configmap: %v %v", cm, err)
	}

	// A manifest directory in the run's source, creating its own namespace.
	fresh := "t-manifest-file-" + randSuffix()
	t.Cleanup(func() { _ = h.c.cs.CoreV1().Namespaces().Delete(context.Background(), fresh, metav1.DeleteOptions{}) })
	dir := writeTree(t, map[string]string{
		"k8s/00-namespace.yaml": "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: " + fresh + "\n",
		"k8s/10-app.json": `{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"api","namespace":"` + fresh + `"},
 "spec":{"replicas":1,"selector":{"matchLabels":{"app":"api"}},"template":{"metadata":{"labels":{"app":"api"}},
 "spec":{"containers":[{"name":"api","image":"api:1"}]}}}}`,
		"k8s/README.md": "not a manifest",
	})
	req := h.step(engine.TypeDeploy, ns, "api", map[string]any{"manifest_file": "k8s", "wait": true})
	h.upload(req, dir)
	r = h.run(req, event.StatusSucceeded, 90*time.Second)
	wantOutputs(t, r, map[string]string{"kind": "Deployment", "name": "api", "namespace": fresh, "revision": "1", "applied": "2"})

	// A path that leaves the source tree is refused.
	req = h.step(engine.TypeDeploy, ns, "api", map[string]any{"manifest_file": "../etc/passwd"})
	h.upload(req, dir)
	r = h.run(req, event.StatusFailed, 30*time.Second)
	wantContains(t, "error", r.Error, "manifest_file", "relative path inside the run's source")
}

// Failures name their cause: a missing namespace, an RBAC denial, a
// rollout that never becomes available, an unknown deployment_spec key.
func TestDeployFailures(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ns := h.c.namespace(t, "deployfail")
	spec := func(image string, extra map[string]any) map[string]any {
		ds := map[string]any{"replicas": 1, "image": image, "progress_deadline_seconds": 3}
		cfg := map[string]any{"deployment_spec": ds, "wait": true, "timeout": 60}
		for k, v := range extra {
			cfg[k] = v
		}
		return cfg
	}

	t.Run("missing namespace", func(t *testing.T) {
		h := h.with(t)
		r := h.run(h.step(engine.TypeDeploy, "no-such-namespace", "web", spec("web:1", nil)), event.StatusFailed, 30*time.Second)
		wantContains(t, "error", r.Error, `namespace "no-such-namespace" does not exist`, `cluster "local"`)
	})

	t.Run("forbidden by RBAC", func(t *testing.T) {
		h := h.with(t)
		h.restrict(ns)
		req := h.step(engine.TypeDeploy, ns, "web", spec("web:1", nil))
		req.Target, req.Cluster = clusterRestricted, clusterRestricted
		r := h.run(req, event.StatusFailed, 30*time.Second)
		wantContains(t, "error", r.Error, "forbidden by RBAC", `may not get deployments.apps "web" in namespace "`+ns+`"`,
			"system:serviceaccount:"+ns+":nobody")
	})

	t.Run("rollout never available", func(t *testing.T) {
		h := h.with(t)
		start := time.Now()
		r := h.run(h.step(engine.TypeDeploy, ns, "stuck", spec("never-ready:1", nil)), event.StatusFailed, 90*time.Second)
		wantContains(t, "error", r.Error, "rollout of deployment "+ns+"/stuck failed: ProgressDeadlineExceeded",
			`deployment "stuck" exceeded its progress deadline`, "container stuck running but not ready")
		wantOutputs(t, r, map[string]string{"revision": "1"})
		if took := time.Since(start); took > 45*time.Second {
			t.Errorf("the progress deadline (3s) took %s to fail the step", took)
		}
	})

	t.Run("rollback on failure", func(t *testing.T) {
		h := h.with(t)
		h.run(h.step(engine.TypeDeploy, ns, "app", spec("app:good", nil)), event.StatusSucceeded, 60*time.Second)
		r := h.run(h.step(engine.TypeDeploy, ns, "app", spec("never-ready:bad", map[string]any{"rollback_on_failure": true})), event.StatusFailed, 120*time.Second)
		wantContains(t, "error", r.Error, "ProgressDeadlineExceeded", "rolled back to revision 1")
		wantContains(t, "stdout", r.Stdout, "rolling back to revision 1", `deployment "app" successfully rolled out`)
		d, err := h.c.cs.AppsV1().Deployments(ns).Get(context.Background(), "app", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if img := d.Spec.Template.Spec.Containers[0].Image; img != "app:good" || d.Status.AvailableReplicas != 1 || d.Status.UpdatedReplicas != 1 {
			t.Errorf("after rollback: image %s, %d available, %d updated", img, d.Status.AvailableReplicas, d.Status.UpdatedReplicas)
		}
		// A fixed deploy after the rollback rolls out although the controller
		// still shows the old ProgressDeadlineExceeded at first.
		r = h.run(h.step(engine.TypeDeploy, ns, "app", spec("app:fixed", nil)), event.StatusSucceeded, 60*time.Second)
		wantOutputs(t, r, map[string]string{"revision": "4"})
	})

	t.Run("invalid deployment_spec", func(t *testing.T) {
		h := h.with(t)
		cfg := spec("web:1", nil)
		cfg["deployment_spec"].(map[string]any)["replicaz"] = 3
		r := h.run(h.step(engine.TypeDeploy, ns, "web", cfg), event.StatusFailed, 30*time.Second)
		wantContains(t, "error", r.Error, "invalid k8s_config: deployment_spec.replicaz: unknown key", `did you mean "replicas"`)
	})
}
