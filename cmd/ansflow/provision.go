package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/ansflow/ansflow/pkg/natsauth"
	"github.com/ansflow/ansflow/pkg/natsutil"
	"github.com/ansflow/ansflow/pkg/topology"
)

// cmdProvision creates or updates every stream, bucket, object store and
// durable consumer, as the provisioner identity.
func cmdProvision(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("provision", flag.ContinueOnError)
	url := fs.String("nats", envOr("ANSFLOW_NATS_URL", "nats://127.0.0.1:4222"), "NATS server URL(s) [ANSFLOW_NATS_URL]")
	creds := fs.String("nats-creds", os.Getenv("ANSFLOW_NATS_CREDS"), "provisioner credentials file (DIR/creds/provisioner.creds) [ANSFLOW_NATS_CREDS]")
	ca := fs.String("nats-ca", os.Getenv("ANSFLOW_NATS_CA"), "CA of the server certificate (DIR/tls/ca.pem) [ANSFLOW_NATS_CA]")
	replicas := fs.Int("replicas", 1, "replicas of every stream and bucket (3 on a cluster); existing ones keep more")
	docker := fs.String("docker-pools", "default", "docker pools whose consumers to create, comma-separated")
	k8s := fs.String("k8s-clusters", "", "Kubernetes clusters whose consumers to create, comma-separated")
	lease := fs.Duration("runner-lease", topology.DefaultLease, "the runners' --lease (their consumers' ack wait)")
	auditLogs := fs.Bool("audit-logs", false, "also create the audit consumer of the logs stream (audit --include-logs)")
	timeout := fs.Duration("timeout", time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return &usageError{err}
	}
	if *replicas < 1 {
		return invalid("provision: --replicas %d: want at least 1", *replicas)
	}
	nc, err := natsutil.Connect(natsutil.ConnectOptions{URL: *url, Name: "ansflow-provision", CredsFile: *creds, CAFile: *ca})
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := natsutil.JetStream(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	pools := topology.Pools{Docker: splitList(*docker), K8s: splitList(*k8s)}
	if err := natsauth.Provision(ctx, js, natsauth.ProvisionConfig{Replicas: *replicas, Pools: pools, RunnerLease: *lease, AuditLogs: *auditLogs}); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "ansflow provision: streams, buckets and consumers ready on %s\n", nc.ConnectedUrlRedacted())
	return nil
}

// envOr is the environment variable k, or def when it is empty.
func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
