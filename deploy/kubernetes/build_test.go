package kubernetes

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/ansflow/ansflow/pkg/natsauth"
	"github.com/ansflow/ansflow/pkg/topology"
	"github.com/ansflow/ansflow/services/k8s-runner/engine"
)

// overlays are the overlays users deploy.
var overlays = []string{"single-node", "production"}

// Namespaces of the manifests.
const (
	ansflowNS = "ansflow"
	appsNS    = "ansflow-apps"
)

// build builds overlay as `kubectl apply -k` would, with the Secrets'
// files written by the real `ansflow secure init` (natsauth.Init) into the
// overlay's secure/ directory, in an in-memory copy of this directory so
// the working tree never holds a secret.
func build(t *testing.T, overlay string) []*unstructured.Unstructured {
	t.Helper()
	mem := filesys.MakeFsInMemory()
	const root = "/deploy/kubernetes"
	copyTree(t, ".", root, mem, func(rel string) bool {
		return strings.Contains(rel, "/secure/") || strings.HasSuffix(rel, ".go") || rel == "go.mod" || rel == "go.sum"
	})
	secure := t.TempDir()
	err := natsauth.Init(natsauth.InitConfig{Dir: secure, Pools: topology.Pools{Docker: []string{"default"}, K8s: []string{"default"}},
		Hosts: []string{"nats", "nats-0.nats-headless", "nats-1.nats-headless", "nats-2.nats-headless"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(secure, "audit.dsn"), []byte("postgres://audit:not-a-password@postgres:5432/audit"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := root + "/overlays/" + overlay
	copyTree(t, secure, dir+"/secure", mem, func(string) bool { return false })
	rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(mem, dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", overlay, err)
	}
	var out []*unstructured.Unstructured
	for _, r := range rm.Resources() {
		m, err := r.Map()
		if err != nil {
			t.Fatal(err)
		}
		// Through JSON, so numbers are what the API server answers with.
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(b); err != nil {
			t.Fatalf("%s: %v", r.CurId(), err)
		}
		// kustomize wraps a Secret's base64 at 76 columns; the API server
		// answers it unwrapped.
		if u.GetKind() == "Secret" {
			data, _, _ := unstructured.NestedStringMap(u.Object, "data")
			for k, v := range data {
				data[k] = strings.Join(strings.Fields(v), "")
			}
			_ = unstructured.SetNestedStringMap(u.Object, data, "data")
		}
		out = append(out, u)
	}
	return out
}

// copyTree copies the files of dir on disk to the path to of mem, except
// those skip names (relative, slash-separated).
func copyTree(t *testing.T, dir, to string, mem filesys.FileSystem, skip func(rel string) bool) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if skip("/" + rel) {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return mem.WriteFile(to+"/"+rel, b)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// find returns the built object of kind and name, failing when there is none.
func find(t *testing.T, objs []*unstructured.Unstructured, kind, ns, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetNamespace() == ns && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s/%s built", kind, ns, name)
	return nil
}

// ofKind returns the built objects of kind.
func ofKind(objs []*unstructured.Unstructured, kind string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind {
			out = append(out, o)
		}
	}
	return out
}

// clusterEntries decodes the k8s-runner's clusters file from its built
// ConfigMap with the runner's own loader.
func clusterEntries(t *testing.T, objs []*unstructured.Unstructured) []engine.Cluster {
	t.Helper()
	for _, cm := range ofKind(objs, "ConfigMap") {
		if !strings.HasPrefix(cm.GetName(), "k8s-runner-clusters") {
			continue
		}
		data, _, _ := unstructured.NestedString(cm.Object, "data", "clusters.yaml")
		p := filepath.Join(t.TempDir(), "clusters.yaml")
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		cls, err := engine.LoadClusters(p)
		if err != nil {
			t.Fatal(err)
		}
		return cls
	}
	t.Fatal("no k8s-runner-clusters ConfigMap built")
	return nil
}

// relocate moves the objects into namespaces of their own (ns maps the
// manifests' namespaces to the test's), so every test applies to fresh
// namespaces: metadata, Namespace objects, RoleBinding subjects and the
// namespaces of the k8s-runner's cluster entries.
func relocate(t *testing.T, objs []*unstructured.Unstructured, ns map[string]string) {
	t.Helper()
	to := func(s string) string {
		if n, ok := ns[s]; ok {
			return n
		}
		return s
	}
	for _, o := range objs {
		switch {
		case o.GetKind() == "Namespace":
			o.SetName(to(o.GetName()))
			labels := o.GetLabels()
			if labels["app.kubernetes.io/name"] != "" {
				labels["app.kubernetes.io/name"] = o.GetName()
				o.SetLabels(labels)
			}
		case o.GetNamespace() != "":
			o.SetNamespace(to(o.GetNamespace()))
		}
		if o.GetKind() == "RoleBinding" || o.GetKind() == "ClusterRoleBinding" {
			subjects, _, _ := unstructured.NestedSlice(o.Object, "subjects")
			for _, s := range subjects {
				m := s.(map[string]any)
				if n, ok := m["namespace"].(string); ok {
					m["namespace"] = to(n)
				}
			}
			_ = unstructured.SetNestedSlice(o.Object, subjects, "subjects")
		}
		if o.GetKind() == "ConfigMap" && strings.HasPrefix(o.GetName(), "k8s-runner-clusters") {
			data, _, _ := unstructured.NestedString(o.Object, "data", "clusters.yaml")
			var doc struct {
				Clusters []map[string]any `yaml:"clusters"`
			}
			if err := yaml.Unmarshal([]byte(data), &doc); err != nil {
				t.Fatal(err)
			}
			for _, c := range doc.Clusters {
				if list, ok := c["namespaces"].([]any); ok {
					for i, n := range list {
						list[i] = to(n.(string))
					}
				}
			}
			b, err := yaml.Marshal(doc)
			if err != nil {
				t.Fatal(err)
			}
			if err := unstructured.SetNestedField(o.Object, string(b), "data", "clusters.yaml"); err != nil {
				t.Fatal(err)
			}
		}
	}
}
