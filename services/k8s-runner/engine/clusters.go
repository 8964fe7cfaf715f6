package engine

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"go.yaml.in/yaml/v3"
)

// Cluster is one cluster a runner serves: its catalogue name (the steps'
// k8s_cluster and the runner's subject), where its credentials are, and
// what its steps may touch. The k8s runner's --clusters-file and the
// embedded mode's --config file both list clusters in this form.
type Cluster struct {
	// Name is the cluster's catalogue name.
	Name string `yaml:"name"`
	// Kubeconfig is the kubeconfig file; empty means $KUBECONFIG,
	// ~/.kube/config, then the in-cluster service account.
	Kubeconfig string `yaml:"kubeconfig"`
	// Context is the kubeconfig context; empty means its current context.
	Context string `yaml:"context"`
	// Namespaces (globs) and Kinds limit what the cluster's steps may
	// touch; see [Access]. Empty means the runner's defaults.
	Namespaces []string `yaml:"namespaces"`
	Kinds      []string `yaml:"kinds"`
}

// Config returns base configured for c: its kubeconfig, context and name,
// and its namespaces and kinds where it sets them.
func (c Cluster) Config(base Config) Config {
	base.Kubeconfig = firstSet(c.Kubeconfig, base.Kubeconfig)
	base.Context, base.Cluster = c.Context, c.Name
	if len(c.Namespaces) > 0 {
		base.Access.Namespaces = append([]string(nil), c.Namespaces...)
	}
	if len(c.Kinds) > 0 {
		base.Access.Kinds = append([]string(nil), c.Kinds...)
	}
	return base
}

func firstSet(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// LoadClusters reads a clusters file:
//
//	clusters:
//	  - name: prod                 # catalogue name
//	    kubeconfig: /etc/ansflow/prod.kubeconfig   # optional
//	    context: prod-admin        # optional: the kubeconfig's current context
//	    namespaces: [apps-*]       # optional: default the runner's --namespaces
//	    kinds: [Deployment, Service]               # optional: default --kinds
//
// Unknown keys, a cluster without a name, a name listed twice and an
// invalid namespaces or kinds list are errors naming the file and line.
func LoadClusters(path string) ([]Cluster, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("clusters file: %w", err)
	}
	var doc struct {
		Clusters []Cluster `yaml:"clusters"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	// The same document as nodes, for the line of each entry.
	var lines struct {
		Clusters []yaml.Node `yaml:"clusters"`
	}
	_ = yaml.Unmarshal(b, &lines)
	var out []Cluster
	seen := map[string]int{}
	for i, c := range doc.Clusters {
		line := 0
		if i < len(lines.Clusters) {
			line = lines.Clusters[i].Line
		}
		switch {
		case c.Name == "":
			return nil, fmt.Errorf("%s:%d: clusters[%d].name: required", path, line, i)
		case seen[c.Name] > 0:
			return nil, fmt.Errorf("%s:%d: clusters[%d].name: %q is also listed at line %d", path, line, i, c.Name, seen[c.Name])
		}
		seen[c.Name] = line
		acc := Access{Namespaces: c.Namespaces, Kinds: c.Kinds}
		if err := acc.validate(); err != nil {
			return nil, fmt.Errorf("%s:%d: clusters[%d] (%s): %w", path, line, i, c.Name, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no clusters listed", path)
	}
	return out, nil
}
