package kubernetes

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.yaml.in/yaml/v3"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/pkg/runner"
)

// TestK8sRunnerInCluster runs the real k8s-runner binary the way its pod
// runs it: no kubeconfig, KUBERNETES_SERVICE_HOST/PORT pointing at the
// local API server, and a service account directory holding a token minted
// with the TokenRequest API for the manifests' ansflow-k8s-runner account
// (created, with its Roles and RoleBindings, from the built manifests by
// server-side apply) and the cluster's CA. A k8s_deploy into the
// namespace its Role covers succeeds; one into a namespace the runner's
// cluster entry lets through but no Role covers fails with RBAC's
// forbidden error naming the service account. Then the token rotates as the
// kubelet rotates it (a new file, the old token revoked) and the runner's
// steps work again with the new one, without a restart.
func TestK8sRunnerInCluster(t *testing.T) {
	c := localCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	objs := build(t, "single-node")
	id := fmt.Sprintf("%x", time.Now().UnixNano()&0xffffff)
	ns := map[string]string{ansflowNS: "afr-" + id, appsNS: "afr-apps-" + id}
	denied := "afr-denied-" + id
	relocate(t, objs, ns)
	var rbac []*unstructured.Unstructured
	for _, o := range objs {
		switch {
		case o.GetKind() == "Namespace", o.GetKind() == "Role", o.GetKind() == "RoleBinding",
			o.GetKind() == "ServiceAccount" && o.GetName() == runnerSA:
			rbac = append(rbac, o)
		}
	}
	c.deleteNamespacesAtEnd(t, ns[ansflowNS], ns[appsNS], denied)
	c.apply(t, ctx, rbac)
	if _, err := c.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: denied}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The service account directory the kubelet would mount. Its first
	// token is bound to a Secret, as the kubelet's are bound to their pod,
	// so deleting the Secret revokes it.
	binding, err := c.cs.CoreV1().Secrets(ns[ansflowNS]).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "first-token-binding"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mint := func(bound *corev1.Secret) string {
		t.Helper()
		expiry := int64(600)
		spec := authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry}
		if bound != nil {
			spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Secret", APIVersion: "v1", Name: bound.Name, UID: bound.UID}
		}
		tr, err := c.cs.CoreV1().ServiceAccounts(ns[ansflowNS]).CreateToken(ctx, runnerSA, &authenticationv1.TokenRequest{Spec: spec}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}
	first := mint(binding)
	saDir := t.TempDir()
	ca := c.rc.CAData
	if len(ca) == 0 {
		if ca, err = os.ReadFile(c.rc.CAFile); err != nil {
			t.Fatal(err)
		}
	}
	for name, content := range map[string][]byte{"token": []byte(first), "ca.crt": ca, "namespace": []byte(ns[ansflowNS])} {
		if err := os.WriteFile(filepath.Join(saDir, name), content, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// The cluster entry of the manifests, plus the denied namespace: the
	// runner's own access check lets it through, so RBAC is what refuses.
	entry := clusterEntries(t, objs)[0]
	entry.Namespaces = append(entry.Namespaces, denied)
	clusters, err := yaml.Marshal(map[string]any{"clusters": []any{entry}})
	if err != nil {
		t.Fatal(err)
	}
	clustersFile := filepath.Join(t.TempDir(), "clusters.yaml")
	if err := os.WriteFile(clustersFile, clusters, 0o600); err != nil {
		t.Fatal(err)
	}

	api, err := url.Parse(c.rc.Host)
	if err != nil {
		t.Fatal(err)
	}
	nats := natstest.Run(t)
	bin := buildRunner(t)
	logs := startRunner(t, bin, []string{
		"--nats", nats.ClientURL(), "--clusters-file", clustersFile, "--service-account-dir", saDir,
		"--work-dir", t.TempDir(), "--id", "in-cluster-test", "--heartbeat", "1s",
	}, []string{
		"HOME=" + t.TempDir(), "PATH=" + os.Getenv("PATH"),
		"KUBERNETES_SERVICE_HOST=" + api.Hostname(), "KUBERNETES_SERVICE_PORT=" + api.Port(),
	})
	eventually(t, time.Minute, "the runner's consumer of cluster default", func() string {
		if _, err := nats.JS.Consumer(ctx, event.StreamSteps, runner.DurableName(event.KindK8s, entry.Name)); err != nil {
			return fmt.Sprintf("%v; runner log:\n%s", err, logs)
		}
		return ""
	})

	deploy := func(namespace string) event.StepCompleted {
		t.Helper()
		runID := fmt.Sprintf("incluster-%s-%d", namespace, time.Now().UnixNano())
		req := event.StepRequested{RunID: runID, StepID: "deploy", Attempt: 1, Type: "k8s_deploy", Kind: event.KindK8s, Target: entry.Name,
			Namespace: namespace, ResourceName: "hello", RequestedAt: time.Now(),
			K8sConfig: map[string]any{"wait": true, "deployment_spec": map[string]any{"replicas": 1, "image": "registry.local/hello:1"}}}
		e, err := event.New("ansflow/test", event.TypeStepRequested, event.Meta{RunID: runID, StepID: "deploy", Attempt: 1}, req)
		if err != nil {
			t.Fatal(err)
		}
		if err := bus.Publish(ctx, nats.JS, event.StepRequestedSubject(event.KindK8s, entry.Name), e); err != nil {
			t.Fatal(err)
		}
		cons, err := nats.JS.OrderedConsumer(ctx, event.StreamEvents, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{event.LifecycleSubject(event.TypeStepCompleted, runID)}})
		if err != nil {
			t.Fatal(err)
		}
		msg, err := cons.Next(jetstream.FetchMaxWait(2 * time.Minute))
		if errors.Is(err, jetstream.ErrNoMessages) {
			t.Fatalf("k8s_deploy into %s: no step.completed; runner log:\n%s", namespace, logs)
		}
		if err != nil {
			t.Fatal(err)
		}
		var done event.StepCompleted
		if err := json.Unmarshal(msg.Data(), &done); err != nil {
			t.Fatal(err)
		}
		return done
	}

	if done := deploy(ns[appsNS]); done.Status != event.StatusSucceeded {
		t.Fatalf("k8s_deploy into %s: %s: %s; runner log:\n%s", ns[appsNS], done.Status, done.Error, logs)
	}
	if !strings.Contains(logs.String(), "cluster reachable") {
		t.Errorf("the runner did not log its cluster; log:\n%s", logs)
	}
	d, err := c.cs.AppsV1().Deployments(ns[appsNS]).Get(ctx, "hello", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Status.ReadyReplicas != 1 {
		t.Errorf("deployment hello: %d ready replicas after a waited deploy", d.Status.ReadyReplicas)
	}

	done := deploy(denied)
	sa := "system:serviceaccount:" + ns[ansflowNS] + ":" + runnerSA
	if done.Status != event.StatusFailed || !strings.Contains(done.Error, "forbidden by RBAC") || !strings.Contains(done.Error, sa) ||
		!strings.Contains(done.Error, denied) {
		t.Errorf("k8s_deploy into %s: %s: %q; want a failure naming RBAC, %s and the namespace", denied, done.Status, done.Error, sa)
	}
	t.Logf("k8s_deploy into %s: %s: %s", denied, done.Status, done.Error)
	if _, err := c.cs.AppsV1().Deployments(denied).Get(ctx, "hello", metav1.GetOptions{}); err == nil {
		t.Errorf("a deployment was created in %s", denied)
	}

	// Rotation, as the kubelet does it: a new token replaces the file, the
	// old one stops working. The runner goes on with the new one once its
	// transport re-reads the file (client-go: within a minute).
	rotated := filepath.Join(saDir, "token.new")
	if err := os.WriteFile(rotated, []byte(mint(nil)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(rotated, filepath.Join(saDir, "token")); err != nil {
		t.Fatal(err)
	}
	if err := c.cs.CoreV1().Secrets(ns[ansflowNS]).Delete(ctx, binding.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "the first token revoked", func() string {
		r, err := c.cs.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: first}}, metav1.CreateOptions{})
		if err != nil {
			return err.Error()
		}
		if r.Status.Authenticated {
			return "still authenticated"
		}
		return ""
	})
	revoked := time.Now()
	var failures int
	eventuallyEvery(t, 150*time.Second, 2*time.Second, "a k8s_deploy with the rotated token", func() string {
		done := deploy(ns[appsNS])
		if done.Status == event.StatusSucceeded {
			return ""
		}
		failures++
		return fmt.Sprintf("%s: %s", done.Status, done.Error)
	})
	t.Logf("after the first token was revoked: %d steps failed, then the rotated token worked %s later", failures, time.Since(revoked).Round(time.Second))
}

// buildRunner builds the k8s-runner binary from this workspace.
func buildRunner(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "k8s-runner")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = filepath.Join("..", "..", "services", "k8s-runner")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build k8s-runner: %v\n%s", err, out)
	}
	return bin
}

// lockedBuffer collects a process's output for failure messages.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startRunner starts bin with args and exactly env, stopping it with
// SIGTERM when the test ends.
func startRunner(t *testing.T, bin string, args, env []string) *lockedBuffer {
	t.Helper()
	logs := &lockedBuffer{}
	cmd := exec.Command(bin, args...)
	cmd.Env, cmd.Stdout, cmd.Stderr = env, logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("k8s-runner: %v; log:\n%s", err, logs)
			}
		case <-time.After(45 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("k8s-runner did not stop within 45s of SIGTERM; log:\n%s", logs)
		}
	})
	return logs
}
