package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ansflow/ansflow/pkg/httpserver"
	"github.com/ansflow/ansflow/pkg/logging"
	dockerpolicy "github.com/ansflow/ansflow/services/docker-runner/policy"
	"github.com/ansflow/ansflow/services/pipeline/forge"
	"github.com/ansflow/ansflow/services/pipeline/login"
	"github.com/ansflow/ansflow/services/pipeline/notify"
)

func cmdUp(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	dataDir := fs.String("data-dir", defaultDataDir(), "where JetStream and the audit database keep their files")
	httpAddr := fs.String("http", "127.0.0.1:8080", "API listen address")
	natsAddr := fs.String("nats", "127.0.0.1:4222", `NATS listen address for outside clients, which present the token of DATA_DIR/nats.token ("off" for none)`)
	config := fs.String("config", "", "registries and clusters file")
	noRunners := fs.Bool("no-runners", false, "start no runner in this process")
	noDocker := fs.Bool("no-docker-runner", false, "do not start the docker runner")
	noK8s := fs.Bool("no-k8s-runner", false, "do not start the k8s runner")
	noAudit := fs.Bool("no-audit", false, "do not start the audit service")
	noPipeline := fs.Bool("no-pipeline", false, "do not start the pipeline service")
	concurrency := fs.Int("concurrency", 4, "steps each runner executes at once")
	allowLocalClone := fs.Bool("allow-local-clone", false, "let runs clone file:// URLs and paths on this host (default: https, ssh and git only)")
	cloneCA := fs.String("clone-ca", os.Getenv("ANSFLOW_CLONE_CA"), "PEM file of the CAs trusted for https:// clones instead of the system's (a forge with a private CA)")
	level := fs.String("log-level", "info", "log level")
	opsAddr := fs.String("ops-addr", os.Getenv("ANSFLOW_OPS_ADDR"), "serve /healthz, /readyz and /metrics, unauthenticated, on this address (default off; env ANSFLOW_OPS_ADDR)")
	policyFlags := dockerpolicy.RegisterFlags(fs, os.LookupEnv)
	kubeContext := fs.String("kube-context", os.Getenv("ANSFLOW_KUBE_CONTEXT"), "kubeconfig context of cluster \"default\" (default: the current context of an explicitly set $KUBECONFIG, else none)")
	var tlsCfg httpserver.TLS
	fs.StringVar(&tlsCfg.CertFile, "tls-cert", os.Getenv("ANSFLOW_TLS_CERT"), "serve the API and webhooks over HTTPS with this certificate (PEM)")
	fs.StringVar(&tlsCfg.KeyFile, "tls-key", os.Getenv("ANSFLOW_TLS_KEY"), "the certificate's key (PEM)")
	loginCfg := login.RegisterFlags(fs)
	notifyFlags := notify.RegisterFlags(fs)
	forgeCfg := forge.RegisterFlags(fs)
	externalURL := fs.String("external-url", os.Getenv("ANSFLOW_EXTERNAL_URL"), "the server's URL as users reach it; notifications and commit statuses link to URL/runs/ID (default: the API's address; env ANSFLOW_EXTERNAL_URL)")
	keyFile := fs.String("secrets-key-file", os.Getenv("ANSFLOW_SECRETS_KEY_FILE"), "the secret store's key (32 bytes, base64); default DATA_DIR/secrets.key, made on first start")
	oldKeyFile := fs.String("secrets-old-key-file", "", "the previous secrets key, when rotating it: its secrets are re-encrypted with the current key at start")
	identityFile := fs.String("secrets-identity", os.Getenv("ANSFLOW_SECRETS_IDENTITY"), "the embedded runners' secrets identity; default DATA_DIR/secrets.identity, made on first start")
	if err := fs.Parse(args); err != nil {
		return &usageError{err}
	}
	if (tlsCfg.CertFile == "") != (tlsCfg.KeyFile == "") {
		return invalid("--tls-cert and --tls-key go together")
	}
	log, err := logging.New(*level, false)
	if err != nil {
		return &usageError{err}
	}
	stopTracing, err := startTracing(log)
	if err != nil {
		return &usageError{err}
	}
	defer stopTracing()
	pol, err := policyFlags.Policy()
	if err != nil {
		return &usageError{err}
	}
	notifyCfg, err := notifyFlags.Config()
	if err != nil {
		return &usageError{err}
	}
	st, err := startStack(ctx, stackConfig{DataDir: *dataDir, HTTPAddr: *httpAddr, OpsAddr: *opsAddr, NATSAddr: *natsAddr, ConfigFile: *config, DockerPolicy: pol,
		DockerRunner: !*noRunners && !*noDocker, K8sRunner: !*noRunners && !*noK8s, Audit: !*noAudit, Pipeline: !*noPipeline,
		Concurrency: *concurrency, AllowLocalClone: *allowLocalClone, CloneCA: *cloneCA, TLS: tlsCfg, Login: *loginCfg, KubeContext: *kubeContext,
		SecretsKeyFile: *keyFile, SecretsIdentityFile: *identityFile, SecretsOldKeyFile: *oldKeyFile, Notify: notifyCfg, Forge: *forgeCfg, ExternalURL: *externalURL}, log)
	if err != nil {
		return err
	}
	defer st.stop()
	if *allowLocalClone {
		fmt.Fprintln(os.Stderr, "ansflow up: --allow-local-clone: runs may clone file:// URLs and local paths of this host")
	}
	if st.TokenCreated {
		fmt.Fprintf(os.Stderr, "ansflow up: created an admin API token in %s (the CLI on this machine uses it)\n", filepath.Join(*dataDir, adminTokenFile))
	}
	if st.KeyCreated {
		fmt.Fprintf(os.Stderr, "ansflow up: created the secrets key in %s (back it up: without it the stored secrets cannot be read)\n", secretsKeyPath(*dataDir, *keyFile))
	}
	if st.IdentityCreated {
		fmt.Fprintf(os.Stderr, "ansflow up: created the embedded runners' secrets identity in %s\n", secretsIdentityPath(*dataDir, *identityFile))
	}
	nats := "in-process only"
	if *natsAddr != "off" {
		nats = st.ns.ClientURL() + " (outside clients: --nats-token-file " + filepath.Join(*dataDir, natsTokenFile) + ")"
	}
	fmt.Fprintf(os.Stderr, "ansflow up: API %s, NATS %s, data %s\n", st.URL, nats, *dataDir)
	select {
	case <-ctx.Done():
		return nil
	case <-st.done: // a service failed, or none runs but the NATS server
		if st.err != nil {
			return st.err
		}
		<-ctx.Done()
		return nil
	}
}

// secretsKeyPath is the secrets key file `ansflow up` uses.
func secretsKeyPath(dataDir, flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	return filepath.Join(dataDir, secretsKeyFile)
}

// secretsIdentityPath is the secrets identity file `ansflow up` uses.
func secretsIdentityPath(dataDir, flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	return filepath.Join(dataDir, secretsIdentityFile)
}
