package engine

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// DefaultKinds are the kinds a cluster entry's steps may apply, scale and
// delete when the entry lists none: namespaced application objects.
// RBAC objects (Role, RoleBinding, ClusterRole, ClusterRoleBinding),
// Namespaces, CustomResourceDefinitions, admission webhooks and every other
// cluster-scoped kind are left out: they reach beyond the namespaces a
// pipeline deploys to.
var DefaultKinds = []string{
	"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod",
	"Service", "Ingress", "ConfigMap", "Secret", "PersistentVolumeClaim", "ServiceAccount",
	"HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
}

// ErrNotAllowed is matched (errors.Is) by every [*AccessError].
var ErrNotAllowed = errors.New("not allowed for this cluster")

// Access is what the steps of one cluster entry may touch: the namespaces
// they work in and the kinds they apply, scale and delete. The runner's
// operator sets it in the cluster entry, never the pipeline.
type Access struct {
	// Namespaces are the namespaces (path.Match globs; "*" for all) steps
	// may use. Empty means only the engine's default namespace.
	Namespaces []string
	// Kinds are the kinds (as in a manifest's kind; "*" for all) steps may
	// apply, scale and delete. Empty means [DefaultKinds]. A cluster-scoped
	// kind is only allowed when listed by name.
	Kinds []string
}

// AccessError is a step refused by its cluster entry's [Access]. Its message
// names the namespace or kind and the cluster entry setting that would
// allow it.
type AccessError struct {
	Cluster string
	// Namespace or Kind is what was refused.
	Namespace, Kind string
	// ClusterScoped is set for a refused cluster-scoped kind.
	ClusterScoped bool
	Allowed       []string
}

func (e *AccessError) Error() string {
	if e.Kind != "" {
		scope := ""
		if e.ClusterScoped {
			scope = " (cluster-scoped)"
		}
		return fmt.Sprintf("kind %s%s is not allowed on cluster %q (allowed kinds: %s; add it to the cluster entry's kinds)",
			e.Kind, scope, e.Cluster, strings.Join(e.Allowed, ", "))
	}
	return fmt.Sprintf("namespace %q is not allowed on cluster %q (allowed namespaces: %s; add it to the cluster entry's namespaces)",
		e.Namespace, e.Cluster, strings.Join(e.Allowed, ", "))
}

// Is makes errors.Is(err, [ErrNotAllowed]) true.
func (e *AccessError) Is(target error) bool { return target == ErrNotAllowed }

// validate checks the globs.
func (a *Access) validate() error {
	for _, g := range a.Namespaces {
		if _, err := path.Match(g, ""); err != nil || g == "" {
			return fmt.Errorf("namespaces: %q is not a valid glob pattern", g)
		}
	}
	for _, k := range a.Kinds {
		if strings.TrimSpace(k) == "" {
			return errors.New("kinds: empty kind")
		}
	}
	return nil
}

// namespace returns an *AccessError unless steps may use ns.
func (e *Engine) allowNamespace(ns string) error {
	for _, g := range e.cfg.Access.Namespaces {
		if ok, _ := path.Match(g, ns); ok {
			return nil
		}
	}
	return &AccessError{Cluster: e.cfg.Cluster, Namespace: ns, Allowed: e.cfg.Access.Namespaces}
}

// allowKind returns an *AccessError unless steps may change objects of k.
// Namespaced kinds match "*" or their name; cluster-scoped ones only their
// name.
func (e *Engine) allowKind(k kind) error {
	for _, a := range e.cfg.Access.Kinds {
		if strings.EqualFold(a, k.kind) || (a == "*" && k.namespaced) {
			return nil
		}
	}
	return &AccessError{Cluster: e.cfg.Cluster, Kind: k.kind, ClusterScoped: !k.namespaced, Allowed: e.cfg.Access.Kinds}
}
