// Command docker-runner is AnsFlow's Docker runner: it serves one or more
// runner pools, executing docker_build, docker_run, docker_push and
// docker_pull steps against a Docker Engine through its API, and reports
// through NATS JetStream. Every instance serving a pool shares the pool's
// durable consumer, so runners scale out by starting more of them.
//
// Configuration comes from flags, each with an environment variable as its
// default; run `docker-runner -h` for the list. Registry credentials are read
// from the file given by --credentials (see engine.LoadCredentials). What
// steps may ask of the host is the runner policy: strict unless relaxed by
// --policy FILE or the --allow-* flags (see package policy).
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

	"github.com/ansflow/ansflow/pkg/envflag"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/logging"
	"github.com/ansflow/ansflow/pkg/natsutil"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/pkg/source"
	"github.com/ansflow/ansflow/services/docker-runner/engine"
	"github.com/ansflow/ansflow/services/docker-runner/policy"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg, err := parseConfig(os.Args[1:], os.LookupEnv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "docker-runner:", err)
		os.Exit(2)
	}
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "docker-runner:", err)
		os.Exit(1)
	}
}

// config is everything main reads from flags and the environment.
type config struct {
	NATSURL         string
	NATSCreds       string
	NATSCA          string
	CredentialsFile string
	LogLevel        string
	LogJSON         bool
	Runner          runner.Config
	Engine          engine.Config
	// AllowLocalClone lets runs clone file:// URLs and local paths of this
	// host (off by default).
	AllowLocalClone bool
	// CloneCA is the PEM file of the CAs trusted for https:// clones
	// instead of the system's ([source.CloneOptions].CAFile).
	CloneCA string
}

// Validate checks c and fills defaults of its parts.
func (c *config) Validate() error {
	if c.NATSURL == "" {
		return errors.New("no NATS URL: set --nats or ANSFLOW_NATS_URL")
	}
	if err := c.Runner.Validate(); err != nil {
		return err
	}
	return c.Engine.Validate()
}

// parseConfig reads flags from args; each flag's default comes from the
// environment variable named in its usage.
func parseConfig(args []string, env func(string) (string, bool), out io.Writer) (*config, error) {
	ev := envflag.New(env)
	getenv, intEnv, durEnv := ev.String, ev.Int, ev.Duration

	c := &config{Runner: runner.Config{Kind: event.KindDocker}}
	fs := flag.NewFlagSet("docker-runner", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.NATSURL, "nats", getenv("ANSFLOW_NATS_URL", "nats://127.0.0.1:4222"), "NATS server URL(s), comma-separated (env ANSFLOW_NATS_URL)")
	fs.StringVar(&c.NATSCreds, "nats-creds", getenv("ANSFLOW_NATS_CREDS", ""), "NATS credentials file (env ANSFLOW_NATS_CREDS)")
	fs.StringVar(&c.NATSCA, "nats-ca", getenv("ANSFLOW_NATS_CA", ""), "PEM file of the CA of the NATS server's TLS certificate; TLS is required when set (env ANSFLOW_NATS_CA)")
	pools := fs.String("pools", getenv("ANSFLOW_POOLS", "default"), "runner pools served, comma-separated (env ANSFLOW_POOLS)")
	fs.IntVar(&c.Runner.Concurrency, "concurrency", intEnv("ANSFLOW_CONCURRENCY", 2), "steps executed at once (env ANSFLOW_CONCURRENCY)")
	fs.StringVar(&c.Runner.ID, "id", getenv("ANSFLOW_RUNNER_ID", ""), "runner instance id in events; default docker-runner@HOST-PID (env ANSFLOW_RUNNER_ID)")
	fs.StringVar(&c.Runner.WorkDir, "work-dir", getenv("ANSFLOW_WORK_DIR", ""), "where run sources are unpacked; must be a path the Docker Engine sees the same, for mount_source (env ANSFLOW_WORK_DIR)")
	fs.DurationVar(&c.Runner.DefaultTimeout, "default-timeout", durEnv("ANSFLOW_DEFAULT_TIMEOUT", time.Hour), "timeout of a step that sets none (env ANSFLOW_DEFAULT_TIMEOUT)")
	fs.DurationVar(&c.Runner.Lease, "lease", durEnv("ANSFLOW_LEASE", 30*time.Second), "how long a step's claim stays held without renewal before another runner may take it over (env ANSFLOW_LEASE)")
	fs.DurationVar(&c.Runner.Heartbeat, "heartbeat", durEnv("ANSFLOW_HEARTBEAT", 5*time.Second), "how often the runner announces itself (env ANSFLOW_HEARTBEAT)")
	fs.IntVar(&c.Runner.Replicas, "replicas", 1, "replicas of the buckets the runner creates (3 on a NATS cluster); existing ones keep theirs")
	fs.DurationVar(&c.Runner.Grace, "grace", durEnv("ANSFLOW_GRACE", 30*time.Second), "on SIGTERM, how long running steps may finish before they are stopped (env ANSFLOW_GRACE)")
	fs.StringVar(&c.CredentialsFile, "credentials", getenv("ANSFLOW_DOCKER_CREDENTIALS", ""), "registry credentials file, YAML or JSON, or a Docker config.json (env ANSFLOW_DOCKER_CREDENTIALS)")
	fs.StringVar(&c.Engine.DockerHost, "docker-host", getenv("DOCKER_HOST", ""), "Docker Engine API endpoint (env DOCKER_HOST)")
	fs.StringVar(&c.Engine.Network, "network", getenv("ANSFLOW_DOCKER_NETWORK", ""), "network for docker_run containers whose step names none (env ANSFLOW_DOCKER_NETWORK)")
	policyFlags := policy.RegisterFlags(fs, env)
	fs.BoolVar(&c.AllowLocalClone, "allow-local-clone", getenv("ANSFLOW_ALLOW_LOCAL_CLONE", "") == "true", "let runs clone file:// URLs and paths on this host; default https, ssh and git only (env ANSFLOW_ALLOW_LOCAL_CLONE=true)")
	fs.StringVar(&c.CloneCA, "clone-ca", getenv("ANSFLOW_CLONE_CA", ""), "PEM file of the CAs trusted for https:// clones instead of the system's (a forge with a private CA; env ANSFLOW_CLONE_CA)")
	identity := fs.String("secrets-identity", getenv("ANSFLOW_SECRETS_IDENTITY", ""), "the pool's secrets identity file (made on first use); without it steps asking for secrets fail (env ANSFLOW_SECRETS_IDENTITY)")
	fs.StringVar(&c.LogLevel, "log-level", getenv("ANSFLOW_LOG_LEVEL", "info"), "debug, info, warn or error (env ANSFLOW_LOG_LEVEL)")
	fs.BoolVar(&c.LogJSON, "log-json", getenv("ANSFLOW_LOG_JSON", "") == "true", "log JSON instead of text (env ANSFLOW_LOG_JSON=true)")
	err := fs.Parse(args)
	if err != nil {
		return nil, err
	}
	if ev.Err() != nil {
		return nil, ev.Err()
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *identity != "" {
		id, _, err := secret.LoadOrCreateIdentity(*identity)
		if err != nil {
			return nil, err
		}
		c.Runner.Identity = id
	}
	for _, p := range strings.Split(*pools, ",") {
		if p = strings.TrimSpace(p); p != "" {
			c.Runner.Targets = append(c.Runner.Targets, p)
		}
	}
	if c.Engine.Policy, err = policyFlags.Policy(); err != nil {
		return nil, err
	}
	if c.Runner.ID == "" {
		host, _ := os.Hostname()
		c.Runner.ID = fmt.Sprintf("docker-runner@%s-%d", host, os.Getpid())
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// run serves the configured pools until ctx is done.
func run(ctx context.Context, cfg *config) error {
	log, err := logging.New(cfg.LogLevel, cfg.LogJSON)
	if err != nil {
		return err
	}
	defer log.Sync()
	log = log.With(zap.String("service", "docker-runner"))

	if cfg.CredentialsFile != "" {
		creds, err := engine.LoadCredentials(cfg.CredentialsFile)
		if err != nil {
			return err
		}
		cfg.Engine.Credentials = creds
		log.Info("registry credentials loaded", zap.Int("registries", len(creds)))
	}
	logPolicy(log, cfg.Engine.Policy)
	eng, err := engine.New(cfg.Engine, log)
	if err != nil {
		return err
	}
	defer eng.Close()
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	api, err := eng.Ping(pctx)
	cancel()
	if err != nil {
		return err
	}
	log.Info("docker engine reachable", zap.String("api_version", api))

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
	err = runner.New(cfg.Runner, nc, js, eng, &source.Fetcher{JS: js, AllowLocal: cfg.AllowLocalClone, CAFile: cfg.CloneCA}, log).Run(ctx)
	if err != nil && ctx.Err() != nil {
		log.Info("shutting down", zap.NamedError("reason", context.Cause(ctx)))
		return nil
	}
	return err
}

// logPolicy states at start what the runner's policy relaxes, one line each.
func logPolicy(log *zap.Logger, p policy.Policy) {
	rel := p.Relaxations()
	if len(rel) == 0 {
		log.Info("runner policy: strict (no host paths, Docker socket, privileged containers or host network)")
		return
	}
	for _, r := range rel {
		log.Warn("runner policy relaxed: " + r)
	}
}
