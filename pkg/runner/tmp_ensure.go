package runner

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
)

// TODO(queue): replace by bus.EnsureKeyValue once it lands.
func ensureKV(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	return js.CreateOrUpdateKeyValue(ctx, cfg)
}
