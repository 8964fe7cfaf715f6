package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ansflow/ansflow/pkg/spec/steps"
)

// scale executes k8s_scale: it sets replicas through the scale subresource
// of the step's resource (resource_type deployment, the default,
// statefulset, replicaset, or any kind with a scale subresource) and, with
// wait: true, watches until the workload runs exactly that many ready
// replicas. Outputs: replicas, previous_replicas, namespace, name.
func (s *step) scale(ctx context.Context) (map[string]string, error) {
	// replicas is required and in range: the decoder checked it.
	c := s.cfg.(*steps.K8sScaleConfig)
	replicas, rt, wait, timeout, manager := c.Replicas, c.ResourceType, c.Wait, s.timeout(c.Timeout), s.fieldManager()
	k, err := s.e.resolve(rt, "")
	if err != nil {
		return nil, err
	}
	if err := s.e.allowKind(k); err != nil {
		return nil, fmt.Errorf("k8s_scale: %w", err)
	}
	name := strings.TrimSpace(s.req.ResourceName)
	if name == "" {
		return nil, fmt.Errorf("%w: k8s_scale needs k8s_resource_name (on this step or an earlier k8s step)", ErrInvalidConfig)
	}
	ns := ""
	if k.namespaced {
		ns = s.namespace()
		if err := s.checkNamespace(ctx, ns); err != nil {
			return nil, err
		}
	}
	ri := s.e.client(k, ns)
	sub := k.resource() + "/scale"
	cur, err := ri.Get(ctx, name, metav1.GetOptions{}, "scale")
	if apierrors.IsNotFound(err) {
		// Tell "no such object" from "this kind cannot be scaled".
		_, gerr := ri.Get(ctx, name, metav1.GetOptions{})
		if gerr == nil {
			return nil, fmt.Errorf("%w: %s %s/%s has no scale subresource", ErrInvalidConfig, k.resource(), ns, name)
		}
		return nil, s.apiErr(gerr, apiReq{verb: "get", resource: k.resource(), ns: ns, name: name})
	}
	if err != nil {
		return nil, s.apiErr(err, apiReq{verb: "get", resource: sub, ns: ns, name: name})
	}
	prev, _, _ := unstructured.NestedInt64(cur.Object, "spec", "replicas")
	patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"replicas": replicas}})
	if _, err := ri.Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: manager}, "scale"); err != nil {
		return nil, s.apiErr(err, apiReq{verb: "patch", resource: sub, ns: ns, name: name})
	}
	s.printf("%s/%s scaled from %d to %d replicas", k.resource(), name, prev, replicas)
	out := map[string]string{"namespace": ns, "name": name, "kind": k.kind,
		"replicas": strconv.FormatInt(replicas, 10), "previous_replicas": strconv.FormatInt(prev, 10)}
	if !wait {
		return out, nil
	}
	sel := selection{kind: k, ns: ns, name: name}
	_, err = s.waitCondition(ctx, sel, timeout, scaled(replicas))
	return out, err
}

// scaled checks that a workload has observed its spec and runs exactly n
// replicas, all ready (and, for Deployments, all of the current template,
// as `kubectl rollout status` also requires).
func scaled(n int64) conditionCheck {
	return func(o *unstructured.Unstructured) (bool, string, error) {
		gen, hasGen, _ := unstructured.NestedInt64(o.Object, "status", "observedGeneration")
		if hasGen && gen < o.GetGeneration() {
			return false, fmt.Sprintf("%s: waiting for the spec update to be observed", o.GetName()), nil
		}
		if isRolloutKind(o.GetKind()) {
			if msg, done, err := rolloutStatus(o, nil); err != nil || !done {
				return false, msg, err
			}
		}
		have, _, _ := unstructured.NestedInt64(o.Object, "status", "replicas")
		ready, hasReady, _ := unstructured.NestedInt64(o.Object, "status", "readyReplicas")
		if !hasReady && !strings.HasPrefix(o.GetAPIVersion(), "apps/") {
			// A custom kind that does not report readiness: count replicas.
			ready = have
		}
		state := fmt.Sprintf("%s: %d replicas, %d ready, want %d", o.GetName(), have, ready, n)
		return have == n && ready == n, state, nil
	}
}
