package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/ansflow/ansflow/pkg/spec/steps"
)

// manifestDoc is one object of a manifest and where it came from.
type manifestDoc struct {
	obj    *unstructured.Unstructured
	origin string // "manifest document 2", "k8s/app.yaml document 1"
}

// appliedObject is an object the step applied.
type appliedObject struct {
	kind   kind
	ns     string
	name   string
	before *appsv1.Deployment // a Deployment as it was before the apply
}

// deployManifests applies k8s_config.manifest (inline YAML or JSON, several
// documents allowed, or the objects themselves) or manifest_file (a file
// or a directory of *.yaml, *.yml and *.json files in the run's source)
// with server-side apply. Any kind the cluster serves works: each object is
// resolved through API discovery and applied with the dynamic client.
// Namespaces and CustomResourceDefinitions are applied first, and a CRD is
// awaited until established so that objects of its kind can follow.
// Namespaced objects without a namespace go to the step's namespace.
//
// Outputs name the primary object: the Deployment named by the step's
// resource name, else the first Deployment, else the first workload, else
// the first object; revision is set when it is a Deployment.
func (s *step) deployManifests(ctx context.Context, opts deployOptions) (map[string]string, error) {
	docs, err := s.manifestDocs(ctx)
	if err != nil {
		return nil, err
	}
	if len(docs) == 0 {
		return nil, fmt.Errorf("%w: the manifest holds no objects", ErrInvalidConfig)
	}
	rank := func(d manifestDoc) int {
		switch d.obj.GetKind() {
		case "Namespace":
			return 0
		case "CustomResourceDefinition":
			return 1
		}
		return 2
	}
	sort.SliceStable(docs, func(i, j int) bool { return rank(docs[i]) < rank(docs[j]) })
	created := map[string]bool{}
	for _, d := range docs {
		if d.obj.GetKind() == "Namespace" && d.obj.GetAPIVersion() == "v1" {
			created[d.obj.GetName()] = true
		}
	}

	defaultNS := s.namespace()
	// every object is checked against the cluster's access before any is
	// applied, so that a refused manifest changes nothing
	for _, d := range docs {
		gvk := d.obj.GroupVersionKind()
		if gvk.Kind == "" || gvk.Version == "" {
			continue // reported below
		}
		k, err := s.e.kindOf(gvk)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", d.origin, err)
		}
		if err := s.e.allowKind(k); err != nil {
			return nil, fmt.Errorf("k8s_deploy: %s (%s %s): %w", d.origin, gvk.Kind, d.obj.GetName(), err)
		}
		if ns := d.obj.GetNamespace(); k.namespaced && ns != "" {
			if err := s.e.allowNamespace(ns); err != nil {
				return nil, fmt.Errorf("k8s_deploy: %s (%s %s): %w", d.origin, gvk.Kind, d.obj.GetName(), err)
			}
		}
		if gvk.Kind == "Namespace" && gvk.Group == "" {
			if err := s.e.allowNamespace(d.obj.GetName()); err != nil {
				return nil, fmt.Errorf("k8s_deploy: %s (Namespace %s): %w", d.origin, d.obj.GetName(), err)
			}
		}
	}
	checked := map[string]bool{}
	var applied []appliedObject
	for _, d := range docs {
		o := d.obj
		gvk := o.GroupVersionKind()
		name := o.GetName()
		if gvk.Kind == "" || gvk.Version == "" {
			return nil, fmt.Errorf("%w: %s has no apiVersion or kind", ErrInvalidConfig, d.origin)
		}
		if name == "" {
			return nil, fmt.Errorf("%w: %s (%s) has no metadata.name (server-side apply cannot use generateName)", ErrInvalidConfig, d.origin, gvk.Kind)
		}
		k, err := s.e.kindOf(gvk)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", d.origin, err)
		}
		ns := ""
		if k.namespaced {
			ns = o.GetNamespace()
			if ns == "" {
				ns = defaultNS
				o.SetNamespace(ns)
			}
			if !created[ns] && !checked[ns] {
				if err := s.checkNamespace(ctx, ns); err != nil {
					return nil, fmt.Errorf("%s (%s %s): %w", d.origin, gvk.Kind, name, err)
				}
				checked[ns] = true
			}
		} else {
			o.SetNamespace("")
		}
		a := appliedObject{kind: k, ns: ns, name: name}
		if k.gvr == kindDeployment.gvr {
			before, err := s.e.cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
			switch {
			case err == nil:
				a.before = before
			case !apierrors.IsNotFound(err):
				return nil, s.apiErr(err, apiReq{verb: "get", resource: k.resource(), ns: ns, name: name})
			}
		}
		res, err := s.e.client(k, ns).Apply(ctx, name, o, metav1.ApplyOptions{FieldManager: opts.manager, Force: true})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", d.origin, s.apiErr(err, apiReq{verb: "patch", resource: k.resource(), ns: ns, name: name}))
		}
		where := ""
		if ns != "" {
			where = " in namespace " + ns
		}
		s.printf("%s/%s applied%s (generation %d)", k.resource(), name, where, res.GetGeneration())
		if k.gvr == kindCRD.gvr {
			if err := s.waitEstablished(ctx, name, opts); err != nil {
				return nil, err
			}
		}
		applied = append(applied, a)
	}

	primary := applied[0]
	rankPrimary := func(a appliedObject) int {
		switch {
		case a.kind.gvr == kindDeployment.gvr && a.name == strings.TrimSpace(s.req.ResourceName):
			return 0
		case a.kind.gvr == kindDeployment.gvr:
			return 1
		case isRolloutKind(a.kind.kind) && a.kind.gvr.Group == "apps":
			return 2
		}
		return 3
	}
	for _, a := range applied {
		if rankPrimary(a) < rankPrimary(primary) {
			primary = a
		}
	}
	out := map[string]string{"namespace": primary.ns, "name": primary.name, "kind": primary.kind.kind,
		"applied": strconv.Itoa(len(applied))}
	var errs []error
	for _, a := range applied {
		if a.kind.gvr.Group != "apps" || !isRolloutKind(a.kind.kind) {
			continue
		}
		if a.kind.kind == "Deployment" {
			rev, err := s.settle(ctx, a.ns, a.name, a.before, opts)
			if a == primary && rev > 0 {
				out["revision"] = strconv.FormatInt(rev, 10)
			}
			if err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if opts.wait {
			if _, err := s.waitRollout(ctx, a.kind, a.ns, a.name, opts.timeout, nil); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return out, errors.Join(errs...)
}

// waitEstablished waits until a CustomResourceDefinition is established and
// refreshes discovery so that its kind resolves.
func (s *step) waitEstablished(ctx context.Context, name string, opts deployOptions) error {
	sel := selection{kind: kindCRD, name: name}
	wctx, cancel := waitCtx(ctx, opts.timeout, sel.String()+" to be established")
	defer cancel()
	err := s.observe(wctx, sel, func(objs []*unstructured.Unstructured) (bool, error) {
		if len(objs) == 0 {
			return false, nil
		}
		st, _, _, _ := condition(objs[0], "Established")
		return strings.EqualFold(st, "True"), nil
	})
	s.e.mapper.Reset()
	return err
}

// manifestDocs reads the step's manifest or manifest_file.
func (s *step) manifestDocs(ctx context.Context) ([]manifestDoc, error) {
	c := s.cfg.(*steps.K8sDeployConfig)
	if c.Manifest != nil {
		switch m := c.Manifest.(type) {
		case string:
			return decodeManifests([]byte(m), "manifest")
		case map[string]any, []any:
			// The manifest was written as YAML objects inside the pipeline.
			if items, ok := m.([]any); ok {
				m = map[string]any{"apiVersion": "v1", "kind": "List", "items": items}
			}
			b, err := json.Marshal(m)
			if err != nil {
				return nil, invalid("manifest", "%v", err)
			}
			return decodeManifests(b, "manifest")
		default:
			return nil, invalid("manifest", "want YAML text or objects, got %T", m)
		}
	}
	rel := c.ManifestFile
	dir, err := s.io.SourceDir(ctx)
	if err != nil {
		return nil, fmt.Errorf("manifest_file %q needs the run's source: %w", rel, err)
	}
	path, err := inTree(dir, rel)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, invalid("manifest_file", "%q is not in the run's source: %v", rel, err)
	}
	files := []string{path}
	if fi.IsDir() {
		files = nil
		entries, err := os.ReadDir(path)
		if err != nil {
			return nil, invalid("manifest_file", "read directory %q: %v", rel, err)
		}
		for _, e := range entries {
			switch strings.ToLower(filepath.Ext(e.Name())) {
			case ".yaml", ".yml", ".json":
				if !e.IsDir() {
					files = append(files, filepath.Join(path, e.Name()))
				}
			}
		}
		if len(files) == 0 {
			return nil, invalid("manifest_file", "directory %q holds no .yaml, .yml or .json file", rel)
		}
	}
	var docs []manifestDoc
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, invalid("manifest_file", "%v", err)
		}
		name, _ := filepath.Rel(dir, f)
		d, err := decodeManifests(b, filepath.ToSlash(name))
		if err != nil {
			return nil, err
		}
		docs = append(docs, d...)
	}
	return docs, nil
}

// inTree resolves rel inside dir, refusing paths (and symbolic links) that
// lead out of it.
func inTree(dir, rel string) (string, error) {
	clean := filepath.Clean(filepath.FromSlash(rel))
	if rel == "" || !filepath.IsLocal(clean) {
		return "", invalid("manifest_file", "%q must be a relative path inside the run's source", rel)
	}
	root, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", fmt.Errorf("run source %s: %w", dir, err)
	}
	full, err := filepath.EvalSymlinks(filepath.Join(root, clean))
	if err != nil {
		return "", invalid("manifest_file", "%q is not in the run's source: %v", rel, err)
	}
	if full != root && !strings.HasPrefix(full, root+string(filepath.Separator)) {
		return "", invalid("manifest_file", "%q leads out of the run's source", rel)
	}
	return full, nil
}

// decodeManifests splits YAML (several documents) or JSON into objects,
// expanding kind List.
func decodeManifests(data []byte, origin string) ([]manifestDoc, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var docs []manifestDoc
	for n := 1; ; n++ {
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		where := fmt.Sprintf("%s document %d", origin, n)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrInvalidConfig, where, err)
		}
		if len(m) == 0 {
			continue
		}
		o := &unstructured.Unstructured{Object: m}
		if o.IsList() {
			list, err := o.ToList()
			if err != nil {
				return nil, fmt.Errorf("%w: %s: %v", ErrInvalidConfig, where, err)
			}
			for i := range list.Items {
				docs = append(docs, manifestDoc{obj: &list.Items[i], origin: fmt.Sprintf("%s item %d", where, i+1)})
			}
			continue
		}
		docs = append(docs, manifestDoc{obj: o, origin: where})
	}
}
