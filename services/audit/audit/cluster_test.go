package audit

import (
	"context"
	"testing"
	"time"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/services/audit/store"
)

// The audit service starts with its default of one replica on a cluster
// whose streams the pipeline service made R3: they stay R3, and the trail
// is recorded.
func TestStartingOnAClusterKeepsR3Streams(t *testing.T) {
	c := natstest.RunCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := bus.EnsureStreams(ctx, c.JS, 3); err != nil {
		t.Fatal(err)
	}
	_, js := c.Connect(t)
	st := openStore(t, t.TempDir())
	r := start(t, js, st, Config{})
	e := newEvent(t, event.TypeRunCreated, event.Meta{RunID: "r3"}, map[string]string{"k": "v"})
	publish(t, c.JS, event.LifecycleSubject(event.TypeRunCreated, "r3"), e)
	// The first record waits for the service's start on a cluster that
	// has just elected the leaders of four R3 streams and now of their
	// consumers: on a loaded 2-core machine that took more than 20 s once.
	eventuallyWithin(t, time.Minute, "the event recorded", func() bool { return len(records(t, st, store.Filter{RunID: "r3"})) == 1 })
	if err := r.svc.WaitCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{event.StreamSteps, event.StreamEvents, event.StreamLogs, event.StreamDLQ} {
		s, err := c.JS.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.CachedInfo().Config.Replicas; got != 3 {
			t.Errorf("stream %s has %d replicas after the audit service started, want 3", name, got)
		}
	}
	cons, err := c.JS.Consumer(ctx, event.StreamEvents, Config{DurablePrefix: "audit"}.Durable(event.StreamEvents))
	if err != nil {
		t.Fatal(err)
	}
	if info := cons.CachedInfo(); info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
		t.Errorf("the audit consumer is not replicated like its R3 stream: %+v", info.Cluster)
	}
}
