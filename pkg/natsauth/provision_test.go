package natsauth_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/natsauth"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/pkg/topology"
)

// TestProvisionBringsAnOldSourcesStoreToItsTTL: a sources object store made
// before the catalogue gave it a time to live (it kept uploads forever)
// gets the TTL from provisioning, and a second provisioning changes
// nothing.
func TestProvisionBringsAnOldSourcesStoreToItsTTL(t *testing.T) {
	ns := natstest.Run(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := ns.JS.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: topology.ObjectSources, Description: "run sources"}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := natsauth.Provision(ctx, ns.JS, natsauth.ProvisionConfig{Replicas: 1, Pools: topology.Pools{Docker: []string{"default"}}, RunnerLease: 30 * time.Second}); err != nil {
			t.Fatal(err)
		}
		store, err := ns.JS.ObjectStore(ctx, topology.ObjectSources)
		if err != nil {
			t.Fatal(err)
		}
		st, err := store.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.TTL() != topology.SourcesTTL {
			t.Fatalf("sources store TTL %s after provisioning, want %s", st.TTL(), topology.SourcesTTL)
		}
	}
}
