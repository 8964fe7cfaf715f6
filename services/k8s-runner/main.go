// Command k8s-runner is AnsFlow's Kubernetes runner: it serves one or more
// clusters, executing k8s_deploy, k8s_scale, k8s_delete, k8s_wait, k8s_exec
// and k8s_logs steps through client-go, and reports through NATS
// JetStream. Each served cluster gets its own engine (one set of
// credentials) and its own runner loop consuming only that cluster's
// subject, ansflow.step.requested.k8s.<cluster>; every instance serving a
// cluster shares its durable consumer, so runners scale out by starting
// more of them. Credentials stay here: step requests only name a cluster.
//
// Clusters are given as --clusters name=context,...: each name is a cluster
// of the pipeline catalogue (the step's k8s_cluster), each context a
// kubeconfig context. A bare name uses the context of that name, except
// "default", which uses the kubeconfig's current context (or the in-cluster
// service account when there is no kubeconfig). The default is "default".
//
// Each cluster's steps may use only the namespaces of --namespaces (default:
// the context's namespace) and apply, scale and delete only the kinds of
// --kinds (default engine.DefaultKinds).
//
// --clusters-file FILE lists the clusters instead, each with its own
// kubeconfig, context, namespaces and kinds ([engine.LoadClusters]); the
// flags are then the defaults of the entries that set none.
//
// Configuration comes from flags, each with an environment variable as its
// default; run `k8s-runner -h` for the list.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/daemon"
	"github.com/ansflow/ansflow/pkg/envflag"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/services/k8s-runner/engine"
)

func main() { daemon.Main("k8s-runner", parseConfig, run) }

// DefaultOpsAddr is the Kubernetes runner's default --ops-addr.
const DefaultOpsAddr = "127.0.0.1:9093"

// config is everything main reads from flags and the environment.
type config struct {
	daemon.Common
	Clusters []engine.Cluster
	// Source is how the runner fetches run sources.
	Source *runner.Flags
	// Runner is the template of every cluster's runner configuration: its
	// Targets list every cluster, and each cluster's runner serves its own.
	Runner runner.Config
	// Engine is the template of every cluster's engine configuration;
	// each cluster fills its own part ([engine.Cluster.Config]).
	Engine engine.Config
}

// Validate checks c and fills defaults of its parts.
func (c *config) Validate() error {
	if err := c.Common.Validate(); err != nil {
		return err
	}
	if len(c.Clusters) == 0 {
		return errors.New("no cluster to serve: set --clusters or ANSFLOW_K8S_CLUSTERS")
	}
	seen := map[string]bool{}
	for _, cl := range c.Clusters {
		if seen[cl.Name] {
			return fmt.Errorf("cluster %q is listed twice", cl.Name)
		}
		seen[cl.Name] = true
	}
	c.Runner.Targets = nil
	for _, cl := range c.Clusters {
		c.Runner.Targets = append(c.Runner.Targets, cl.Name)
	}
	if err := c.Runner.Validate(); err != nil {
		return err
	}
	return c.Engine.Validate()
}

// parseClusters reads "name=context,name,...".
func parseClusters(s string) ([]engine.Cluster, error) {
	var out []engine.Cluster
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, ctx, explicit := strings.Cut(item, "=")
		name, ctx = strings.TrimSpace(name), strings.TrimSpace(ctx)
		switch {
		case name == "":
			return nil, fmt.Errorf("cluster %q has no name (want name=context)", item)
		case explicit && ctx == "":
			return nil, fmt.Errorf("cluster %q has an empty context (want name=context, or a bare name)", item)
		case !explicit && name != "default":
			ctx = name
		}
		out = append(out, engine.Cluster{Name: name, Context: ctx})
	}
	return out, nil
}

// parseConfig reads flags from args; each flag's default comes from the
// environment variable named in its usage.
func parseConfig(args []string, env func(string) (string, bool), out io.Writer) (*config, error) {
	ev := envflag.New(env)
	getenv, durEnv := ev.String, ev.Duration

	c := &config{}
	fs := flag.NewFlagSet("k8s-runner", flag.ContinueOnError)
	fs.SetOutput(out)
	c.Common.RegisterFlags(fs, ev, daemon.Defaults{OpsAddr: DefaultOpsAddr})
	c.Source = runner.RegisterFlags(fs, ev, event.KindK8s, 4, "per cluster")
	clusters := fs.String("clusters", getenv("ANSFLOW_K8S_CLUSTERS", "default"),
		`clusters served, comma-separated name=context; a bare name uses the context of that name, bare "default" the current context (env ANSFLOW_K8S_CLUSTERS)`)
	clustersFile := fs.String("clusters-file", getenv("ANSFLOW_K8S_CLUSTERS_FILE", ""),
		"YAML file listing the clusters served, each with its own kubeconfig, context, namespaces and kinds (instead of --clusters; the flags are the defaults of entries that set none) (env ANSFLOW_K8S_CLUSTERS_FILE)")
	fs.StringVar(&c.Engine.Kubeconfig, "kubeconfig", getenv("ANSFLOW_KUBECONFIG", ""), "kubeconfig file; default $KUBECONFIG, ~/.kube/config, then the in-cluster service account (env ANSFLOW_KUBECONFIG)")
	fs.StringVar(&c.Engine.ServiceAccountDir, "service-account-dir", getenv("ANSFLOW_K8S_SERVICE_ACCOUNT_DIR", engine.DefaultServiceAccountDir), "service account directory (token, ca.crt, namespace) used in a pod when no kubeconfig is found (env ANSFLOW_K8S_SERVICE_ACCOUNT_DIR)")
	fs.StringVar(&c.Engine.FieldManager, "field-manager", getenv("ANSFLOW_FIELD_MANAGER", engine.DefaultFieldManager), "server-side apply field manager (env ANSFLOW_FIELD_MANAGER)")
	fs.DurationVar(&c.Engine.WaitTimeout, "wait-timeout", durEnv("ANSFLOW_K8S_WAIT_TIMEOUT", engine.DefaultWaitTimeout), "bound of a wait whose step sets no timeout (env ANSFLOW_K8S_WAIT_TIMEOUT)")
	namespaces := fs.String("namespaces", getenv("ANSFLOW_K8S_NAMESPACES", ""), "namespaces (globs) steps may use on every served cluster, comma-separated; default the context's namespace (env ANSFLOW_K8S_NAMESPACES)")
	kinds := fs.String("kinds", getenv("ANSFLOW_K8S_KINDS", ""), "kinds steps may apply, scale and delete, comma-separated (\"*\": every namespaced kind; cluster-scoped ones by name); default "+strings.Join(engine.DefaultKinds, ",")+" (env ANSFLOW_K8S_KINDS)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if ev.Err() != nil {
		return nil, ev.Err()
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	c.Engine.Access = engine.Access{Namespaces: splitList(*namespaces), Kinds: splitList(*kinds)}
	if err := c.Source.Finish(); err != nil {
		return nil, err
	}
	c.Runner = c.Source.Config
	var err error
	if *clustersFile != "" {
		explicit := false
		fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "clusters" })
		if _, set := env("ANSFLOW_K8S_CLUSTERS"); set || explicit {
			return nil, errors.New("--clusters and --clusters-file exclude each other: list every cluster in the file")
		}
		if c.Clusters, err = engine.LoadClusters(*clustersFile); err != nil {
			return nil, err
		}
	} else if c.Clusters, err = parseClusters(*clusters); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// run serves the configured clusters until ctx is done.
func run(ctx context.Context, cfg *config) error {
	p, err := cfg.Common.Start("k8s-runner", cfg.Runner.ID)
	if err != nil {
		return err
	}
	defer p.Close()
	log := p.Log

	engines := make([]*engine.Engine, len(cfg.Clusters))
	for i, cl := range cfg.Clusters {
		eng, err := engine.New(cl.Config(cfg.Engine), log)
		if err != nil {
			return err
		}
		pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		version, err := eng.Ping(pctx)
		cancel()
		if err != nil {
			return err
		}
		acc := eng.Access()
		log.Info("cluster reachable", zap.String("cluster", cl.Name), zap.String("context", cl.Context), zap.String("version", version),
			zap.Strings("namespaces", acc.Namespaces), zap.Strings("kinds", acc.Kinds))
		engines[i] = eng
		p.Ops.Ready("cluster "+cl.Name, func(ctx context.Context) error { _, err := eng.Ping(ctx); return err })
	}
	p.Ops.Ready("jetstream", daemon.Streams(p.JS, runner.Streams()...))
	if cfg.Source.AllowLocalClone {
		log.Warn("--allow-local-clone: runs may clone file:// URLs and local paths of this host")
	}
	cfg.Runner.Metrics = p.Metrics
	parts := make([]func(context.Context) error, len(cfg.Clusters))
	for i, cl := range cfg.Clusters {
		rc := cfg.Runner
		rc.Targets = []string{cl.Name}
		if len(cfg.Clusters) > 1 {
			rc.ID = cfg.Runner.ID + "/" + cl.Name
		}
		parts[i] = runner.New(rc, p.NC, p.JS, engines[i], cfg.Source.Fetcher(p.JS), log).Run
	}
	return p.Run(ctx, parts...)
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}
