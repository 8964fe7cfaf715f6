package engine

import (
	"context"
	"fmt"
	"sort"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
)

// selection is the set of objects a wait looks at: one object by name, or
// every object matching a label selector.
type selection struct {
	kind     kind
	ns       string // ignored for cluster-scoped kinds
	name     string // one object; else every object matching selector
	selector string // label selector ("" with no name: every object)
}

func (sel selection) String() string {
	k := sel.kind.resource()
	ns := ""
	if sel.kind.namespaced {
		ns = sel.ns + "/"
	}
	if sel.name != "" {
		return fmt.Sprintf("%s %s%s", k, ns, sel.name)
	}
	if sel.kind.namespaced {
		return fmt.Sprintf("%s in namespace %s matching %q", k, sel.ns, sel.selector)
	}
	return fmt.Sprintf("%s matching %q", k, sel.selector)
}

func (sel selection) listOptions() metav1.ListOptions {
	o := metav1.ListOptions{LabelSelector: sel.selector}
	if sel.name != "" {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", sel.name).String()
	}
	return o
}

// checkFunc inspects the selected objects (sorted by namespace and name)
// and reports whether the wait is over, or an error that ends it.
type checkFunc func(objs []*unstructured.Unstructured) (done bool, err error)

// observe lists the selection and then watches it from the list's resource
// version, calling check with the current objects after the list and after
// every change, until check reports done or fails, or ctx ends (observe
// then returns context.Cause(ctx)). When the watch expires or the server
// closes it, observe lists again; a change is never missed, although
// intermediate states may be (checks are level-based).
func (s *step) observe(ctx context.Context, sel selection, check checkFunc) error {
	ri := s.e.client(sel.kind, sel.ns)
	ns := ""
	if sel.kind.namespaced {
		ns = sel.ns
	}
	for {
		opts := sel.listOptions()
		list, err := ri.List(ctx, opts)
		if err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			return s.apiErr(err, apiReq{verb: "list", resource: sel.kind.resource(), ns: ns})
		}
		objs := map[string]*unstructured.Unstructured{}
		for i := range list.Items {
			o := &list.Items[i]
			objs[o.GetNamespace()+"/"+o.GetName()] = o
		}
		if done, err := check(sorted(objs)); done || err != nil {
			return err
		}
		opts.ResourceVersion = list.GetResourceVersion()
		opts.AllowWatchBookmarks = true
		w, err := ri.Watch(ctx, opts)
		if err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			if apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
				continue
			}
			return s.apiErr(err, apiReq{verb: "watch", resource: sel.kind.resource(), ns: ns})
		}
		started := time.Now()
		done, err := watchUntil(ctx, w, objs, check)
		w.Stop()
		if done || err != nil {
			return err
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		// The watch ended (expired, or closed by the server): list again,
		// pausing briefly if it did not last, so that a server refusing
		// watches is not hammered.
		if time.Since(started) < time.Second {
			select {
			case <-time.After(200 * time.Millisecond):
			case <-ctx.Done():
				return context.Cause(ctx)
			}
		}
	}
}

// watchUntil applies w's events to objs and checks after each change. It
// returns done=false, err=nil when the watch must be restarted.
func watchUntil(ctx context.Context, w watch.Interface, objs map[string]*unstructured.Unstructured, check checkFunc) (bool, error) {
	for {
		select {
		case <-ctx.Done():
			return false, context.Cause(ctx)
		case ev, ok := <-w.ResultChan():
			if !ok {
				return false, nil
			}
			switch ev.Type {
			case watch.Added, watch.Modified, watch.Deleted:
				o, ok := ev.Object.(*unstructured.Unstructured)
				if !ok {
					continue
				}
				key := o.GetNamespace() + "/" + o.GetName()
				if ev.Type == watch.Deleted {
					delete(objs, key)
				} else {
					objs[key] = o
				}
				if done, err := check(sorted(objs)); done || err != nil {
					return done, err
				}
			case watch.Error:
				err := apierrors.FromObject(ev.Object)
				if apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
					return false, nil
				}
				return false, fmt.Errorf("watch: %w", err)
			}
		}
	}
}

func sorted(objs map[string]*unstructured.Unstructured) []*unstructured.Unstructured {
	keys := make([]string, 0, len(objs))
	for k := range objs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]*unstructured.Unstructured, len(keys))
	for i, k := range keys {
		out[i] = objs[k]
	}
	return out
}

// waitCtx bounds ctx by timeout; when the bound is reached, ctx's cause is
// an [ErrWaitTimeout] error describing what was awaited.
func waitCtx(ctx context.Context, timeout time.Duration, what string) (context.Context, context.CancelFunc) {
	return context.WithTimeoutCause(ctx, timeout, fmt.Errorf("%w after %s waiting for %s", ErrWaitTimeout, timeout, what))
}
