package engine

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
)

// kind is a resolved resource type: what to call, how it is named and
// whether it lives in a namespace.
type kind struct {
	gvr        schema.GroupVersionResource
	kind       string
	namespaced bool
}

// resource is the name RBAC and messages use: "deployments.apps", "pods".
func (k kind) resource() string {
	if k.gvr.Group == "" {
		return k.gvr.Resource
	}
	return k.gvr.Resource + "." + k.gvr.Group
}

// Built-in kinds the engine itself uses. Resolving them needs no discovery
// round trip, which keeps the common steps fast.
var (
	kindDeployment  = kind{schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}, "Deployment", true}
	kindStatefulSet = kind{schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "statefulsets"}, "StatefulSet", true}
	kindDaemonSet   = kind{schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "daemonsets"}, "DaemonSet", true}
	kindReplicaSet  = kind{schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "replicasets"}, "ReplicaSet", true}
	kindPod         = kind{schema.GroupVersionResource{Version: "v1", Resource: "pods"}, "Pod", true}
	kindService     = kind{schema.GroupVersionResource{Version: "v1", Resource: "services"}, "Service", true}
	kindJob         = kind{schema.GroupVersionResource{Group: "batch", Version: "v1", Resource: "jobs"}, "Job", true}
	kindCRD         = kind{schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}, "CustomResourceDefinition", false}
)

// builtinKinds maps the usual spellings of common kinds (kind, singular,
// plural, short name) to their kind.
var builtinKinds = map[string]kind{}

func init() {
	for k, names := range map[kind][]string{
		kindDeployment:  {"deploy"},
		kindStatefulSet: {"sts"},
		kindDaemonSet:   {"ds"},
		kindReplicaSet:  {"rs"},
		kindPod:         {"po"},
		kindService:     {"svc"},
		kindJob:         nil,
	} {
		names = append(names, strings.ToLower(k.kind), k.gvr.Resource, k.gvr.Resource+"."+k.gvr.Group)
		for _, n := range names {
			builtinKinds[n] = k
		}
	}
}

// resolve maps a resource_type (a kind, plural, singular or short name,
// optionally group-qualified as in "deployments.apps") and an optional
// api_version ("apps/v1") to a kind through API discovery. Discovery is
// cached; an unknown type refreshes the cache once, so that kinds of CRDs
// installed meanwhile resolve.
func (e *Engine) resolve(resourceType, apiVersion string) (kind, error) {
	rt := strings.ToLower(strings.TrimSpace(resourceType))
	if rt == "" {
		return kind{}, invalid("resource_type", "required")
	}
	if k, ok := builtinKinds[rt]; ok && (apiVersion == "" || apiVersion == k.gvr.GroupVersion().String()) {
		return k, nil
	}
	k, err := e.lookup(rt, apiVersion)
	if meta.IsNoMatchError(err) {
		e.mapper.Reset()
		k, err = e.lookup(rt, apiVersion)
	}
	if err != nil {
		av := ""
		if apiVersion != "" {
			av = fmt.Sprintf(" in api_version %q", apiVersion)
		}
		if meta.IsNoMatchError(err) {
			return kind{}, fmt.Errorf("%w: cluster %q serves no resource %q%s", ErrUnknownResource, e.cfg.Cluster, resourceType, av)
		}
		return kind{}, fmt.Errorf("resolve resource type %q%s in cluster %q: %w", resourceType, av, e.cfg.Cluster, err)
	}
	return k, nil
}

func (e *Engine) lookup(rt, apiVersion string) (kind, error) {
	var gvr schema.GroupVersionResource
	var err error
	if apiVersion != "" {
		gv, perr := schema.ParseGroupVersion(apiVersion)
		if perr != nil {
			return kind{}, invalid("api_version", "%v", perr)
		}
		gvr, err = e.expand.ResourceFor(gv.WithResource(rt))
	} else {
		full, gr := schema.ParseResourceArg(rt)
		err = &meta.NoResourceMatchError{PartialResource: gr.WithVersion("")}
		if full != nil {
			gvr, err = e.expand.ResourceFor(*full)
		}
		if err != nil {
			gvr, err = e.expand.ResourceFor(gr.WithVersion(""))
		}
	}
	if err != nil {
		return kind{}, err
	}
	gvk, err := e.expand.KindFor(gvr)
	if err != nil {
		return kind{}, err
	}
	return e.kindOf(gvk)
}

// kindOf resolves a manifest object's group, version and kind.
func (e *Engine) kindOf(gvk schema.GroupVersionKind) (kind, error) {
	m, err := e.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		e.mapper.Reset()
		m, err = e.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	if err != nil {
		if meta.IsNoMatchError(err) {
			return kind{}, fmt.Errorf("%w: cluster %q serves no kind %q in %q", ErrUnknownResource, e.cfg.Cluster, gvk.Kind, gvk.GroupVersion())
		}
		return kind{}, err
	}
	return kind{gvr: m.Resource, kind: m.GroupVersionKind.Kind, namespaced: m.Scope.Name() == meta.RESTScopeNameNamespace}, nil
}

// client returns the dynamic client for k in ns (ignored when k is
// cluster-scoped).
func (e *Engine) client(k kind, ns string) dynamic.ResourceInterface {
	if k.namespaced {
		return e.dyn.Resource(k.gvr).Namespace(ns)
	}
	return e.dyn.Resource(k.gvr)
}
