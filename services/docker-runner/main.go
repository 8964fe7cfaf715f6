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
	"github.com/ansflow/ansflow/services/docker-runner/engine"
	"github.com/ansflow/ansflow/services/docker-runner/policy"
)

func main() { daemon.Main("docker-runner", parseConfig, run) }

// config is everything main reads from flags and the environment.
type config struct {
	daemon.Common
	CredentialsFile string
	// Runner is the runner loop's configuration.
	Runner runner.Config
	// Source is how the runner fetches run sources.
	Source *runner.Flags
	Engine engine.Config
}

// Validate checks c and fills defaults of its parts.
func (c *config) Validate() error {
	if err := c.Common.Validate(); err != nil {
		return err
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
	c := &config{}
	fs := flag.NewFlagSet("docker-runner", flag.ContinueOnError)
	fs.SetOutput(out)
	c.Common.RegisterFlags(fs, ev, daemon.Defaults{OpsAddr: DefaultOpsAddr})
	c.Source = runner.RegisterFlags(fs, ev, event.KindDocker, 2, "")
	pools := fs.String("pools", ev.String("ANSFLOW_POOLS", "default"), "runner pools served, comma-separated (env ANSFLOW_POOLS)")
	fs.StringVar(&c.CredentialsFile, "credentials", ev.String("ANSFLOW_DOCKER_CREDENTIALS", ""), "registry credentials file, YAML or JSON, or a Docker config.json (env ANSFLOW_DOCKER_CREDENTIALS)")
	fs.StringVar(&c.Engine.DockerHost, "docker-host", ev.String("DOCKER_HOST", ""), "Docker Engine API endpoint (env DOCKER_HOST)")
	fs.StringVar(&c.Engine.Network, "network", ev.String("ANSFLOW_DOCKER_NETWORK", ""), "network for docker_run containers whose step names none (env ANSFLOW_DOCKER_NETWORK)")
	policyFlags := policy.RegisterFlags(fs, env)
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
	if err := c.Source.Finish(); err != nil {
		return nil, err
	}
	c.Runner = c.Source.Config
	for _, p := range strings.Split(*pools, ",") {
		if p = strings.TrimSpace(p); p != "" {
			c.Runner.Targets = append(c.Runner.Targets, p)
		}
	}
	if c.Engine.Policy, err = policyFlags.Policy(); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// DefaultOpsAddr is the docker runner's default --ops-addr.
const DefaultOpsAddr = "127.0.0.1:9092"

// run serves the configured pools until ctx is done.
func run(ctx context.Context, cfg *config) error {
	p, err := cfg.Common.Start("docker-runner", cfg.Runner.ID)
	if err != nil {
		return err
	}
	defer p.Close()
	log := p.Log

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
	p.Ops.Ready("docker-engine", func(ctx context.Context) error { _, err := eng.Ping(ctx); return err })
	p.Ops.Ready("jetstream", daemon.Streams(p.JS, runner.Streams()...))

	if cfg.Source.AllowLocalClone {
		log.Warn("--allow-local-clone: runs may clone file:// URLs and local paths of this host")
	}
	cfg.Runner.Metrics = p.Metrics
	return p.Run(ctx, runner.New(cfg.Runner, p.NC, p.JS, eng, cfg.Source.Fetcher(p.JS), log).Run)
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
