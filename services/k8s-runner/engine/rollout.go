package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
)

// Deployment annotations the deployment controller maintains.
const (
	revisionAnnotation        = "deployment.kubernetes.io/revision"
	revisionHistoryAnnotation = "deployment.kubernetes.io/revision-history"
	desiredReplicasAnnotation = "deployment.kubernetes.io/desired-replicas"
	maxReplicasAnnotation     = "deployment.kubernetes.io/max-replicas"
	lastAppliedAnnotation     = "kubectl.kubernetes.io/last-applied-configuration"
	deprecatedRollbackTo      = "deprecated.deployment.rollback.to"
)

// rolloutStatus decides whether a Deployment, StatefulSet or DaemonSet has
// rolled out, with the same rules and messages as `kubectl rollout status`
// (k8s.io/kubectl/pkg/polymorphichelpers/rollout_status.go): done reports
// completion, msg the progress, and a Deployment whose Progressing
// condition has reason ProgressDeadlineExceeded fails with a
// [*RolloutError].
//
// stale, when set, is the last update time of a ProgressDeadlineExceeded
// condition that predates the change being waited for: the controller keeps
// such a condition until the new template makes progress (it does not
// reset it when a template returns to an existing ReplicaSet, as a rollback
// does), so it is not held against the new rollout. `kubectl rollout
// status` has no such notion; k8s_wait passes nil to decide exactly as it.
func rolloutStatus(o *unstructured.Unstructured, stale *metav1.Time) (msg string, done bool, err error) {
	switch o.GetKind() {
	case "Deployment":
		var d appsv1.Deployment
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &d); err != nil {
			return "", false, fmt.Errorf("decode deployment %s: %w", o.GetName(), err)
		}
		return deploymentStatus(&d, stale)
	case "StatefulSet":
		var sts appsv1.StatefulSet
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &sts); err != nil {
			return "", false, fmt.Errorf("decode statefulset %s: %w", o.GetName(), err)
		}
		return statefulSetStatus(&sts)
	case "DaemonSet":
		var ds appsv1.DaemonSet
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &ds); err != nil {
			return "", false, fmt.Errorf("decode daemonset %s: %w", o.GetName(), err)
		}
		return daemonSetStatus(&ds)
	}
	return "", false, fmt.Errorf("%w: rollout status applies to deployments, statefulsets and daemonsets, not %s", ErrInvalidConfig, o.GetKind())
}

func deploymentStatus(d *appsv1.Deployment, stale *metav1.Time) (string, bool, error) {
	if d.Generation > d.Status.ObservedGeneration {
		return "Waiting for deployment spec update to be observed...", false, nil
	}
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentProgressing && c.Reason == reasonProgressDeadline &&
			(stale == nil || !c.LastUpdateTime.Equal(stale)) {
			return "", false, &RolloutError{Kind: "Deployment", Namespace: d.Namespace, Name: d.Name, Reason: reasonProgressDeadline,
				Message: fmt.Sprintf("deployment %q exceeded its progress deadline: %s", d.Name, c.Message)}
		}
	}
	if d.Spec.Replicas != nil && d.Status.UpdatedReplicas < *d.Spec.Replicas {
		return fmt.Sprintf("Waiting for deployment %q rollout to finish: %d out of %d new replicas have been updated...", d.Name, d.Status.UpdatedReplicas, *d.Spec.Replicas), false, nil
	}
	if d.Status.Replicas > d.Status.UpdatedReplicas {
		return fmt.Sprintf("Waiting for deployment %q rollout to finish: %d old replicas are pending termination...", d.Name, d.Status.Replicas-d.Status.UpdatedReplicas), false, nil
	}
	if d.Status.AvailableReplicas < d.Status.UpdatedReplicas {
		return fmt.Sprintf("Waiting for deployment %q rollout to finish: %d of %d updated replicas are available...", d.Name, d.Status.AvailableReplicas, d.Status.UpdatedReplicas), false, nil
	}
	return fmt.Sprintf("deployment %q successfully rolled out", d.Name), true, nil
}

func statefulSetStatus(sts *appsv1.StatefulSet) (string, bool, error) {
	if sts.Spec.UpdateStrategy.Type != appsv1.RollingUpdateStatefulSetStrategyType {
		return "", true, fmt.Errorf("%w: rollout status is only available for the %s strategy type", ErrInvalidConfig, appsv1.RollingUpdateStatefulSetStrategyType)
	}
	if sts.Status.ObservedGeneration == 0 || sts.Generation > sts.Status.ObservedGeneration {
		return "Waiting for statefulset spec update to be observed...", false, nil
	}
	if sts.Spec.Replicas != nil && sts.Status.ReadyReplicas < *sts.Spec.Replicas {
		return fmt.Sprintf("Waiting for %d pods to be ready...", *sts.Spec.Replicas-sts.Status.ReadyReplicas), false, nil
	}
	if ru := sts.Spec.UpdateStrategy.RollingUpdate; ru != nil {
		if sts.Spec.Replicas != nil && ru.Partition != nil {
			if sts.Status.UpdatedReplicas < (*sts.Spec.Replicas - *ru.Partition) {
				return fmt.Sprintf("Waiting for partitioned roll out to finish: %d out of %d new pods have been updated...",
					sts.Status.UpdatedReplicas, *sts.Spec.Replicas-*ru.Partition), false, nil
			}
		}
		return fmt.Sprintf("partitioned roll out complete: %d new pods have been updated...", sts.Status.UpdatedReplicas), true, nil
	}
	if sts.Status.UpdateRevision != sts.Status.CurrentRevision {
		return fmt.Sprintf("waiting for statefulset rolling update to complete %d pods at revision %s...", sts.Status.UpdatedReplicas, sts.Status.UpdateRevision), false, nil
	}
	return fmt.Sprintf("statefulset rolling update complete %d pods at revision %s...", sts.Status.CurrentReplicas, sts.Status.CurrentRevision), true, nil
}

func daemonSetStatus(ds *appsv1.DaemonSet) (string, bool, error) {
	if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType {
		return "", true, fmt.Errorf("%w: rollout status is only available for the %s strategy type", ErrInvalidConfig, appsv1.RollingUpdateDaemonSetStrategyType)
	}
	if ds.Generation > ds.Status.ObservedGeneration {
		return "Waiting for daemon set spec update to be observed...", false, nil
	}
	if ds.Status.UpdatedNumberScheduled < ds.Status.DesiredNumberScheduled {
		return fmt.Sprintf("Waiting for daemon set %q rollout to finish: %d out of %d new pods have been updated...", ds.Name, ds.Status.UpdatedNumberScheduled, ds.Status.DesiredNumberScheduled), false, nil
	}
	if ds.Status.NumberAvailable < ds.Status.DesiredNumberScheduled {
		return fmt.Sprintf("Waiting for daemon set %q rollout to finish: %d of %d updated pods are available...", ds.Name, ds.Status.NumberAvailable, ds.Status.DesiredNumberScheduled), false, nil
	}
	return fmt.Sprintf("daemon set %q successfully rolled out", ds.Name), true, nil
}

// rolloutKinds are the kinds rolloutStatus understands.
func isRolloutKind(k string) bool { return k == "Deployment" || k == "StatefulSet" || k == "DaemonSet" }

// progress prints each new status message once.
type progress struct {
	s    *step
	last string
}

func (p *progress) report(msg string) {
	if msg != "" && msg != p.last {
		p.last = msg
		p.s.printf("%s", msg)
	}
}

// waitRollout watches one workload until it has rolled out. It fails with a
// [*RolloutError] when the progress deadline is exceeded, when the timeout
// passes (Reason "Timeout", with the last status), or when the workload
// is deleted meanwhile. stale is as for [rolloutStatus]. The final object is
// returned.
func (s *step) waitRollout(ctx context.Context, k kind, ns, name string, timeout time.Duration, stale *metav1.Time) (*unstructured.Unstructured, error) {
	sel := selection{kind: k, ns: ns, name: name}
	wctx, cancel := waitCtx(ctx, timeout, sel.String()+" to roll out")
	defer cancel()
	p := &progress{s: s}
	var last *unstructured.Unstructured
	seen := false
	err := s.observe(wctx, sel, func(objs []*unstructured.Unstructured) (bool, error) {
		if len(objs) == 0 {
			if seen {
				return false, fmt.Errorf("%s was deleted while waiting for its rollout: %w", sel, ErrConditionFailed)
			}
			return false, fmt.Errorf("%s: %w", sel, ErrNotFound)
		}
		seen = true
		last = objs[0]
		msg, done, err := rolloutStatus(last, stale)
		p.report(msg)
		return done, err
	})
	if err == nil {
		return last, nil
	}
	var re *RolloutError
	if errors.As(err, &re) {
		re.Pods = s.podHints(ctx, last)
		return last, re
	}
	if errors.Is(err, ErrWaitTimeout) && ctx.Err() == nil {
		re = &RolloutError{Kind: k.kind, Namespace: ns, Name: name, Reason: reasonTimeout,
			Message: fmt.Sprintf("not rolled out within %s: %s", timeout, p.last)}
		re.Pods = s.podHints(ctx, last)
		return last, re
	}
	return last, err
}

// podHints says why up to three of a workload's pods are not ready, so that
// a failed rollout names its cause (an image that cannot be pulled, a
// failing readiness probe).
func (s *step) podHints(ctx context.Context, o *unstructured.Unstructured) []string {
	if o == nil {
		return nil
	}
	sel, found, _ := unstructured.NestedMap(o.Object, "spec", "selector")
	if !found {
		return nil
	}
	var ls metav1.LabelSelector
	if runtime.DefaultUnstructuredConverter.FromUnstructured(sel, &ls) != nil {
		return nil
	}
	selector, err := metav1.LabelSelectorAsSelector(&ls)
	if err != nil {
		return nil
	}
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	pods, err := s.e.cs.CoreV1().Pods(o.GetNamespace()).List(hctx, metav1.ListOptions{LabelSelector: selector.String()})
	if err != nil {
		return nil
	}
	var hints []string
	for _, p := range pods.Items {
		if len(hints) == 3 {
			break
		}
		if h := podHint(&p); h != "" {
			hints = append(hints, h)
		}
	}
	return hints
}

// podHint describes why a pod is not ready ("" when it is).
func podHint(p *corev1.Pod) string {
	if isPodReady(p) {
		return ""
	}
	var why []string
	for _, cs := range p.Status.ContainerStatuses {
		switch {
		case cs.State.Waiting != nil:
			why = append(why, fmt.Sprintf("container %s waiting: %s %s", cs.Name, cs.State.Waiting.Reason, cs.State.Waiting.Message))
		case cs.State.Terminated != nil:
			why = append(why, fmt.Sprintf("container %s terminated: %s (exit code %d)", cs.Name, cs.State.Terminated.Reason, cs.State.Terminated.ExitCode))
		case !cs.Ready:
			why = append(why, fmt.Sprintf("container %s running but not ready", cs.Name))
		}
	}
	if len(why) == 0 {
		for _, c := range p.Status.Conditions {
			if c.Status != corev1.ConditionTrue && (c.Type == corev1.PodScheduled || c.Type == corev1.PodReady) {
				why = append(why, strings.TrimSpace(fmt.Sprintf("%s=%s %s %s", c.Type, c.Status, c.Reason, c.Message)))
			}
		}
	}
	if len(why) == 0 {
		why = append(why, "phase "+string(p.Status.Phase))
	}
	return fmt.Sprintf("pod %s: %s", p.Name, strings.TrimSpace(strings.Join(why, ", ")))
}

func isPodReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// deploymentRevision reads a Deployment's or ReplicaSet's revision (0 when
// unset).
func deploymentRevision(o metav1.Object) int64 {
	n, _ := strconv.ParseInt(o.GetAnnotations()[revisionAnnotation], 10, 64)
	return n
}

// rollback restores a Deployment's pod template from the ReplicaSet of
// revision toRevision (0: the revision before the newest), the way `kubectl
// rollout undo` does, and waits for the restored rollout. It returns the
// revision whose template was restored.
func (s *step) rollback(ctx context.Context, ns, name string, toRevision int64, timeout time.Duration) (int64, error) {
	apps := s.e.cs.AppsV1()
	d, err := apps.Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return 0, s.apiErr(err, apiReq{verb: "get", resource: "deployments.apps", ns: ns, name: name})
	}
	if d.Spec.Paused {
		return 0, fmt.Errorf("deployment %s/%s is paused; a paused deployment cannot be rolled back", ns, name)
	}
	selector, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil {
		return 0, fmt.Errorf("deployment %s/%s has an invalid selector: %w", ns, name, err)
	}
	rsList, err := apps.ReplicaSets(ns).List(ctx, metav1.ListOptions{LabelSelector: selector.String()})
	if err != nil {
		return 0, s.apiErr(err, apiReq{verb: "list", resource: "replicasets.apps", ns: ns})
	}
	var owned []*appsv1.ReplicaSet
	for i := range rsList.Items {
		if metav1.IsControlledBy(&rsList.Items[i], d) {
			owned = append(owned, &rsList.Items[i])
		}
	}
	sort.Slice(owned, func(i, j int) bool { return deploymentRevision(owned[i]) > deploymentRevision(owned[j]) })
	var target *appsv1.ReplicaSet
	for i, rs := range owned {
		if (toRevision == 0 && i == 1) || (toRevision > 0 && deploymentRevision(rs) == toRevision) {
			target = rs
			break
		}
	}
	if target == nil {
		if toRevision > 0 {
			return 0, fmt.Errorf("deployment %s/%s has no revision %d to roll back to", ns, name, toRevision)
		}
		return 0, fmt.Errorf("deployment %s/%s has no previous revision to roll back to", ns, name)
	}
	restored := deploymentRevision(target)
	if !equalIgnoreHash(&target.Spec.Template, &d.Spec.Template) {
		tmpl := target.Spec.Template.DeepCopy()
		delete(tmpl.Labels, appsv1.DefaultDeploymentUniqueLabelKey)
		annotations := map[string]string{}
		skip := map[string]bool{lastAppliedAnnotation: true, revisionAnnotation: true, revisionHistoryAnnotation: true,
			desiredReplicasAnnotation: true, maxReplicasAnnotation: true, deprecatedRollbackTo: true}
		for k, v := range d.Annotations {
			if skip[k] {
				annotations[k] = v
			}
		}
		for k, v := range target.Annotations {
			if !skip[k] {
				annotations[k] = v
			}
		}
		// The deployment's own annotations (run id, ...) stay as applied.
		for k, v := range d.Annotations {
			if _, ok := annotations[k]; !ok {
				annotations[k] = v
			}
		}
		patch, err := json.Marshal([]map[string]any{
			{"op": "replace", "path": "/spec/template", "value": tmpl},
			{"op": "replace", "path": "/metadata/annotations", "value": annotations},
		})
		if err != nil {
			return 0, err
		}
		fm := s.fieldManager()
		if _, err := apps.Deployments(ns).Patch(ctx, name, types.JSONPatchType, patch, metav1.PatchOptions{FieldManager: fm}); err != nil {
			return 0, s.apiErr(err, apiReq{verb: "patch", resource: "deployments.apps", ns: ns, name: name})
		}
		s.printf("rolled deployment %s/%s back to the template of revision %d", ns, name, restored)
	}
	if _, err := s.waitRollout(ctx, kindDeployment, ns, name, timeout, staleDeadline(d)); err != nil {
		return restored, fmt.Errorf("restored revision %d but it did not roll out: %w", restored, err)
	}
	return restored, nil
}

// staleDeadline returns the last update time of d's ProgressDeadlineExceeded
// condition, if it has one (see [rolloutStatus]).
func staleDeadline(d *appsv1.Deployment) *metav1.Time {
	if d == nil {
		return nil
	}
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentProgressing && c.Reason == reasonProgressDeadline {
			t := c.LastUpdateTime
			return &t
		}
	}
	return nil
}

// equalIgnoreHash compares pod templates without their pod-template-hash
// label, as kubectl does.
func equalIgnoreHash(a, b *corev1.PodTemplateSpec) bool {
	a, b = a.DeepCopy(), b.DeepCopy()
	delete(a.Labels, appsv1.DefaultDeploymentUniqueLabelKey)
	delete(b.Labels, appsv1.DefaultDeploymentUniqueLabelKey)
	return apiequality.Semantic.DeepEqual(a, b)
}
