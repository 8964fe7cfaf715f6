package engine_test

import (
	"context"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/services/k8s-runner/engine"
)

// A cluster entry's token_secret reaches the runner sealed, and the step
// authenticates with it instead of the runner's own (admin) credentials:
// without RBAC rights the service account's step is refused naming the
// account; once a Role grants the scale, the same step succeeds. A box
// sealed as a step's secret does not open as the cluster token.
func TestClusterTokenFromSecret(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ns := h.c.namespace(t, "token")
	ctx := context.Background()
	const sa = "deployer"
	if _, err := h.c.cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expiry := int64(3600)
	tr, err := h.c.cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	token := tr.Status.Token
	h.run(h.step(engine.TypeDeploy, ns, "web", map[string]any{"deployment_spec": map[string]any{"replicas": 1, "image": "web:1"}}),
		event.StatusSucceeded, 60*time.Second)

	scale := func(replicas int) *event.StepRequested {
		req := h.step(engine.TypeScale, ns, "web", map[string]any{"replicas": replicas})
		boxes, err := secret.Seal([]byte(token), secret.Binding{RunID: req.RunID, StepID: req.StepID, Attempt: req.Attempt,
			Name: "DEPLOYER_TOKEN", Env: secret.EnvClusterToken}, []string{poolIdentity.PublicKey()})
		if err != nil {
			t.Fatal(err)
		}
		req.ClusterToken = &event.SealedSecret{Name: "DEPLOYER_TOKEN", Env: secret.EnvClusterToken, Boxes: boxes}
		return req
	}

	// No rights: refused, and the refusal names the service account, so
	// the runner's admin credentials were not used.
	r := h.run(scale(3), event.StatusFailed, 30*time.Second)
	wantContains(t, "error without rights", r.Error, "system:serviceaccount:"+ns+":"+sa)
	if strings.Contains(r.Error+r.Stdout+r.Stderr, token) {
		t.Fatal("the token appears in the step's error or logs")
	}

	// A secret's box (bound to an environment variable) does not open as
	// the cluster token.
	req := scale(3)
	wrong := seal(t, req, "DEPLOYER_TOKEN", "TOKEN", token)
	req.ClusterToken = &wrong
	r = h.run(req, event.StatusFailed, 30*time.Second)
	wantContains(t, "secret box as token", r.Error, "sealed for another step attempt")

	// Grant the scale; RBAC takes effect within moments.
	if _, err := h.c.cs.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "scaler"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{"apps"}, Resources: []string{"deployments", "deployments/scale"}, Verbs: []string{"get", "list", "watch", "patch", "update"}}}},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.c.cs.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "scaler"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "scaler"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: ns}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		r = h.exec(scale(3), 30*time.Second)
		if r.Status == event.StatusSucceeded {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("scale with the granted token never succeeded:\n%s", r)
		}
	}
	d, err := h.c.cs.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil || d.Spec.Replicas == nil || *d.Spec.Replicas != 3 {
		t.Fatalf("deployment after the scale: %v %v, want 3 replicas", d, err)
	}
}
