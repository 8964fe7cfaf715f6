package bus_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
)

var streamNames = []string{event.StreamSteps, event.StreamEvents, event.StreamLogs, event.StreamDLQ}

func streamConfig(t *testing.T, js jetstream.JetStream, name string) jetstream.StreamConfig {
	t.Helper()
	s, err := js.Stream(context.Background(), name)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	return s.CachedInfo().Config
}

func bucketConfig(t *testing.T, js jetstream.JetStream, bucket string) jetstream.KeyValueConfig {
	t.Helper()
	kv, err := js.KeyValue(context.Background(), bucket)
	if err != nil {
		t.Fatalf("bucket %s: %v", bucket, err)
	}
	st, err := kv.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st.(*jetstream.KeyValueBucketStatus).Config()
}

func TestStartingWithOneReplicaKeepsR3StreamsAndBuckets(t *testing.T) {
	c := natstest.RunCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := bus.EnsureStreams(ctx, c.JS, 3); err != nil {
		t.Fatal(err)
	}
	kvCfg := jetstream.KeyValueConfig{Bucket: "ansflow_test", TTL: time.Hour, Replicas: 3}
	if _, err := bus.EnsureKeyValue(ctx, c.JS, kvCfg); err != nil {
		t.Fatal(err)
	}
	// An operator's or an older version's change to a setting AnsFlow
	// owns is put right by the next start, which must not lower replicas
	// while doing so.
	events := streamConfig(t, c.JS, event.StreamEvents)
	events.Description = "changed"
	if _, err := c.JS.UpdateStream(ctx, events); err != nil {
		t.Fatal(err)
	}

	// A runner and an audit service start, each on its own connection,
	// asking for one replica; the runner's bucket settings changed.
	for _, starter := range []string{"runner", "audit"} {
		_, js := c.Connect(t)
		if err := bus.EnsureStreams(ctx, js, 1); err != nil {
			t.Fatalf("%s: %v", starter, err)
		}
		one := kvCfg
		one.Replicas, one.TTL = 1, 2*time.Hour
		kv, err := bus.EnsureKeyValue(ctx, js, one)
		if err != nil {
			t.Fatalf("%s: %v", starter, err)
		}
		if _, err := kv.Put(ctx, starter, []byte("up")); err != nil {
			t.Fatalf("%s: the returned bucket does not work: %v", starter, err)
		}
	}
	for _, name := range streamNames {
		if got := streamConfig(t, c.JS, name).Replicas; got != 3 {
			t.Errorf("stream %s has %d replicas after starts with 1, want 3", name, got)
		}
	}
	if got := streamConfig(t, c.JS, event.StreamEvents).Description; got != "lifecycle events" {
		t.Errorf("events stream description %q: the other settings were not updated", got)
	}
	got := bucketConfig(t, c.JS, kvCfg.Bucket)
	if got.Replicas != 3 {
		t.Errorf("bucket has %d replicas after starts with 1, want 3", got.Replicas)
	}
	if got.TTL != 2*time.Hour {
		t.Errorf("bucket TTL %s: the other settings were not updated", got.TTL)
	}
}

func TestReplicasAreRaisedAndConcurrentStartersAgree(t *testing.T) {
	c := natstest.RunCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Runners (1) and pipeline instances (3) starting at once, on nothing.
	var wg sync.WaitGroup
	errs := make(chan error, 12)
	for i := range 6 {
		replicas := 1 + 2*(i%2)
		_, js := c.Connect(t)
		wg.Go(func() {
			if err := bus.EnsureStreams(ctx, js, replicas); err != nil {
				errs <- err
			}
			if _, err := bus.EnsureKeyValue(ctx, js, jetstream.KeyValueConfig{Bucket: "race", History: 5, Replicas: replicas}); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent start: %v", err)
	}
	for _, name := range streamNames {
		if got := streamConfig(t, c.JS, name).Replicas; got != 3 {
			t.Errorf("stream %s has %d replicas, want 3", name, got)
		}
	}
	if got := bucketConfig(t, c.JS, "race"); got.Replicas != 3 || got.History != 5 {
		t.Errorf("bucket replicas %d history %d, want 3 and 5", got.Replicas, got.History)
	}
}

// An unchanged stream or bucket is not written on every start: an update
// costs a cluster round, and one that never converged would loop.
func TestEnsureLeavesSettledStreamsAndBucketsAlone(t *testing.T) {
	s := natstest.Run(t)
	ctx := context.Background()
	kvCfg := jetstream.KeyValueConfig{Bucket: "settled", TTL: time.Hour, History: 3}
	if err := bus.EnsureStreams(ctx, s.JS, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.EnsureKeyValue(ctx, s.JS, kvCfg); err != nil {
		t.Fatal(err)
	}
	updates, err := s.NC.SubscribeSync("$JS.EVENT.ADVISORY.STREAM.UPDATED.>")
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := bus.EnsureStreams(ctx, s.JS, 1); err != nil {
			t.Fatal(err)
		}
		if _, err := bus.EnsureKeyValue(ctx, s.JS, kvCfg); err != nil {
			t.Fatal(err)
		}
	}
	// An update of our own, as a marker: every advisory before it would
	// have arrived first.
	if _, err := bus.EnsureKeyValue(ctx, s.JS, jetstream.KeyValueConfig{Bucket: "settled", TTL: 2 * time.Hour, History: 3}); err != nil {
		t.Fatal(err)
	}
	m, err := updates.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("no update advisory for the changed bucket: %v", err)
	}
	if want := "$JS.EVENT.ADVISORY.STREAM.UPDATED.KV_settled"; m.Subject != want {
		t.Errorf("settled streams or buckets were updated: first advisory %s, want %s", m.Subject, want)
	}
	if m, err := updates.NextMsg(200 * time.Millisecond); err != nats.ErrTimeout {
		t.Errorf("more than one update to change one setting: %v %v", m, err)
	}
}
