// Command pipeline runs the AnsFlow pipeline service alone against an
// external NATS cluster: it stores pipelines, orchestrates runs and serves the
// REST API.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/httpserver"
	"github.com/ansflow/ansflow/pkg/logging"
	"github.com/ansflow/ansflow/pkg/natsutil"
	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/pkg/source"
	"github.com/ansflow/ansflow/services/pipeline/forge"
	"github.com/ansflow/ansflow/services/pipeline/login"
	"github.com/ansflow/ansflow/services/pipeline/notify"
	"github.com/ansflow/ansflow/services/pipeline/orchestrator"
	"github.com/ansflow/ansflow/services/pipeline/service"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "pipeline:", err)
		os.Exit(1)
	}
}

func env(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func run(ctx context.Context) error {
	natsURL := flag.String("nats", env("ANSFLOW_NATS_URL", "nats://127.0.0.1:4222"), "NATS URL (env ANSFLOW_NATS_URL)")
	creds := flag.String("nats-creds", os.Getenv("ANSFLOW_NATS_CREDS"), "NATS credentials file (env ANSFLOW_NATS_CREDS)")
	natsCA := flag.String("nats-ca", os.Getenv("ANSFLOW_NATS_CA"), "PEM file of the CA of the NATS server's TLS certificate; TLS is required when set (env ANSFLOW_NATS_CA)")
	httpAddr := flag.String("http", env("ANSFLOW_HTTP", "127.0.0.1:8080"), "API listen address (env ANSFLOW_HTTP)")
	replicas := flag.Int("replicas", 1, "stream and bucket replicas (3 on a NATS cluster)")
	noRunner := flag.Duration("no-runner-timeout", 10*time.Minute, "fail a queued step once no runner of its pool has been online for this long")
	stepTimeout := flag.Duration("step-timeout", time.Hour, "timeout of a step that sets none")
	runTimeout := flag.Duration("run-timeout", 24*time.Hour, "timeout of a run whose pipeline sets none")
	allowLocalClone := flag.Bool("allow-local-clone", os.Getenv("ANSFLOW_ALLOW_LOCAL_CLONE") == "true", "let runs name file:// repositories and paths of this host, which the service resolves and reads pipeline files from; default https, ssh and git only (env ANSFLOW_ALLOW_LOCAL_CLONE=true)")
	cloneCA := flag.String("clone-ca", os.Getenv("ANSFLOW_CLONE_CA"), "PEM file of the CAs trusted for https:// repositories the service resolves and reads instead of the system's (env ANSFLOW_CLONE_CA)")
	leaseCheck := flag.Duration("lease-check", 15*time.Second, "how often running steps' leases are checked for runners that are gone")
	tlsCert := flag.String("tls-cert", os.Getenv("ANSFLOW_TLS_CERT"), "serve the API and webhooks over HTTPS with this certificate (PEM; env ANSFLOW_TLS_CERT)")
	tlsKey := flag.String("tls-key", os.Getenv("ANSFLOW_TLS_KEY"), "the certificate's key (PEM; env ANSFLOW_TLS_KEY)")
	adminTokenFile := flag.String("admin-token-file", os.Getenv("ANSFLOW_ADMIN_TOKEN_FILE"), "file holding an admin API token to register (env ANSFLOW_ADMIN_TOKEN_FILE)")
	secretsKeyFile := flag.String("secrets-key-file", os.Getenv("ANSFLOW_SECRETS_KEY_FILE"), "file holding the secrets key (32 bytes, base64) that encrypts the secret store; without it the service keeps no secrets (env ANSFLOW_SECRETS_KEY_FILE)")
	oldKeyFile := flag.String("secrets-old-key-file", os.Getenv("ANSFLOW_SECRETS_OLD_KEY_FILE"), "the previous secrets key, when rotating it: secrets still under it are re-encrypted with --secrets-key-file at start (env ANSFLOW_SECRETS_OLD_KEY_FILE)")
	var poolKeys poolKeyFlag
	flag.Var(&poolKeys, "pool-secrets-key", "KIND/POOL=PUBLIC_KEY: seal that pool's secrets to this key only, not to the keys its runners announce (repeatable; 'ansflow secrets identity FILE' prints a key)")
	level := flag.String("log-level", env("ANSFLOW_LOG_LEVEL", "info"), "log level")
	loginCfg := login.RegisterFlags(flag.CommandLine)
	notifyFlags := notify.RegisterFlags(flag.CommandLine)
	forgeCfg := forge.RegisterFlags(flag.CommandLine)
	externalURL := flag.String("external-url", os.Getenv("ANSFLOW_EXTERNAL_URL"), "the server's URL as users reach it; notifications and commit statuses link to URL/runs/ID (default: the listen address; env ANSFLOW_EXTERNAL_URL)")
	flag.Parse()
	notifyCfg, err := notifyFlags.Config()
	if err != nil {
		return err
	}
	adminToken, err := readAdminToken(*adminTokenFile)
	if err != nil {
		return err
	}
	log, err := logging.New(*level, true)
	if err != nil {
		return err
	}
	defer log.Sync()
	var secretsKey, oldKey *secret.Key
	if *secretsKeyFile != "" {
		if secretsKey, err = secret.LoadKey(*secretsKeyFile); err != nil {
			return err
		}
		if *oldKeyFile != "" {
			if oldKey, err = secret.LoadKey(*oldKeyFile); err != nil {
				return err
			}
		}
	} else {
		log.Warn("no --secrets-key-file: the service keeps no secrets, and steps asking for one fail")
	}
	if adminToken == "" {
		log.Warn("no --admin-token-file: the API accepts only the tokens already in its tokens bucket")
	}
	nc, err := natsutil.Connect(natsutil.ConnectOptions{URL: *natsURL, Name: "ansflow-pipeline", CredsFile: *creds, CAFile: *natsCA})
	if err != nil {
		return err
	}
	defer nc.Drain()
	js, err := natsutil.JetStream(nc)
	if err != nil {
		return err
	}
	if (*tlsCert == "") != (*tlsKey == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	svc, err := service.New(ctx, service.Config{HTTPAddr: *httpAddr, Replicas: *replicas, AdminToken: adminToken, SecretsKey: secretsKey, SecretsOldKey: oldKey,
		TLS: httpserver.TLS{CertFile: *tlsCert, KeyFile: *tlsKey}, Login: *loginCfg, Notify: notifyCfg, Forge: *forgeCfg, ExternalURL: *externalURL,
		Orchestrator: orchestrator.Config{LeaseCheck: *leaseCheck, PoolKeys: poolKeys.keys, Clone: source.CloneOptions{AllowLocal: *allowLocalClone, CAFile: *cloneCA}, Policy: orchestrator.Policy{
			NoRunnerTimeout: *noRunner, StepTimeout: *stepTimeout, RunTimeout: *runTimeout}}}, js, log)
	if err != nil {
		return err
	}
	return svc.Run(ctx)
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
