package kubernetes

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
)

// fieldManager is the server-side apply field manager of these tests.
const fieldManager = "ansflow-test"

// cluster is the local control plane (deploy/cluster) as its admin.
type cluster struct {
	rc     *rest.Config
	cs     kubernetes.Interface
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

// localCluster connects to the cluster of $KUBECONFIG. Without KUBECONFIG
// the test is skipped, except in CI (CI=true), where it fails.
func localCluster(t *testing.T) *cluster {
	t.Helper()
	path := os.Getenv("KUBECONFIG")
	if path == "" {
		msg := "KUBECONFIG is not set: this test applies the manifests to the local Kubernetes control plane; " +
			"start it with `make cluster-up` and export KUBECONFIG=$HOME/.local/state/ansflow-cluster/kubeconfig"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	rc.QPS, rc.Burst = 100, 200
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{rc: rc, cs: cs, dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))}
}

// resource returns the dynamic client of o's kind and namespace.
func (c *cluster) resource(o *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := o.GroupVersionKind()
	m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", gvk, err)
	}
	if o.GetNamespace() != "" {
		return c.dyn.Resource(m.Resource).Namespace(o.GetNamespace()), nil
	}
	return c.dyn.Resource(m.Resource), nil
}

// apply applies objs with server-side apply, Namespaces first.
func (c *cluster) apply(t *testing.T, ctx context.Context, objs []*unstructured.Unstructured) {
	t.Helper()
	sorted := append([]*unstructured.Unstructured(nil), objs...)
	sort.SliceStable(sorted, func(i, j int) bool {
		return sorted[i].GetKind() == "Namespace" && sorted[j].GetKind() != "Namespace"
	})
	force := true
	for _, o := range sorted {
		ri, err := c.resource(o)
		if err != nil {
			t.Fatal(err)
		}
		b, err := json.Marshal(o.Object)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ri.Patch(ctx, o.GetName(), types.ApplyPatchType, b, metav1.PatchOptions{FieldManager: fieldManager, Force: &force}); err != nil {
			t.Fatalf("apply %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
	}
}

// deleteNamespacesAtEnd deletes the namespaces when the test ends.
func (c *cluster) deleteNamespacesAtEnd(t *testing.T, names ...string) {
	t.Cleanup(func() {
		for _, n := range names {
			err := c.cs.CoreV1().Namespaces().Delete(context.Background(), n, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("delete namespace %s: %v", n, err)
			}
		}
	})
}

// provideVolumes creates a PersistentVolume bound in advance to each claim
// objs will make (volume claims, and each StatefulSet pod's claims from its
// templates): the local control plane has no storage provisioner, and
// what users deploy keeps asking for their cluster's default StorageClass.
// The volumes are deleted when the test ends.
func (c *cluster) provideVolumes(t *testing.T, ctx context.Context, objs []*unstructured.Unstructured) {
	t.Helper()
	type claim struct {
		ns, name string
		spec     map[string]any
	}
	var claims []claim
	for _, o := range objs {
		switch o.GetKind() {
		case "PersistentVolumeClaim":
			spec, _, _ := unstructured.NestedMap(o.Object, "spec")
			claims = append(claims, claim{o.GetNamespace(), o.GetName(), spec})
		case "StatefulSet":
			replicas, _, _ := unstructured.NestedInt64(o.Object, "spec", "replicas")
			tmpls, _, _ := unstructured.NestedSlice(o.Object, "spec", "volumeClaimTemplates")
			for _, tm := range tmpls {
				m := tm.(map[string]any)
				name, _, _ := unstructured.NestedString(m, "metadata", "name")
				spec, _, _ := unstructured.NestedMap(m, "spec")
				for i := range replicas {
					claims = append(claims, claim{o.GetNamespace(), fmt.Sprintf("%s-%s-%d", name, o.GetName(), i), spec})
				}
			}
		}
	}
	for _, cl := range claims {
		size, _, _ := unstructured.NestedString(cl.spec, "resources", "requests", "storage")
		q, err := resource.ParseQuantity(size)
		if err != nil {
			t.Fatalf("claim %s/%s: storage %q: %v", cl.ns, cl.name, size, err)
		}
		pv := &corev1.PersistentVolume{
			ObjectMeta: metav1.ObjectMeta{Name: cl.ns + "-" + cl.name, Labels: map[string]string{"ansflow.io/test": "kubernetes"}},
			Spec: corev1.PersistentVolumeSpec{
				Capacity:                      corev1.ResourceList{corev1.ResourceStorage: q},
				AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
				ClaimRef:                      &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: cl.ns, Name: cl.name},
				PersistentVolumeSource: corev1.PersistentVolumeSource{
					HostPath: &corev1.HostPathVolumeSource{Path: "/tmp/ansflow-test-volumes/" + cl.ns + "/" + cl.name},
				},
			},
		}
		if _, err := c.cs.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := c.cs.CoreV1().PersistentVolumes().Delete(context.Background(), pv.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("delete volume %s: %v", pv.Name, err)
			}
		})
	}
}

// eventually polls cond every 200 ms until it returns "" or the deadline
// passes, then fails with its last answer.
func eventually(t *testing.T, within time.Duration, what string, cond func() string) {
	t.Helper()
	eventuallyEvery(t, within, 200*time.Millisecond, what, cond)
}

// eventuallyEvery is [eventually] polling every interval.
func eventuallyEvery(t *testing.T, within, interval time.Duration, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		last := cond()
		if last == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %s", what, within, last)
		}
		time.Sleep(interval)
	}
}

// subsetDiff returns where want (a built object) is not contained in got
// (the object the API server holds): every field of want must be in got
// with the same value; got may have more (defaults, status).
func subsetDiff(path string, want, got any) []string {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: want an object, have %v", path, got)}
		}
		var out []string
		for k, v := range w {
			out = append(out, subsetDiff(path+"."+k, v, g[k])...)
		}
		return out
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return []string{fmt.Sprintf("%s: want %d items, have %v", path, len(w), got)}
		}
		var out []string
		for i := range w {
			out = append(out, subsetDiff(fmt.Sprintf("%s[%d]", path, i), w[i], g[i])...)
		}
		return out
	case string:
		// Quantities come back canonical (1024Mi is 1Gi).
		if g, ok := got.(string); ok && g != w {
			qw, errW := resource.ParseQuantity(w)
			qg, errG := resource.ParseQuantity(g)
			if errW == nil && errG == nil && qw.Cmp(qg) == 0 {
				return nil
			}
		}
	}
	if !reflect.DeepEqual(want, got) {
		// Never a Secret's value in a test log.
		if strings.HasPrefix(path, "Secret ") {
			return []string{path + ": differs"}
		}
		return []string{fmt.Sprintf("%s: want %.200v, have %.200v", path, want, got)}
	}
	return nil
}

// rolledOut tells what a Deployment or StatefulSet still lacks to be
// rolled out ("" when it is): the controller saw its generation, and every
// replica is updated and ready.
func rolledOut(o *unstructured.Unstructured) string {
	gen := o.GetGeneration()
	observed, _, _ := unstructured.NestedInt64(o.Object, "status", "observedGeneration")
	replicas, _, _ := unstructured.NestedInt64(o.Object, "spec", "replicas")
	updated, _, _ := unstructured.NestedInt64(o.Object, "status", "updatedReplicas")
	ready, _, _ := unstructured.NestedInt64(o.Object, "status", "readyReplicas")
	current, _, _ := unstructured.NestedInt64(o.Object, "status", "replicas")
	var missing []string
	if observed < gen {
		missing = append(missing, fmt.Sprintf("observed generation %d of %d", observed, gen))
	}
	if updated != replicas || ready != replicas || current != replicas {
		missing = append(missing, fmt.Sprintf("%d replicas, %d updated, %d ready of %d", current, updated, ready, replicas))
	}
	if o.GetKind() == "Deployment" {
		available, _, _ := unstructured.NestedInt64(o.Object, "status", "availableReplicas")
		if available != replicas {
			missing = append(missing, fmt.Sprintf("%d available", available))
		}
	}
	return strings.Join(missing, ", ")
}
