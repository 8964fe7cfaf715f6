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
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/ansflow/ansflow/pkg/envflag"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/logging"
	"github.com/ansflow/ansflow/pkg/natsutil"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/pkg/source"
	"github.com/ansflow/ansflow/services/k8s-runner/engine"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg, err := parseConfig(os.Args[1:], os.LookupEnv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "k8s-runner:", err)
		os.Exit(2)
	}
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "k8s-runner:", err)
		os.Exit(1)
	}
}

// config is everything main reads from flags and the environment.
type config struct {
	NATSURL   string
	NATSCreds string
	NATSCA    string
	LogLevel  string
	LogJSON   bool
	Clusters  []engine.Cluster
	// AllowLocalClone lets runs clone file:// URLs and local paths
	// ([source.Fetcher].AllowLocal).
	AllowLocalClone bool
	// CloneCA is the PEM file of the CAs trusted for https:// clones
	// instead of the system's ([source.CloneOptions].CAFile).
	CloneCA string
	// Runner is the template of every cluster's runner configuration: its
	// Targets list every cluster, and each cluster's runner serves its own.
	Runner runner.Config
	// Engine is the template of every cluster's engine configuration;
	// each cluster fills its own part ([engine.Cluster.Config]).
	Engine engine.Config
}

// Validate checks c and fills defaults of its parts.
func (c *config) Validate() error {
	if c.NATSURL == "" {
		return errors.New("no NATS URL: set --nats or ANSFLOW_NATS_URL")
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
	getenv, intEnv, durEnv := ev.String, ev.Int, ev.Duration

	c := &config{Runner: runner.Config{Kind: event.KindK8s}}
	fs := flag.NewFlagSet("k8s-runner", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.NATSURL, "nats", getenv("ANSFLOW_NATS_URL", "nats://127.0.0.1:4222"), "NATS server URL(s), comma-separated (env ANSFLOW_NATS_URL)")
	fs.StringVar(&c.NATSCreds, "nats-creds", getenv("ANSFLOW_NATS_CREDS", ""), "NATS credentials file (env ANSFLOW_NATS_CREDS)")
	fs.StringVar(&c.NATSCA, "nats-ca", getenv("ANSFLOW_NATS_CA", ""), "PEM file of the CA of the NATS server's TLS certificate; TLS is required when set (env ANSFLOW_NATS_CA)")
	clusters := fs.String("clusters", getenv("ANSFLOW_K8S_CLUSTERS", "default"),
		`clusters served, comma-separated name=context; a bare name uses the context of that name, bare "default" the current context (env ANSFLOW_K8S_CLUSTERS)`)
	clustersFile := fs.String("clusters-file", getenv("ANSFLOW_K8S_CLUSTERS_FILE", ""),
		"YAML file listing the clusters served, each with its own kubeconfig, context, namespaces and kinds (instead of --clusters; the flags are the defaults of entries that set none) (env ANSFLOW_K8S_CLUSTERS_FILE)")
	fs.StringVar(&c.Engine.Kubeconfig, "kubeconfig", getenv("ANSFLOW_KUBECONFIG", ""), "kubeconfig file; default $KUBECONFIG, ~/.kube/config, then the in-cluster service account (env ANSFLOW_KUBECONFIG)")
	fs.StringVar(&c.Engine.ServiceAccountDir, "service-account-dir", getenv("ANSFLOW_K8S_SERVICE_ACCOUNT_DIR", engine.DefaultServiceAccountDir), "service account directory (token, ca.crt, namespace) used in a pod when no kubeconfig is found (env ANSFLOW_K8S_SERVICE_ACCOUNT_DIR)")
	fs.StringVar(&c.Engine.FieldManager, "field-manager", getenv("ANSFLOW_FIELD_MANAGER", engine.DefaultFieldManager), "server-side apply field manager (env ANSFLOW_FIELD_MANAGER)")
	fs.DurationVar(&c.Engine.WaitTimeout, "wait-timeout", durEnv("ANSFLOW_K8S_WAIT_TIMEOUT", engine.DefaultWaitTimeout), "bound of a wait whose step sets no timeout (env ANSFLOW_K8S_WAIT_TIMEOUT)")
	fs.IntVar(&c.Runner.Concurrency, "concurrency", intEnv("ANSFLOW_CONCURRENCY", 4), "steps executed at once per cluster (env ANSFLOW_CONCURRENCY)")
	fs.StringVar(&c.Runner.ID, "id", getenv("ANSFLOW_RUNNER_ID", ""), "runner instance id in events; default k8s-runner@HOST-PID (env ANSFLOW_RUNNER_ID)")
	fs.StringVar(&c.Runner.WorkDir, "work-dir", getenv("ANSFLOW_WORK_DIR", ""), "where run sources (for manifest_file) are unpacked (env ANSFLOW_WORK_DIR)")
	fs.DurationVar(&c.Runner.DefaultTimeout, "default-timeout", durEnv("ANSFLOW_DEFAULT_TIMEOUT", time.Hour), "timeout of a step that sets none (env ANSFLOW_DEFAULT_TIMEOUT)")
	fs.DurationVar(&c.Runner.Lease, "lease", durEnv("ANSFLOW_LEASE", 30*time.Second), "how long a step's claim stays held without renewal before another runner may take it over (env ANSFLOW_LEASE)")
	fs.DurationVar(&c.Runner.Heartbeat, "heartbeat", durEnv("ANSFLOW_HEARTBEAT", 5*time.Second), "how often the runner announces itself (env ANSFLOW_HEARTBEAT)")
	fs.BoolVar(&c.AllowLocalClone, "allow-local-clone", getenv("ANSFLOW_ALLOW_LOCAL_CLONE", "") == "true", "let runs clone file:// URLs and paths on this host; default https, ssh and git only (env ANSFLOW_ALLOW_LOCAL_CLONE=true)")
	fs.StringVar(&c.CloneCA, "clone-ca", getenv("ANSFLOW_CLONE_CA", ""), "PEM file of the CAs trusted for https:// clones instead of the system's (a forge with a private CA; env ANSFLOW_CLONE_CA)")
	fs.IntVar(&c.Runner.Replicas, "replicas", 1, "replicas of the buckets the runner creates (3 on a NATS cluster); existing ones keep theirs")
	fs.DurationVar(&c.Runner.Grace, "grace", durEnv("ANSFLOW_GRACE", 30*time.Second), "on SIGTERM, how long running steps may finish before they are stopped (env ANSFLOW_GRACE)")
	namespaces := fs.String("namespaces", getenv("ANSFLOW_K8S_NAMESPACES", ""), "namespaces (globs) steps may use on every served cluster, comma-separated; default the context's namespace (env ANSFLOW_K8S_NAMESPACES)")
	kinds := fs.String("kinds", getenv("ANSFLOW_K8S_KINDS", ""), "kinds steps may apply, scale and delete, comma-separated (\"*\": every namespaced kind; cluster-scoped ones by name); default "+strings.Join(engine.DefaultKinds, ",")+" (env ANSFLOW_K8S_KINDS)")
	identity := fs.String("secrets-identity", getenv("ANSFLOW_SECRETS_IDENTITY", ""), "the pool's secrets identity file (made on first use); without it steps asking for secrets fail (env ANSFLOW_SECRETS_IDENTITY)")
	fs.StringVar(&c.LogLevel, "log-level", getenv("ANSFLOW_LOG_LEVEL", "info"), "debug, info, warn or error (env ANSFLOW_LOG_LEVEL)")
	fs.BoolVar(&c.LogJSON, "log-json", getenv("ANSFLOW_LOG_JSON", "") == "true", "log JSON instead of text (env ANSFLOW_LOG_JSON=true)")
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
	if *identity != "" {
		id, _, err := secret.LoadOrCreateIdentity(*identity)
		if err != nil {
			return nil, err
		}
		c.Runner.Identity = id
	}
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
	if c.Runner.ID == "" {
		host, _ := os.Hostname()
		c.Runner.ID = fmt.Sprintf("k8s-runner@%s-%d", host, os.Getpid())
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// run serves the configured clusters until ctx is done.
func run(ctx context.Context, cfg *config) error {
	log, err := logging.New(cfg.LogLevel, cfg.LogJSON)
	if err != nil {
		return err
	}
	defer log.Sync()
	log = log.With(zap.String("service", "k8s-runner"))

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
	}

	nc, err := natsutil.Connect(natsutil.ConnectOptions{URL: cfg.NATSURL, Name: cfg.Runner.ID, CredsFile: cfg.NATSCreds, CAFile: cfg.NATSCA})
	if err != nil {
		return err
	}
	defer nc.Drain()
	js, err := natsutil.JetStream(nc)
	if err != nil {
		return err
	}
	if cfg.AllowLocalClone {
		log.Warn("--allow-local-clone: runs may clone file:// URLs and local paths of this host")
	}
	g, gctx := errgroup.WithContext(ctx)
	for i, cl := range cfg.Clusters {
		rc := cfg.Runner
		rc.Targets = []string{cl.Name}
		if len(cfg.Clusters) > 1 {
			rc.ID = cfg.Runner.ID + "/" + cl.Name
		}
		r := runner.New(rc, nc, js, engines[i], &source.Fetcher{JS: js, AllowLocal: cfg.AllowLocalClone, CAFile: cfg.CloneCA}, log)
		g.Go(func() error { return r.Run(gctx) })
	}
	err = g.Wait()
	if err != nil && ctx.Err() != nil {
		log.Info("shutting down", zap.NamedError("reason", context.Cause(ctx)))
		return nil
	}
	return err
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
