package engine

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ansflow/ansflow/pkg/spec/steps"
)

// delete executes k8s_delete: it deletes the step's resource (any kind,
// named by resource_type, default deployment, and api_version when the
// type is ambiguous), or every object of that kind matching label_selector
// (which then takes precedence over an inherited resource name), with
// propagation_policy Background (the default), Foreground or Orphan. With
// wait (default true, as kubectl) it watches until they are gone. Deleting
// what does not exist succeeds, so that retried attempts are idempotent.
// Outputs: deleted (how many objects), namespace, name.
func (s *step) delete(ctx context.Context) (map[string]string, error) {
	c := s.cfg.(*steps.K8sDeleteConfig)
	rt, av, selector, wait, timeout := c.ResourceType, c.APIVersion, c.LabelSelector, c.Wait, s.timeout(c.Timeout)
	// The definition's values are the API's own spellings.
	prop := metav1.DeletionPropagation(c.PropagationPolicy)
	k, err := s.e.resolve(rt, av)
	if err != nil {
		return nil, err
	}
	if err := s.e.allowKind(k); err != nil {
		return nil, fmt.Errorf("k8s_delete: %w", err)
	}
	sel := selection{kind: k}
	if selector != "" {
		if _, err := labels.Parse(selector); err != nil {
			return nil, invalid("label_selector", "%q: %v", selector, err)
		}
		sel.selector = selector
	} else if sel.name = strings.TrimSpace(s.req.ResourceName); sel.name == "" {
		return nil, fmt.Errorf("%w: k8s_delete needs k8s_resource_name (on this step or an earlier k8s step) or label_selector", ErrInvalidConfig)
	}
	if k.namespaced {
		sel.ns = s.namespace()
		if err := s.checkNamespace(ctx, sel.ns); err != nil {
			return nil, err
		}
	}
	ri := s.e.client(k, sel.ns)
	ns := sel.ns

	// Find the objects first: their UIDs make the deletion precise (a
	// successor created meanwhile under the same name is left alone) and
	// let the wait ignore successors.
	type victim struct{ name, uid string }
	var victims []victim
	if sel.name != "" {
		o, err := ri.Get(ctx, sel.name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			return nil, s.apiErr(err, apiReq{verb: "get", resource: k.resource(), ns: ns, name: sel.name})
		default:
			victims = append(victims, victim{o.GetName(), string(o.GetUID())})
		}
	} else {
		list, err := ri.List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return nil, s.apiErr(err, apiReq{verb: "list", resource: k.resource(), ns: ns})
		}
		for _, o := range list.Items {
			victims = append(victims, victim{o.GetName(), string(o.GetUID())})
		}
	}
	out := map[string]string{"namespace": ns, "name": sel.name, "kind": k.kind}
	if len(victims) == 0 {
		s.printf("%s: nothing to delete", sel)
		out["deleted"] = "0"
		return out, nil
	}
	uids := map[string]bool{}
	deleted := 0
	for _, v := range victims {
		uid := types.UID(v.uid)
		err := ri.Delete(ctx, v.name, metav1.DeleteOptions{PropagationPolicy: &prop, Preconditions: &metav1.Preconditions{UID: &uid}})
		switch {
		case apierrors.IsNotFound(err), apierrors.IsConflict(err):
			// Gone already, or replaced by a successor that is not ours to delete.
			continue
		case err != nil:
			return out, s.apiErr(err, apiReq{verb: "delete", resource: k.resource(), ns: ns, name: v.name})
		}
		s.printf("%s/%s deleted (propagation %s)", k.resource(), v.name, prop)
		uids[v.uid] = true
		deleted++
	}
	out["deleted"] = strconv.Itoa(deleted)
	if !wait || deleted == 0 {
		return out, nil
	}
	return out, s.waitGone(ctx, sel, timeout, uids)
}
