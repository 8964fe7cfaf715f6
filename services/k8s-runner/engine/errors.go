package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Sentinel errors, matched with errors.Is. Execute wraps them with the
// namespace, resource and cluster they concern.
var (
	// ErrNamespaceNotFound: the step's namespace does not exist. The engine
	// never creates namespaces on its own; apply a Namespace manifest first.
	ErrNamespaceNotFound = errors.New("namespace not found")
	// ErrNotFound: the named resource does not exist.
	ErrNotFound = errors.New("not found")
	// ErrNoPods: no pod (or no running pod) matches the step's pod, pod
	// selector or resource.
	ErrNoPods = errors.New("no matching pod")
	// ErrRolloutFailed: a Deployment, StatefulSet or DaemonSet rollout did
	// not complete; see [*RolloutError].
	ErrRolloutFailed = errors.New("rollout failed")
	// ErrWaitTimeout: a wait ran out of its k8s_config.timeout.
	ErrWaitTimeout = errors.New("timed out")
	// ErrConditionFailed: a waited-for object reached a state from which the
	// condition can no longer become true (failed job, terminated pod).
	ErrConditionFailed = errors.New("condition cannot be met")
	// ErrInvalidConfig: the step's k8s_config (or command) is unusable.
	ErrInvalidConfig = errors.New("invalid k8s_config")
	// ErrUnknownResource: API discovery knows no such resource type.
	ErrUnknownResource = errors.New("unknown resource type")
)

// ForbiddenError reports that the cluster's RBAC denied a request made with
// the runner's credentials for the cluster.
type ForbiddenError struct {
	Cluster   string // served cluster
	Verb      string // RBAC verb attempted: get, list, watch, patch, create, delete
	Resource  string // resource[.group][/subresource], e.g. "deployments.apps"
	Namespace string // empty for cluster-scoped resources
	Name      string // empty for list, watch and collection requests
	Err       error  // the apiserver's answer
}

func (e *ForbiddenError) Error() string {
	where := "cluster-wide"
	if e.Namespace != "" {
		where = fmt.Sprintf("in namespace %q", e.Namespace)
	}
	what := e.Resource
	if e.Name != "" {
		what += fmt.Sprintf(" %q", e.Name)
	}
	return fmt.Sprintf("forbidden by RBAC: the credentials for cluster %q may not %s %s %s (grant the verb %q on %q to them): %v",
		e.Cluster, e.Verb, what, where, e.Verb, e.Resource, e.Err)
}

func (e *ForbiddenError) Unwrap() error { return e.Err }

// RolloutError reports a rollout that did not complete: its progress deadline
// was exceeded (Reason "ProgressDeadlineExceeded", as `kubectl rollout
// status` decides it) or the wait ran out of time (Reason "Timeout"). It
// matches [ErrRolloutFailed], and [ErrWaitTimeout] when it timed out.
type RolloutError struct {
	Kind, Namespace, Name string
	Reason                string   // ProgressDeadlineExceeded or Timeout
	Message               string   // the controller's condition message or the last rollout status
	Pods                  []string // why some of its pods are not ready, when known
	// RolledBackTo is the revision restored by rollback_on_failure (0: no
	// rollback happened); RollbackErr says why a requested rollback failed.
	RolledBackTo int64
	RollbackErr  error
}

func (e *RolloutError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "rollout of %s %s/%s failed: %s", strings.ToLower(e.Kind), e.Namespace, e.Name, e.Reason)
	if e.Message != "" {
		fmt.Fprintf(&b, ": %s", strings.TrimSpace(e.Message))
	}
	if len(e.Pods) > 0 {
		fmt.Fprintf(&b, " [%s]", strings.Join(e.Pods, "; "))
	}
	switch {
	case e.RolledBackTo > 0:
		fmt.Fprintf(&b, "; rolled back to revision %d", e.RolledBackTo)
	case e.RollbackErr != nil:
		fmt.Fprintf(&b, "; rollback failed: %v", e.RollbackErr)
	}
	return b.String()
}

// Is matches [ErrRolloutFailed], and [ErrWaitTimeout] for a timed-out
// rollout.
func (e *RolloutError) Is(target error) bool {
	return target == ErrRolloutFailed || (target == ErrWaitTimeout && e.Reason == reasonTimeout)
}

const (
	reasonTimeout          = "Timeout"
	reasonProgressDeadline = "ProgressDeadlineExceeded"
)

// apiReq describes an API request for error messages.
type apiReq struct {
	verb, resource, ns, name string
}

// apiErr gives an API error its meaning: RBAC denials become
// [*ForbiddenError], a missing namespace wraps [ErrNamespaceNotFound], a
// missing object wraps [ErrNotFound]; other errors are wrapped with the
// request.
func (s *step) apiErr(err error, r apiReq) error {
	if err == nil {
		return nil
	}
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		return fmt.Errorf("%s %s: %w", r.verb, r.describe(), err)
	}
	st := status.Status()
	switch {
	case apierrors.IsForbidden(err):
		return &ForbiddenError{Cluster: s.e.cfg.Cluster, Verb: r.verb, Resource: r.resource, Namespace: r.ns, Name: r.name, Err: err}
	case apierrors.IsNotFound(err) && st.Details != nil && st.Details.Kind == "namespaces" && r.resource != "namespaces":
		return s.nsMissing(st.Details.Name)
	case apierrors.IsNotFound(err):
		return fmt.Errorf("%s: %w", r.describe(), ErrNotFound)
	}
	return fmt.Errorf("%s %s: %w", r.verb, r.describe(), err)
}

func (r apiReq) describe() string {
	switch {
	case r.name != "" && r.ns != "":
		return fmt.Sprintf("%s %s/%s", r.resource, r.ns, r.name)
	case r.name != "":
		return fmt.Sprintf("%s %s", r.resource, r.name)
	case r.ns != "":
		return fmt.Sprintf("%s in namespace %s", r.resource, r.ns)
	}
	return r.resource
}

func (s *step) nsMissing(ns string) error {
	return fmt.Errorf("namespace %q does not exist in cluster %q (the k8s-runner never creates namespaces: create it first, e.g. with a k8s_deploy manifest of kind Namespace): %w",
		ns, s.e.cfg.Cluster, ErrNamespaceNotFound)
}

// checkNamespace fails with [ErrNamespaceNotFound] when ns does not exist.
// Credentials that may not read namespaces skip the check: the request that
// follows then reports what it finds.
func (s *step) checkNamespace(ctx context.Context, ns string) error {
	_, err := s.e.cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	switch {
	case err == nil, apierrors.IsForbidden(err):
		return nil
	case apierrors.IsNotFound(err):
		return s.nsMissing(ns)
	case ctx.Err() != nil:
		return context.Cause(ctx)
	}
	return fmt.Errorf("cluster %q: get namespace %q: %w", s.e.cfg.Cluster, ns, err)
}

// invalid returns an [ErrInvalidConfig] error about k8s_config.key.
func invalid(key, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalidConfig, key, fmt.Sprintf(format, args...))
}
