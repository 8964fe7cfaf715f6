// Command pipeline runs the AnsFlow pipeline service alone against an
// external NATS cluster: it stores pipelines, orchestrates runs and serves the
// REST API.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/daemon"
	"github.com/ansflow/ansflow/pkg/envflag"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/httpserver"
	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/pkg/source"
	"github.com/ansflow/ansflow/services/pipeline/forge"
	"github.com/ansflow/ansflow/services/pipeline/login"
	"github.com/ansflow/ansflow/services/pipeline/notify"
	"github.com/ansflow/ansflow/services/pipeline/orchestrator"
	"github.com/ansflow/ansflow/services/pipeline/service"
)

func main() { daemon.Main("pipeline", parseConfig, run) }

// DefaultOpsAddr is the pipeline service's default --ops-addr.
const DefaultOpsAddr = "127.0.0.1:9090"

// config is everything main reads from flags and the environment.
type config struct {
	daemon.Common
	Service service.Config
}

// parseConfig reads the command line; flags with an environment variable
// name it in their usage.
func parseConfig(args []string, lookup func(string) (string, bool), out io.Writer) (*config, error) {
	ev := envflag.New(lookup)
	getenv := ev.String
	c := &config{}
	fs := flag.NewFlagSet("pipeline", flag.ContinueOnError)
	fs.SetOutput(out)
	c.Common.RegisterFlags(fs, ev, daemon.Defaults{OpsAddr: DefaultOpsAddr, LogJSON: true})
	httpAddr := fs.String("http", getenv("ANSFLOW_HTTP", "127.0.0.1:8080"), "API listen address (env ANSFLOW_HTTP)")
	replicas := fs.Int("replicas", ev.Int("ANSFLOW_NATS_REPLICAS", 1), "stream and bucket replicas (3 on a NATS cluster) (env ANSFLOW_NATS_REPLICAS)")
	noRunner := fs.Duration("no-runner-timeout", 10*time.Minute, "fail a queued step once no runner of its pool has been online for this long")
	stepTimeout := fs.Duration("step-timeout", time.Hour, "timeout of a step that sets none")
	runTimeout := fs.Duration("run-timeout", 24*time.Hour, "timeout of a run whose pipeline sets none")
	allowLocalClone := fs.Bool("allow-local-clone", ev.Bool("ANSFLOW_ALLOW_LOCAL_CLONE", false), "let runs name file:// repositories and paths of this host, which the service resolves and reads pipeline files from; default https, ssh and git only (env ANSFLOW_ALLOW_LOCAL_CLONE=true)")
	cloneCA := fs.String("clone-ca", getenv("ANSFLOW_CLONE_CA", ""), "PEM file of the CAs trusted for https:// repositories the service resolves and reads instead of the system's (env ANSFLOW_CLONE_CA)")
	leaseCheck := fs.Duration("lease-check", 15*time.Second, "how often running steps' leases are checked for runners that are gone")
	tlsCert := fs.String("tls-cert", getenv("ANSFLOW_TLS_CERT", ""), "serve the API and webhooks over HTTPS with this certificate (PEM; env ANSFLOW_TLS_CERT)")
	tlsKey := fs.String("tls-key", getenv("ANSFLOW_TLS_KEY", ""), "the certificate's key (PEM; env ANSFLOW_TLS_KEY)")
	adminTokenFile := fs.String("admin-token-file", getenv("ANSFLOW_ADMIN_TOKEN_FILE", ""), "file holding an admin API token to register (env ANSFLOW_ADMIN_TOKEN_FILE)")
	secretsKeyFile := fs.String("secrets-key-file", getenv("ANSFLOW_SECRETS_KEY_FILE", ""), "file holding the secrets key (32 bytes, base64) that encrypts the secret store; without it the service keeps no secrets (env ANSFLOW_SECRETS_KEY_FILE)")
	oldKeyFile := fs.String("secrets-old-key-file", getenv("ANSFLOW_SECRETS_OLD_KEY_FILE", ""), "the previous secrets key, when rotating it: secrets still under it are re-encrypted with --secrets-key-file at start (env ANSFLOW_SECRETS_OLD_KEY_FILE)")
	var poolKeys poolKeyFlag
	fs.Var(&poolKeys, "pool-secrets-key", "KIND/POOL=PUBLIC_KEY: seal that pool's secrets to this key only, not to the keys its runners announce (repeatable; 'ansflow secrets identity FILE' prints a key)")
	loginCfg := login.RegisterFlags(fs)
	notifyFlags := notify.RegisterFlags(fs)
	forgeCfg := forge.RegisterFlags(fs)
	externalURL := fs.String("external-url", getenv("ANSFLOW_EXTERNAL_URL", ""), "the server's URL as users reach it; notifications and commit statuses link to URL/runs/ID (default: the listen address; env ANSFLOW_EXTERNAL_URL)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if ev.Err() != nil {
		return nil, ev.Err()
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if err := c.Common.Validate(); err != nil {
		return nil, err
	}
	if (*tlsCert == "") != (*tlsKey == "") {
		return nil, errors.New("--tls-cert and --tls-key go together")
	}
	notifyCfg, err := notifyFlags.Config()
	if err != nil {
		return nil, err
	}
	adminToken, err := readAdminToken(*adminTokenFile)
	if err != nil {
		return nil, err
	}
	var secretsKey, oldKey *secret.Key
	if *secretsKeyFile != "" {
		if secretsKey, err = secret.LoadKey(*secretsKeyFile); err != nil {
			return nil, err
		}
		if *oldKeyFile != "" {
			if oldKey, err = secret.LoadKey(*oldKeyFile); err != nil {
				return nil, err
			}
		}
	}
	c.Service = service.Config{HTTPAddr: *httpAddr, Replicas: *replicas, AdminToken: adminToken, SecretsKey: secretsKey, SecretsOldKey: oldKey,
		TLS: httpserver.TLS{CertFile: *tlsCert, KeyFile: *tlsKey}, Login: *loginCfg, Notify: notifyCfg, Forge: *forgeCfg, ExternalURL: *externalURL,
		Orchestrator: orchestrator.Config{LeaseCheck: *leaseCheck, PoolKeys: poolKeys.keys, Clone: source.CloneOptions{AllowLocal: *allowLocalClone, CAFile: *cloneCA}, Policy: orchestrator.Policy{
			NoRunnerTimeout: *noRunner, StepTimeout: *stepTimeout, RunTimeout: *runTimeout}}}
	return c, nil
}

func run(ctx context.Context, cfg *config) error {
	p, err := cfg.Common.Start("pipeline", "ansflow-pipeline")
	if err != nil {
		return err
	}
	defer p.Close()
	log := p.Log
	if cfg.Service.SecretsKey == nil {
		log.Warn("no --secrets-key-file: the service keeps no secrets, and steps asking for one fail")
	}
	if cfg.Service.AdminToken == "" {
		log.Warn("no --admin-token-file: the API accepts only the tokens already in its tokens bucket")
	}
	cfg.Service.Metrics = p.Metrics
	svc, err := service.New(ctx, cfg.Service, p.JS, log)
	if err != nil {
		return err
	}
	p.Ops.Ready("jetstream", daemon.Streams(p.JS, service.Streams()...))
	return p.Run(ctx, svc.Run)
}

// readAdminToken reads the token of --admin-token-file ("" for none): the
// file's content without surrounding white space.
func readAdminToken(file string) (string, error) {
	if file == "" {
		return "", nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--admin-token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < auth.MinSecretLen {
		return "", fmt.Errorf("--admin-token-file %s: the token must have at least %d characters", file, auth.MinSecretLen)
	}
	return tok, nil
}

// poolKeyFlag collects --pool-secrets-key KIND/POOL=KEY values.
type poolKeyFlag struct{ keys map[string][]string }

func (f *poolKeyFlag) String() string { return "" }

func (f *poolKeyFlag) Set(v string) error {
	pool, key, ok := strings.Cut(v, "=")
	kind, target, kok := strings.Cut(pool, "/")
	if !ok || !kok || (kind != event.KindDocker && kind != event.KindK8s) || target == "" {
		return fmt.Errorf("%q: want docker/POOL=KEY or k8s/CLUSTER=KEY", v)
	}
	if err := secret.CheckPublicKey(key); err != nil {
		return err
	}
	if f.keys == nil {
		f.keys = map[string][]string{}
	}
	id := orchestrator.PoolKeyID(kind, target)
	f.keys[id] = append(f.keys[id], key)
	return nil
}
