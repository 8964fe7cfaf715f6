package kubernetes

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// want is what an overlay must deploy, besides what the base has.
var want = map[string]struct {
	natsReplicas, pipelineReplicas, runnerReplicas int64
	streamReplicas                                 string
	pdbs                                           []string
	secrets                                        []string
}{
	"single-node": {natsReplicas: 1, pipelineReplicas: 1, runnerReplicas: 1, streamReplicas: "--replicas=1"},
	"production": {natsReplicas: 3, pipelineReplicas: 2, runnerReplicas: 2, streamReplicas: "--replicas=3",
		pdbs: []string{"docker-runner", "k8s-runner", "nats", "pipeline"}, secrets: []string{"audit-db"}},
}

// baseSecrets are the Secrets every overlay generates from the files of
// `ansflow secure init`.
var baseSecrets = []string{"audit-credentials", "docker-runner-credentials", "k8s-runner-credentials", "nats-ca", "nats-server",
	"pipeline-credentials", "provisioner-credentials"}

// TestOverlaysRollOut builds every overlay, checks what it holds, applies
// it to the local control plane with server-side apply in namespaces of
// its own, and waits until every Deployment and StatefulSet rolled out and
// every PodDisruptionBudget counts its pods healthy. kwok runs the pods (it
// marks them running and ready without pulling an image).
func TestOverlaysRollOut(t *testing.T) {
	c := localCluster(t)
	for _, overlay := range overlays {
		t.Run(overlay, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			w := want[overlay]
			objs := build(t, overlay)
			checkBuilt(t, objs, overlay)

			id := fmt.Sprintf("%x", time.Now().UnixNano()&0xffffff)
			ns := map[string]string{ansflowNS: "af-" + overlay + "-" + id, appsNS: "afa-" + overlay + "-" + id}
			relocate(t, objs, ns)
			c.deleteNamespacesAtEnd(t, ns[ansflowNS], ns[appsNS])
			c.provideVolumes(t, ctx, objs)
			c.apply(t, ctx, objs)

			// Every object is there as built.
			for _, o := range objs {
				ri, err := c.resource(o)
				if err != nil {
					t.Fatal(err)
				}
				live, err := ri.Get(ctx, o.GetName(), metav1.GetOptions{})
				if err != nil {
					t.Errorf("%s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
					continue
				}
				for _, d := range subsetDiff(o.GetKind()+" "+o.GetName(), o.Object, live.Object) {
					t.Error(d)
				}
			}

			// Every workload rolls out.
			for _, o := range objs {
				if o.GetKind() != "Deployment" && o.GetKind() != "StatefulSet" {
					continue
				}
				ri, _ := c.resource(o)
				var live *unstructured.Unstructured
				eventually(t, 3*time.Minute, fmt.Sprintf("%s %s rolled out", o.GetKind(), o.GetName()), func() string {
					var err error
					if live, err = ri.Get(ctx, o.GetName(), metav1.GetOptions{}); err != nil {
						return err.Error()
					}
					return rolledOut(live)
				})
				ready, _, _ := unstructured.NestedInt64(live.Object, "status", "readyReplicas")
				t.Logf("%s %s rolled out: %d ready replicas, generation %d", o.GetKind(), o.GetName(), ready, live.GetGeneration())
			}

			// Every PodDisruptionBudget sees its replicas healthy.
			pdbs := ofKind(objs, "PodDisruptionBudget")
			var names []string
			for _, o := range pdbs {
				names = append(names, o.GetName())
				eventually(t, time.Minute, "PodDisruptionBudget "+o.GetName()+" healthy", func() string {
					p, err := c.cs.PolicyV1().PodDisruptionBudgets(o.GetNamespace()).Get(ctx, o.GetName(), metav1.GetOptions{})
					if err != nil {
						return err.Error()
					}
					if p.Status.ObservedGeneration < p.Generation || p.Status.ExpectedPods == 0 || p.Status.CurrentHealthy != p.Status.ExpectedPods ||
						p.Status.DisruptionsAllowed < 1 {
						return fmt.Sprintf("status %+v", p.Status)
					}
					return ""
				})
			}
			slices.Sort(names)
			if !slices.Equal(names, w.pdbs) {
				t.Errorf("PodDisruptionBudgets %v, want %v", names, w.pdbs)
			}

			// The NATS pods of the production overlay are on different nodes.
			pods, err := c.cs.CoreV1().Pods(ns[ansflowNS]).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=nats"})
			if err != nil {
				t.Fatal(err)
			}
			nodes := map[string]bool{}
			for _, p := range pods.Items {
				nodes[p.Spec.NodeName] = true
			}
			if int64(len(pods.Items)) != w.natsReplicas || int64(len(nodes)) != w.natsReplicas {
				t.Errorf("%d NATS pods on %d nodes, want %d on as many", len(pods.Items), len(nodes), w.natsReplicas)
			}

			// The runner's RBAC landed in the apps namespace, bound to its
			// service account in AnsFlow's.
			rb, err := c.cs.RbacV1().RoleBindings(ns[appsNS]).Get(ctx, runnerSA, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if rb.Subjects[0].Namespace != ns[ansflowNS] || rb.RoleRef.Name != runnerSA {
				t.Errorf("RoleBinding %+v", rb)
			}
			if _, err := c.cs.RbacV1().Roles(ns[appsNS]).Get(ctx, runnerSA, metav1.GetOptions{}); err != nil {
				t.Error(err)
			}

			// An upgrade whose new pods never become ready leaves the old
			// ones serving (maxUnavailable 0) and is not rolled out: the
			// rollout check is not vacuous.
			if overlay == "production" {
				upgradeThatNeverBecomesReady(t, ctx, c, find(t, objs, "Deployment", ns[ansflowNS], "pipeline"))
			}
		})
	}
}

// upgradeThatNeverBecomesReady applies a new image to dep whose pods kwok
// never marks ready, and checks that the rolling update keeps every old
// replica ready and that [rolledOut] says it is not done.
func upgradeThatNeverBecomesReady(t *testing.T, ctx context.Context, c *cluster, dep *unstructured.Unstructured) {
	t.Helper()
	up := dep.DeepCopy()
	containers, _, _ := unstructured.NestedSlice(up.Object, "spec", "template", "spec", "containers")
	containers[0].(map[string]any)["image"] = "never-ready:1"
	_ = unstructured.SetNestedSlice(up.Object, containers, "spec", "template", "spec", "containers")
	c.apply(t, ctx, []*unstructured.Unstructured{up})
	replicas, _, _ := unstructured.NestedInt64(dep.Object, "spec", "replicas")
	ri, _ := c.resource(dep)
	eventually(t, time.Minute, "a surge pod of the upgrade, not ready", func() string {
		live, err := ri.Get(ctx, dep.GetName(), metav1.GetOptions{})
		if err != nil {
			return err.Error()
		}
		observed, _, _ := unstructured.NestedInt64(live.Object, "status", "observedGeneration")
		updated, _, _ := unstructured.NestedInt64(live.Object, "status", "updatedReplicas")
		ready, _, _ := unstructured.NestedInt64(live.Object, "status", "readyReplicas")
		unavailable, _, _ := unstructured.NestedInt64(live.Object, "status", "unavailableReplicas")
		if observed < live.GetGeneration() || updated != 1 || unavailable != 1 {
			return fmt.Sprintf("observed %d of %d, %d updated, %d unavailable", observed, live.GetGeneration(), updated, unavailable)
		}
		if ready != replicas {
			t.Fatalf("the upgrade took ready replicas to %d of %d", ready, replicas)
		}
		if rolledOut(live) == "" {
			t.Fatal("an upgrade whose new pod is not ready counts as rolled out")
		}
		return ""
	})
}

// checkBuilt checks what an overlay builds, before it is applied: replica
// counts, the --replicas of streams and buckets, the Secrets, and what
// every workload must have (probes, requests and limits, a restricted
// securityContext).
func checkBuilt(t *testing.T, objs []*unstructured.Unstructured, overlay string) {
	t.Helper()
	w := want[overlay]
	replicas := func(kind, name string) int64 {
		n, _, _ := unstructured.NestedInt64(find(t, objs, kind, ansflowNS, name).Object, "spec", "replicas")
		return n
	}
	if n := replicas("StatefulSet", "nats"); n != w.natsReplicas {
		t.Errorf("NATS replicas %d, want %d", n, w.natsReplicas)
	}
	if n := replicas("Deployment", "pipeline"); n != w.pipelineReplicas {
		t.Errorf("pipeline replicas %d, want %d", n, w.pipelineReplicas)
	}
	for _, r := range []string{"docker-runner", "k8s-runner"} {
		if n := replicas("Deployment", r); n != w.runnerReplicas {
			t.Errorf("%s replicas %d, want %d", r, n, w.runnerReplicas)
		}
	}
	if n := replicas("Deployment", "audit"); n != 1 {
		t.Errorf("audit replicas %d, want 1 (one writer of the chain)", n)
	}

	// NATS is clustered over routes exactly when it has more than one server.
	var natsConf string
	for _, cm := range ofKind(objs, "ConfigMap") {
		if strings.HasPrefix(cm.GetName(), "nats-config-") {
			natsConf, _, _ = unstructured.NestedString(cm.Object, "data", "nats.conf")
		}
	}
	for i := range w.natsReplicas {
		route := fmt.Sprintf("nats://nats-%d.nats-headless:6222", i)
		if w.natsReplicas > 1 && !strings.Contains(natsConf, route) {
			t.Errorf("nats.conf has no route %s:\n%s", route, natsConf)
		}
	}
	if w.natsReplicas == 1 && strings.Contains(natsConf, "cluster {") {
		t.Errorf("a single NATS server with a cluster block:\n%s", natsConf)
	}

	var secrets []string
	for _, s := range ofKind(objs, "Secret") {
		data, _, _ := unstructured.NestedStringMap(s.Object, "data")
		if len(data) == 0 {
			t.Errorf("Secret %s is empty", s.GetName())
		}
		secrets = append(secrets, s.GetName()[:strings.LastIndex(s.GetName(), "-")])
	}
	wantSecrets := append(slices.Clone(baseSecrets), w.secrets...)
	slices.Sort(wantSecrets)
	slices.Sort(secrets)
	if !slices.Equal(secrets, wantSecrets) {
		t.Errorf("Secrets %v, want %v", secrets, wantSecrets)
	}

	for _, o := range objs {
		if o.GetKind() != "Deployment" && o.GetKind() != "StatefulSet" {
			continue
		}
		pod, _, _ := unstructured.NestedMap(o.Object, "spec", "template", "spec")
		for _, key := range []string{"initContainers", "containers"} {
			list, _, _ := unstructured.NestedSlice(pod, key)
			for _, c := range list {
				checkContainer(t, o, key, c.(map[string]any), pod)
			}
		}
		if o.GetName() != "k8s-runner" {
			if v, _, _ := unstructured.NestedBool(pod, "automountServiceAccountToken"); v {
				t.Errorf("%s mounts a service account token it does not use", o.GetName())
			}
		}
	}

	policies := map[string]bool{}
	for _, p := range ofKind(objs, "NetworkPolicy") {
		policies[p.GetName()] = true
	}
	for _, p := range []string{"default-deny", "allow-dns", "nats-clients", "nats-client-egress", "nats-routes", "pipeline-api", "audit-api", "ops-from-monitoring"} {
		if !policies[p] {
			t.Errorf("no NetworkPolicy %s", p)
		}
	}
	deny := find(t, objs, "NetworkPolicy", ansflowNS, "default-deny")
	sel, _, _ := unstructured.NestedMap(deny.Object, "spec", "podSelector")
	types, _, _ := unstructured.NestedStringSlice(deny.Object, "spec", "policyTypes")
	if len(sel) != 0 || !slices.Equal(types, []string{"Ingress", "Egress"}) {
		t.Errorf("default-deny selects %v for %v, want every pod, ingress and egress", sel, types)
	}
}

// checkContainer checks one container of workload o.
func checkContainer(t *testing.T, o *unstructured.Unstructured, key string, c, pod map[string]any) {
	t.Helper()
	name := fmt.Sprintf("%s %s container %v", o.GetKind(), o.GetName(), c["name"])
	args, _, _ := unstructured.NestedStringSlice(c, "args")
	overlayReplicas := ""
	for _, a := range args {
		if strings.HasPrefix(a, "--replicas=") {
			overlayReplicas = a
		}
	}
	if o.GetName() != "nats" && overlayReplicas == "" {
		t.Errorf("%s: no --replicas", name)
	}
	for _, r := range []string{"cpu", "memory"} {
		if _, ok, _ := unstructured.NestedString(c, "resources", "requests", r); !ok {
			t.Errorf("%s: no %s request", name, r)
		}
	}
	if _, ok, _ := unstructured.NestedString(c, "resources", "limits", "memory"); !ok {
		t.Errorf("%s: no memory limit", name)
	}
	if key == "containers" {
		for _, p := range []string{"livenessProbe", "readinessProbe"} {
			if _, ok := c[p]; !ok {
				t.Errorf("%s: no %s", name, p)
			}
		}
	}
	sc, _, _ := unstructured.NestedMap(c, "securityContext")
	drop, _, _ := unstructured.NestedStringSlice(sc, "capabilities", "drop")
	if sc["allowPrivilegeEscalation"] != false || sc["readOnlyRootFilesystem"] != true || !slices.Equal(drop, []string{"ALL"}) {
		t.Errorf("%s: securityContext %v, want no privilege escalation, a read-only root and no capabilities", name, sc)
	}
	// Only the docker runner runs as root: it is the Docker socket's owner.
	nonRoot, _, _ := unstructured.NestedBool(pod, "securityContext", "runAsNonRoot")
	if o.GetName() != "docker-runner" && !nonRoot {
		t.Errorf("%s: pod may run as root", name)
	}
}
