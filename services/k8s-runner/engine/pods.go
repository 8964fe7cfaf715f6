package engine

import (
	"context"
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
)

// defaultContainerAnnotation names a pod's default container, as kubectl
// honours it.
const defaultContainerAnnotation = "kubectl.kubernetes.io/default-container"

// podSet is the pods a k8s_exec or k8s_logs step addresses, best first, and
// how they were chosen (for messages).
type podSet struct {
	pods []corev1.Pod
	how  string
}

// selectPods finds the step's pods in ns: k8s_config.pod names one;
// pod_selector selects by labels; otherwise the step's resource name names
// a pod, or a Deployment, StatefulSet or DaemonSet whose selector is used.
// Pods being deleted are left out. It fails with [ErrNoPods] when nothing
// matches. Pods are ordered Running and Ready first, then oldest first.
func (s *step) selectPods(ctx context.Context, ns string) (*podSet, error) {
	podName, selector := s.pods.pod, s.pods.selector
	var err error
	pods := s.e.cs.CoreV1().Pods(ns)
	if podName == "" && selector == "" {
		name := strings.TrimSpace(s.req.ResourceName)
		if name == "" {
			return nil, fmt.Errorf("%w: %s needs pod, pod_selector or k8s_resource_name", ErrInvalidConfig, s.req.Type)
		}
		if selector, err = s.workloadSelector(ctx, ns, name); err != nil {
			return nil, err
		}
		if selector == "" {
			podName = name
		}
	}
	if podName != "" {
		p, err := pods.Get(ctx, podName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("pod %s/%s does not exist: %w", ns, podName, ErrNoPods)
		}
		if err != nil {
			return nil, s.apiErr(err, apiReq{verb: "get", resource: "pods", ns: ns, name: podName})
		}
		return &podSet{pods: []corev1.Pod{*p}, how: fmt.Sprintf("pod %s/%s", ns, podName)}, nil
	}
	if _, err := labels.Parse(selector); err != nil {
		return nil, invalid("pod_selector", "%q: %v", selector, err)
	}
	list, err := pods.List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, s.apiErr(err, apiReq{verb: "list", resource: "pods", ns: ns})
	}
	set := &podSet{how: fmt.Sprintf("pods in namespace %s matching %q", ns, selector)}
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil {
			set.pods = append(set.pods, p)
		}
	}
	if len(set.pods) == 0 {
		return nil, fmt.Errorf("no pod in namespace %s matches selector %q: %w", ns, selector, ErrNoPods)
	}
	rank := func(p *corev1.Pod) int {
		switch {
		case p.Status.Phase == corev1.PodRunning && isPodReady(p):
			return 0
		case p.Status.Phase == corev1.PodRunning:
			return 1
		}
		return 2
	}
	sort.SliceStable(set.pods, func(i, j int) bool {
		a, b := &set.pods[i], &set.pods[j]
		if ra, rb := rank(a), rank(b); ra != rb {
			return ra < rb
		}
		if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
			return a.CreationTimestamp.Before(&b.CreationTimestamp)
		}
		return a.Name < b.Name
	})
	return set, nil
}

// workloadSelector returns the pod selector of the Deployment, StatefulSet
// or DaemonSet called name, or "" when there is none (name is then taken
// as a pod's).
func (s *step) workloadSelector(ctx context.Context, ns, name string) (string, error) {
	if _, err := s.e.cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
		return "", nil
	}
	for _, k := range []kind{kindDeployment, kindStatefulSet, kindDaemonSet} {
		o, err := s.e.client(k, ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) || apierrors.IsForbidden(err) {
			continue
		}
		if err != nil {
			return "", s.apiErr(err, apiReq{verb: "get", resource: k.resource(), ns: ns, name: name})
		}
		raw, found, _ := unstructured.NestedMap(o.Object, "spec", "selector")
		if !found {
			continue
		}
		var ls metav1.LabelSelector
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(raw, &ls); err != nil {
			return "", fmt.Errorf("%s %s/%s: selector: %w", k.resource(), ns, name, err)
		}
		sel, err := metav1.LabelSelectorAsSelector(&ls)
		if err != nil {
			return "", fmt.Errorf("%s %s/%s: selector: %w", k.resource(), ns, name, err)
		}
		return sel.String(), nil
	}
	return "", nil
}

// containerOf picks the container to address in p: the step's container,
// else the pod's default-container annotation, else its first container.
func (s *step) containerOf(p *corev1.Pod) (string, error) {
	want := s.pods.container
	var names []string
	for _, c := range p.Spec.Containers {
		names = append(names, c.Name)
	}
	if want == "" {
		want = p.Annotations[defaultContainerAnnotation]
	}
	if want == "" {
		if len(names) == 0 {
			return "", fmt.Errorf("pod %s/%s has no containers", p.Namespace, p.Name)
		}
		return names[0], nil
	}
	for _, n := range names {
		if n == want {
			return want, nil
		}
	}
	return "", invalid("container", "pod %s/%s has no container %q (it has %s)", p.Namespace, p.Name, want, strings.Join(names, ", "))
}
