package engine_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/services/k8s-runner/engine"
)

// TestAccess: a cluster entry's steps touch only its namespaces and kinds.
// With the defaults (the namespace given, DefaultKinds), a deploy into
// another namespace, of a cluster-scoped kind, or of an RBAC kind fails with
// the setting that would allow it, and nothing is applied.
func TestAccess(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ns := h.c.namespace(t, "access")
	other := h.c.namespace(t, "access-other")
	const guarded = "guarded"
	eng, err := engine.New(engine.Config{Kubeconfig: h.c.path, Cluster: guarded, Access: engine.Access{Namespaces: []string{ns}}},
		zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
	if err != nil {
		t.Fatal(err)
	}
	h.serve(guarded, eng)
	step := func(typ, namespace, name string, cfg map[string]any) *event.StepRequested {
		req := h.step(typ, namespace, name, cfg)
		req.Target, req.Cluster = guarded, guarded
		return req
	}
	spec := map[string]any{"deployment_spec": map[string]any{"replicas": 1, "image": "web:1"}}
	ctx := context.Background()
	clusterRole := "ansflow-access-test-" + ns

	for _, tc := range []struct {
		name   string
		req    *event.StepRequested
		want   string
		absent func() error
	}{
		{"deployment_spec in another namespace", step(engine.TypeDeploy, other, "web", spec),
			`k8s_deploy: namespace "` + other + `" is not allowed on cluster "guarded" (allowed namespaces: ` + ns + `; add it to the cluster entry's namespaces)`,
			func() error {
				_, err := h.c.cs.AppsV1().Deployments(other).Get(ctx, "web", metav1.GetOptions{})
				return err
			}},
		{"cluster-scoped kind", step(engine.TypeDeploy, ns, "", map[string]any{"manifest": `
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: ` + clusterRole + `}
rules: [{apiGroups: ["*"], resources: ["*"], verbs: ["*"]}]
`}), `kind ClusterRole (cluster-scoped) is not allowed on cluster "guarded" (allowed kinds: Deployment, StatefulSet`,
			func() error {
				_, err := h.c.cs.RbacV1().ClusterRoles().Get(ctx, clusterRole, metav1.GetOptions{})
				return err
			}},
		{"namespaced RBAC kind after an allowed object", step(engine.TypeDeploy, ns, "", map[string]any{"manifest": `
apiVersion: v1
kind: ConfigMap
metadata: {name: before-rolebinding}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: grab}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
subjects: [{kind: ServiceAccount, name: default, namespace: ` + ns + `}]
`}), `(RoleBinding grab): kind RoleBinding is not allowed on cluster "guarded"`,
			func() error {
				_, err := h.c.cs.CoreV1().ConfigMaps(ns).Get(ctx, "before-rolebinding", metav1.GetOptions{})
				return err
			}},
		{"manifest object in another namespace", step(engine.TypeDeploy, ns, "", map[string]any{"manifest": `
apiVersion: v1
kind: ConfigMap
metadata: {name: elsewhere, namespace: ` + other + `}
`}), `(ConfigMap elsewhere): namespace "` + other + `" is not allowed on cluster "guarded"`,
			func() error {
				_, err := h.c.cs.CoreV1().ConfigMaps(other).Get(ctx, "elsewhere", metav1.GetOptions{})
				return err
			}},
		{"Namespace kind", step(engine.TypeDeploy, ns, "", map[string]any{"manifest": "apiVersion: v1\nkind: Namespace\nmetadata: {name: " + ns + "-new}\n"}),
			`kind Namespace (cluster-scoped) is not allowed on cluster "guarded"`,
			func() error {
				_, err := h.c.cs.CoreV1().Namespaces().Get(ctx, ns+"-new", metav1.GetOptions{})
				return err
			}},
		{"delete in another namespace", step(engine.TypeDelete, other, "web", map[string]any{"resource_type": "deployment"}),
			`k8s_delete: namespace "` + other + `" is not allowed on cluster "guarded"`, nil},
		{"scale of a disallowed kind", step(engine.TypeScale, ns, "web", map[string]any{"resource_type": "replicationcontroller", "replicas": 2}),
			`k8s_scale: kind ReplicationController is not allowed on cluster "guarded"`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := h.with(t)
			r := h.run(tc.req, event.StatusFailed, 30*time.Second)
			wantContains(t, "error", r.Error, tc.want)
			if tc.absent != nil {
				if err := tc.absent(); !apierrors.IsNotFound(err) {
					t.Errorf("the refused step's object exists (get: %v)", err)
				}
			}
		})
	}

	// what the entry allows works
	r := h.run(step(engine.TypeDeploy, ns, "web", spec), event.StatusSucceeded, 60*time.Second)
	wantOutputs(t, r, map[string]string{"namespace": ns, "name": "web"})
}
