package kubernetes

import (
	"fmt"
	"path"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// runnerSA is the k8s-runner's service account.
const runnerSA = "ansflow-k8s-runner"

// kindResources maps the kinds a cluster entry may list to their API
// group and resource, and whether k8s_scale scales them (a scale
// subresource).
var kindResources = map[string]struct {
	group, resource string
	scalable        bool
}{
	"Deployment":              {"apps", "deployments", true},
	"StatefulSet":             {"apps", "statefulsets", true},
	"ReplicaSet":              {"apps", "replicasets", true},
	"DaemonSet":               {"apps", "daemonsets", false},
	"Job":                     {"batch", "jobs", false},
	"CronJob":                 {"batch", "cronjobs", false},
	"Pod":                     {"", "pods", false},
	"Service":                 {"", "services", false},
	"ConfigMap":               {"", "configmaps", false},
	"Secret":                  {"", "secrets", false},
	"PersistentVolumeClaim":   {"", "persistentvolumeclaims", false},
	"ServiceAccount":          {"", "serviceaccounts", false},
	"Ingress":                 {"networking.k8s.io", "ingresses", false},
	"NetworkPolicy":           {"networking.k8s.io", "networkpolicies", false},
	"HorizontalPodAutoscaler": {"autoscaling", "horizontalpodautoscalers", false},
	"PodDisruptionBudget":     {"policy", "poddisruptionbudgets", false},
}

// grant is one (API group, resource, verb) a Role allows.
type grant struct{ group, resource, verb string }

func (g grant) String() string {
	group := g.group
	if group == "" {
		group = "core"
	}
	return fmt.Sprintf("%s %s/%s", g.verb, group, g.resource)
}

// needed is what the runner's step types need in a namespace for kinds:
// k8s_deploy applies them (server-side apply: create, patch), k8s_delete
// deletes them and watches until they are gone, k8s_wait gets, lists and
// watches them, k8s_scale uses the scale subresource, a Deployment's
// rollout reads its ReplicaSets, and pod waits, k8s_exec and k8s_logs use
// pods, pods/exec and pods/log whatever the kinds.
func needed(kinds []string) (map[grant]bool, error) {
	out := map[grant]bool{}
	add := func(group, resource string, verbs ...string) {
		for _, v := range verbs {
			out[grant{group, resource, v}] = true
		}
	}
	for _, k := range kinds {
		r, ok := kindResources[k]
		if !ok {
			return nil, fmt.Errorf("kind %q of the cluster entry has no API resource in this test's table: add it (and its Role rules)", k)
		}
		add(r.group, r.resource, "get", "list", "watch", "create", "update", "patch", "delete")
		if r.scalable {
			add(r.group, r.resource+"/scale", "get", "update", "patch")
		}
		if k == "Deployment" {
			add("apps", "replicasets", "get", "list", "watch")
		}
	}
	add("", "pods", "get", "list", "watch")
	add("", "pods/exec", "create", "get")
	add("", "pods/log", "get")
	return out, nil
}

// rbacProblems compares the built k8s-runner RBAC with its cluster entries:
// every namespace an entry lists has Roles bound to the runner's service
// account that grant exactly what its kinds need, and the account is bound
// nowhere else.
func rbacProblems(objs []*unstructured.Unstructured, saNamespace string, entryNamespaces, kinds []string) []string {
	var problems []string
	need, err := needed(kinds)
	if err != nil {
		return []string{err.Error()}
	}
	bindsRunner := func(b *unstructured.Unstructured) bool {
		subjects, _, _ := unstructured.NestedSlice(b.Object, "subjects")
		for _, s := range subjects {
			m := s.(map[string]any)
			if m["kind"] == "ServiceAccount" && m["name"] == runnerSA && m["namespace"] == saNamespace {
				return true
			}
		}
		return false
	}
	for _, b := range ofKind(objs, "ClusterRoleBinding") {
		if bindsRunner(b) {
			problems = append(problems, fmt.Sprintf("ClusterRoleBinding %s binds %s: its rights must stay in the entry's namespaces", b.GetName(), runnerSA))
		}
	}
	granted := map[string]map[grant]bool{}
	for _, b := range ofKind(objs, "RoleBinding") {
		if !bindsRunner(b) {
			continue
		}
		ns := b.GetNamespace()
		if !slices.Contains(entryNamespaces, ns) {
			problems = append(problems, fmt.Sprintf("RoleBinding %s/%s binds %s in namespace %s, which the cluster entry does not list", ns, b.GetName(), runnerSA, ns))
			continue
		}
		kind, _, _ := unstructured.NestedString(b.Object, "roleRef", "kind")
		name, _, _ := unstructured.NestedString(b.Object, "roleRef", "name")
		if kind != "Role" {
			problems = append(problems, fmt.Sprintf("RoleBinding %s/%s refers to a %s: only a Role of the namespace keeps the rights there", ns, b.GetName(), kind))
			continue
		}
		var role *unstructured.Unstructured
		for _, r := range ofKind(objs, "Role") {
			if r.GetNamespace() == ns && r.GetName() == name {
				role = r
			}
		}
		if role == nil {
			problems = append(problems, fmt.Sprintf("RoleBinding %s/%s refers to Role %s, which is not in the manifests", ns, b.GetName(), name))
			continue
		}
		if granted[ns] == nil {
			granted[ns] = map[grant]bool{}
		}
		rules, _, _ := unstructured.NestedSlice(role.Object, "rules")
		for i, r := range rules {
			rule := r.(map[string]any)
			if rule["resourceNames"] != nil || rule["nonResourceURLs"] != nil {
				problems = append(problems, fmt.Sprintf("Role %s/%s rule %d: resourceNames and nonResourceURLs are not what the runner needs", ns, name, i))
			}
			list := func(key string) []string {
				v, _, _ := unstructured.NestedStringSlice(rule, key)
				return v
			}
			for _, g := range list("apiGroups") {
				for _, res := range list("resources") {
					for _, v := range list("verbs") {
						if g == "*" || res == "*" || v == "*" {
							problems = append(problems, fmt.Sprintf("Role %s/%s rule %d has a wildcard: it grants more than the entry's kinds", ns, name, i))
							continue
						}
						granted[ns][grant{g, res, v}] = true
					}
				}
			}
		}
	}
	for _, ns := range entryNamespaces {
		if strings.ContainsAny(ns, "*?[") {
			problems = append(problems, fmt.Sprintf("namespace %q of the cluster entry is a glob: RBAC grants namespaces by name, list them", ns))
			continue
		}
		var missing, extra []string
		for g := range need {
			if !granted[ns][g] {
				missing = append(missing, g.String())
			}
		}
		for g := range granted[ns] {
			if !need[g] {
				extra = append(extra, g.String())
			}
		}
		slices.Sort(missing)
		slices.Sort(extra)
		if len(missing) > 0 {
			problems = append(problems, fmt.Sprintf("namespace %s: the runner's steps need %s, which no Role bound to %s grants", ns, strings.Join(missing, ", "), runnerSA))
		}
		if len(extra) > 0 {
			problems = append(problems, fmt.Sprintf("namespace %s: the Roles grant %s, which the entry's kinds %v do not need", ns, strings.Join(extra, ", "), kinds))
		}
	}
	return problems
}

// TestRBACFollowsTheClusterEntry: in every overlay, the k8s-runner's
// Roles grant in exactly the namespaces of its cluster entry exactly what
// its step types need for the entry's kinds, the runner runs as that
// service account with that clusters file, and nothing else is bound to it.
func TestRBACFollowsTheClusterEntry(t *testing.T) {
	for _, overlay := range overlays {
		t.Run(overlay, func(t *testing.T) {
			objs := build(t, overlay)
			entries := clusterEntries(t, objs)
			if len(entries) != 1 || entries[0].Name != "default" || entries[0].Kubeconfig != "" {
				t.Fatalf("cluster entries %+v: want one, \"default\", in-cluster (no kubeconfig)", entries)
			}
			e := entries[0]
			if len(e.Namespaces) == 0 || len(e.Kinds) == 0 {
				t.Fatalf("entry %+v lists no namespaces or no kinds: the runner's defaults would not follow its Roles", e)
			}
			for _, p := range rbacProblems(objs, ansflowNS, e.Namespaces, e.Kinds) {
				t.Error(p)
			}

			dep := find(t, objs, "Deployment", ansflowNS, "k8s-runner")
			if sa, _, _ := unstructured.NestedString(dep.Object, "spec", "template", "spec", "serviceAccountName"); sa != runnerSA {
				t.Errorf("k8s-runner runs as service account %q, want %s", sa, runnerSA)
			}
			find(t, objs, "ServiceAccount", ansflowNS, runnerSA)
			containers, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "containers")
			var file string
			for _, env := range containers[0].(map[string]any)["env"].([]any) {
				if m := env.(map[string]any); m["name"] == "ANSFLOW_K8S_CLUSTERS_FILE" {
					file, _ = m["value"].(string)
				}
			}
			var mounted bool
			for _, m := range containers[0].(map[string]any)["volumeMounts"].([]any) {
				vm := m.(map[string]any)
				mounted = mounted || (vm["name"] == "clusters" && path.Join(vm["mountPath"].(string), "clusters.yaml") == file)
			}
			if !mounted {
				t.Errorf("ANSFLOW_K8S_CLUSTERS_FILE %q is not the mounted clusters ConfigMap", file)
			}
		})
	}

	// The check is not vacuous: an entry that gains a kind without its
	// Role rules, and a Role that grants a wildcard, are both caught.
	objs := build(t, "single-node")
	e := clusterEntries(t, objs)[0]
	if p := rbacProblems(objs, ansflowNS, e.Namespaces, append(slices.Clone(e.Kinds), "Secret")); len(p) == 0 {
		t.Error("an entry listing Secret passed against Roles that do not grant secrets")
	}
	if p := rbacProblems(objs, ansflowNS, append(slices.Clone(e.Namespaces), "other"), e.Kinds); len(p) == 0 {
		t.Error("an entry listing a namespace without a Role passed")
	}
	role := find(t, objs, "Role", appsNS, runnerSA)
	rules, _, _ := unstructured.NestedSlice(role.Object, "rules")
	rules = append(rules, map[string]any{"apiGroups": []any{""}, "resources": []any{"secrets"}, "verbs": []any{"*"}})
	_ = unstructured.SetNestedSlice(role.Object, rules, "rules")
	if p := rbacProblems(objs, ansflowNS, e.Namespaces, e.Kinds); len(p) == 0 {
		t.Error("a Role with a wildcard verb on secrets passed")
	}
}
