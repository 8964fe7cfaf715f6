package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// TestRunWithClusterTokenFromSecret: a cluster entry's token_secret comes
// from the secret store (here `ansflow run --secret`), travels sealed to the
// embedded k8s runner, and the step authenticates with it instead of the
// runner's admin context: a service account that may only read
// deployments cannot apply one, and the refusal names the account.
func TestRunWithClusterTokenFromSecret(t *testing.T) {
	kubeconfig := os.Getenv("KUBECONFIG")
	if kubeconfig == "" {
		t.Fatal("KUBECONFIG is not set: start the local control plane with `make cluster-up`")
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	ns := "t-token-run-" + hex.EncodeToString(b)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cs.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
	const sa = "reader"
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "read"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{"apps"}, Resources: []string{"deployments"}, Verbs: []string{"get", "list", "watch"}}}},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "read"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "read"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: ns}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expiry := int64(3600)
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("E2E_CLUSTER_TOKEN", tr.Status.Token)

	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte(`clusters:
  - id: "1"
    name: local
    context: ansflow-local
    namespaces: [`+ns+`]
    token_secret: READER_TOKEN
`), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "deploy.yaml")
	if err := os.WriteFile(file, []byte(`pipeline:
  name: token-deploy
  steps:
    - name: deploy
      type: k8s_deploy
      k8s_cluster: 1
      k8s_namespace: `+ns+`
      k8s_resource_name: web
      k8s_config: {deployment_spec: {image: "web:1"}}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out := capture(t, "run", file, "--config", cfg, "--secret", "READER_TOKEN=E2E_CLUSTER_TOKEN", "--data-dir", t.TempDir())
	if code != exitFailed || !strings.Contains(out, "system:serviceaccount:"+ns+":"+sa) {
		t.Fatalf("exit %d, want %d with a refusal naming the service account:\n%s", code, exitFailed, out)
	}
	if strings.Contains(out, tr.Status.Token) {
		t.Fatal("the token appears in ansflow run's output")
	}
	if _, err := cs.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{}); err == nil {
		t.Fatal("the deployment exists: the step used the runner's own credentials")
	}
}
