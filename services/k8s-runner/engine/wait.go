package engine

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/ansflow/ansflow/pkg/spec/steps"
)

// wait executes k8s_wait: it watches the step's resource (resource_type,
// default deployment, or pods matching pod_selector) until condition holds:
//
//   - available, rollout, rolled_out, rollout_complete, complete or ready on
//     a Deployment, StatefulSet or DaemonSet: rolled out exactly as `kubectl
//     rollout status` decides it; ProgressDeadlineExceeded fails the step
//     with its reason (and rolls back with rollback_on_failure: true).
//   - ready on pods (the default for pods): every selected pod Ready; a pod
//     that terminates first fails the step. A selector may match nothing at
//     first: the wait goes on until pods appear.
//   - complete on a Job (its default): Complete=True; Failed=True fails.
//   - deleted: the object, or every object matching the selector, is gone.
//   - Type=Status (or Type alone, meaning Type=True), on any kind: the
//     object's status.conditions has it.
//
// timeout (seconds, default [Config.WaitTimeout]) bounds the wait.
func (s *step) wait(ctx context.Context) (map[string]string, error) {
	c := s.cfg.(*steps.K8sWaitConfig)
	timeout, rt, av, podSel, cond, rollback := s.timeout(c.Timeout), c.ResourceType, c.APIVersion, c.PodSelector, c.Condition, c.RollbackOnFailure
	if rt == "" {
		rt = "deployment"
		if podSel != "" {
			rt = "pod"
		}
	}
	k, err := s.e.resolve(rt, av)
	if err != nil {
		return nil, err
	}
	sel := selection{kind: k}
	if podSel != "" {
		if k.gvr != kindPod.gvr {
			return nil, invalid("pod_selector", "selects pods, but resource_type is %q", rt)
		}
		if _, err := labels.Parse(podSel); err != nil {
			return nil, invalid("pod_selector", "%q: %v", podSel, err)
		}
		sel.selector = podSel
	} else if sel.name = strings.TrimSpace(s.req.ResourceName); sel.name == "" {
		return nil, fmt.Errorf("%w: k8s_wait needs k8s_resource_name (on this step or an earlier k8s step) or pod_selector", ErrInvalidConfig)
	}
	if k.namespaced {
		sel.ns = s.namespace()
		if err := s.checkNamespace(ctx, sel.ns); err != nil {
			return nil, err
		}
	}
	out := map[string]string{"namespace": sel.ns, "name": sel.name, "kind": k.kind}

	lc := strings.ToLower(cond)
	if lc == "" {
		switch {
		case isRolloutKind(k.kind) && k.gvr.Group == "apps":
			lc = "rollout"
		case k.gvr == kindPod.gvr:
			lc = "ready"
		case k.gvr == kindJob.gvr:
			lc = "complete"
		default:
			return nil, invalid("condition", "required for %s: deleted, or Type=Status such as Ready=True", k.resource())
		}
	}
	if rollback && !(k.gvr == kindDeployment.gvr && isRolloutCondition(lc)) {
		return nil, invalid("rollback_on_failure", "applies to waiting for a Deployment's rollout")
	}

	if isRolloutKind(k.kind) && k.gvr.Group == "apps" && isRolloutCondition(lc) {
		final, err := s.waitRollout(ctx, k, sel.ns, sel.name, timeout, nil)
		if final != nil && k.kind == "Deployment" {
			if rev := deploymentRevision(final); rev > 0 {
				out["revision"] = strconv.FormatInt(rev, 10)
			}
		}
		var re *RolloutError
		if rollback && errors.As(err, &re) && ctx.Err() == nil {
			s.printf("rollout failed (%s); rolling back to the previous revision", re.Reason)
			re.RolledBackTo, re.RollbackErr = s.rollback(ctx, sel.ns, sel.name, 0, timeout)
			if re.RollbackErr != nil {
				re.RolledBackTo = 0
			}
		}
		return out, err
	}

	var check conditionCheck
	switch {
	case lc == "deleted" || lc == "delete" || lc == "gone":
		return out, s.waitGone(ctx, sel, timeout, nil)
	case k.gvr == kindPod.gvr && lc == "ready":
		check = podReady
	case k.gvr == kindJob.gvr && (lc == "complete" || lc == "completed" || lc == "succeeded"):
		check = jobComplete
	default:
		typ, want, ok := strings.Cut(cond, "=")
		if !ok {
			want = "True"
		}
		typ, want = strings.TrimSpace(typ), strings.TrimSpace(want)
		if typ == "" || want == "" || strings.ContainsAny(typ, " \t") {
			return nil, invalid("condition", "%q: want available, ready, complete, deleted or Type=Status", cond)
		}
		check = hasCondition(typ, want)
	}
	names, err := s.waitCondition(ctx, sel, timeout, check)
	if len(names) > 0 && sel.name == "" {
		out["pods"] = strings.Join(names, ",")
	}
	return out, err
}

func isRolloutCondition(c string) bool {
	switch c {
	case "available", "rollout", "rolled_out", "rollout_complete", "complete", "ready":
		return true
	}
	return false
}

// conditionCheck decides one object: met, a description of its state, or
// an error when the condition can no longer be met.
type conditionCheck func(o *unstructured.Unstructured) (met bool, state string, err error)

// waitCondition watches sel until check is met by the named object, or by
// every object matching the selector (and at least one: a selector that
// matches nothing yet keeps the wait going). It returns the names of the
// selected objects.
func (s *step) waitCondition(ctx context.Context, sel selection, timeout time.Duration, check conditionCheck) ([]string, error) {
	wctx, cancel := waitCtx(ctx, timeout, sel.String())
	defer cancel()
	p := &progress{s: s}
	var names []string
	seen := false
	err := s.observe(wctx, sel, func(objs []*unstructured.Unstructured) (bool, error) {
		if len(objs) == 0 {
			if sel.name != "" {
				if seen {
					return false, fmt.Errorf("%s was deleted while waiting: %w", sel, ErrConditionFailed)
				}
				return false, fmt.Errorf("%s: %w", sel, ErrNotFound)
			}
			p.report(fmt.Sprintf("no %s matches %q yet", sel.kind.resource(), sel.selector))
			return false, nil
		}
		seen = true
		names = names[:0]
		var waiting []string
		for _, o := range objs {
			met, state, err := check(o)
			if err != nil {
				return false, err
			}
			names = append(names, o.GetName())
			if !met {
				waiting = append(waiting, state)
			}
		}
		if len(waiting) == 0 {
			p.report(fmt.Sprintf("%s: condition met by %s", sel, strings.Join(names, ", ")))
			return true, nil
		}
		if len(waiting) > 3 {
			waiting = append(waiting[:3], fmt.Sprintf("and %d more", len(waiting)-3))
		}
		p.report(strings.Join(waiting, "; "))
		return false, nil
	})
	if errors.Is(err, ErrWaitTimeout) && ctx.Err() == nil {
		switch {
		case !seen && sel.kind.gvr == kindPod.gvr:
			err = fmt.Errorf("%w: %w", err, ErrNoPods)
		case !seen:
			err = fmt.Errorf("%w: nothing matches selector %q", err, sel.selector)
		default:
			err = fmt.Errorf("%w: %s", err, p.last)
		}
	}
	return names, err
}

// waitGone watches sel until it selects nothing, or, with uids, nothing
// with one of those UIDs (so that a successor of the same name does not
// count).
func (s *step) waitGone(ctx context.Context, sel selection, timeout time.Duration, uids map[string]bool) error {
	wctx, cancel := waitCtx(ctx, timeout, sel.String()+" to be deleted")
	defer cancel()
	p := &progress{s: s}
	err := s.observe(wctx, sel, func(objs []*unstructured.Unstructured) (bool, error) {
		var left []string
		for _, o := range objs {
			if uids == nil || uids[string(o.GetUID())] {
				left = append(left, o.GetName())
			}
		}
		if len(left) == 0 {
			p.report(fmt.Sprintf("%s: gone", sel))
			return true, nil
		}
		if len(left) > 5 {
			left = append(left[:5], fmt.Sprintf("and %d more", len(left)-5))
		}
		p.report(fmt.Sprintf("waiting for deletion of %s", strings.Join(left, ", ")))
		return false, nil
	})
	if errors.Is(err, ErrWaitTimeout) && ctx.Err() == nil {
		err = fmt.Errorf("%w: %s", err, p.last)
	}
	return err
}

// condition returns status.conditions[type] of o, matching the type
// case-insensitively as `kubectl wait` does.
func condition(o *unstructured.Unstructured, typ string) (status, reason, message string, found bool) {
	conds, _, _ := unstructured.NestedSlice(o.Object, "status", "conditions")
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if !ok {
			continue
		}
		if t, _ := m["type"].(string); strings.EqualFold(t, typ) {
			status, _ = m["status"].(string)
			reason, _ = m["reason"].(string)
			message, _ = m["message"].(string)
			return status, reason, message, true
		}
	}
	return "", "", "", false
}

// hasCondition checks status.conditions for Type=Status.
func hasCondition(typ, want string) conditionCheck {
	return func(o *unstructured.Unstructured) (bool, string, error) {
		st, reason, msg, found := condition(o, typ)
		if !found {
			return false, fmt.Sprintf("%s has no %s condition yet", o.GetName(), typ), nil
		}
		state := fmt.Sprintf("%s has %s=%s", o.GetName(), typ, st)
		if reason != "" || msg != "" {
			state += strings.TrimRight(fmt.Sprintf(" (%s: %s", reason, msg), ": ") + ")"
		}
		return strings.EqualFold(st, want), state, nil
	}
}

// podReady checks a pod's Ready condition; a pod that terminated cannot
// become ready.
func podReady(o *unstructured.Unstructured) (bool, string, error) {
	phase, _, _ := unstructured.NestedString(o.Object, "status", "phase")
	st, reason, _, _ := condition(o, "Ready")
	if strings.EqualFold(st, "True") {
		return true, fmt.Sprintf("pod %s is ready", o.GetName()), nil
	}
	if phase == "Succeeded" || phase == "Failed" {
		return false, "", fmt.Errorf("pod %s/%s terminated (phase %s) without becoming ready: %w", o.GetNamespace(), o.GetName(), phase, ErrConditionFailed)
	}
	state := fmt.Sprintf("pod %s is %s, not ready", o.GetName(), strings.ToLower(phase))
	if reason != "" {
		state += " (" + reason + ")"
	}
	return false, state, nil
}

// jobComplete checks a Job's Complete condition; Failed=True fails.
func jobComplete(o *unstructured.Unstructured) (bool, string, error) {
	if st, reason, msg, _ := condition(o, "Failed"); strings.EqualFold(st, "True") {
		return false, "", fmt.Errorf("job %s/%s failed: %s %s: %w", o.GetNamespace(), o.GetName(), reason, msg, ErrConditionFailed)
	}
	if st, _, _, _ := condition(o, "Complete"); strings.EqualFold(st, "True") {
		return true, fmt.Sprintf("job %s is complete", o.GetName()), nil
	}
	succeeded, _, _ := unstructured.NestedInt64(o.Object, "status", "succeeded")
	active, _, _ := unstructured.NestedInt64(o.Object, "status", "active")
	return false, fmt.Sprintf("job %s: %d active, %d succeeded", o.GetName(), active, succeeded), nil
}
