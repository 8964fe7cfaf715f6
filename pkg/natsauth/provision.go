package natsauth

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/topology"
)

// ProvisionConfig configures [Provision].
type ProvisionConfig struct {
	// Replicas of every stream and bucket (default 1); existing ones with
	// more keep theirs.
	Replicas int
	// Pools are the runner pools and clusters whose consumers to create.
	Pools topology.Pools
	// RunnerLease is the runners' lease, their consumers' AckWait (default
	// [topology.DefaultLease]); runners must be started with the same.
	RunnerLease time.Duration
	// AuditLogs also creates the audit consumer of the logs stream.
	AuditLogs bool
}

// Provision creates or updates every stream, key-value bucket, object
// store and durable consumer of package topology's catalogue. It is
// idempotent; run it with the provisioner identity before the services
// start, and again after an upgrade or when pools are added.
func Provision(ctx context.Context, js jetstream.JetStream, cfg ProvisionConfig) error {
	if err := bus.EnsureStreams(ctx, js, cfg.Replicas); err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	for _, b := range topology.Buckets(cfg.Replicas) {
		if _, err := bus.EnsureKeyValue(ctx, js, b); err != nil {
			return fmt.Errorf("provision: %w", err)
		}
	}
	for _, o := range topology.ObjectStores(cfg.Replicas) {
		if _, err := bus.EnsureObjectStore(ctx, js, o); err != nil {
			return fmt.Errorf("provision object store %s: %w", o.Bucket, err)
		}
	}
	for _, c := range topology.Consumers(cfg.Pools, cfg.RunnerLease, cfg.AuditLogs) {
		if _, err := js.CreateOrUpdateConsumer(ctx, c.Stream, c.Config); err != nil {
			return fmt.Errorf("provision consumer %s on %s: %w", c.Config.Durable, c.Stream, err)
		}
	}
	return nil
}
