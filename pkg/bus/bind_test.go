package bus_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/pkg/topology"
)

// A consumer that exists with the catalogue's settings is bound without a
// write (its creation time and configuration stay), one with other
// settings is updated, and a missing one is created.
func TestBindOrCreateConsumer(t *testing.T) {
	_, js := natstest.Run(t).Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := bus.EnsureStreams(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	want := topology.RunnerConsumer(event.KindDocker, "p", 0, 2)
	created, err := bus.BindOrCreateConsumer(ctx, js, want.Stream, want.Config)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	info := created.CachedInfo()
	if !bus.ConsumerSettled(info.Config, want.Config) {
		t.Fatalf("created consumer %+v does not have the catalogue's settings", info.Config)
	}
	bound, err := bus.BindOrCreateConsumer(ctx, js, want.Stream, want.Config)
	if err != nil {
		t.Fatalf("bind: %v", err)
	}
	if bi := bound.CachedInfo(); !bi.Created.Equal(info.Created) || bi.Config.AckWait != want.Config.AckWait {
		t.Fatalf("bind changed the consumer: %+v", bi)
	}
	// The runner loop asks for the same consumer through EnsureConsumer.
	if _, err := bus.EnsureConsumer(ctx, js, bus.ConsumerConfig{Stream: want.Stream, Durable: want.Config.Durable,
		FilterSubjects: want.Config.FilterSubjects, AckWait: topology.DefaultLease, Concurrency: 2}); err != nil {
		t.Fatal(err)
	}
	longer := topology.RunnerConsumer(event.KindDocker, "p", time.Minute, 2)
	if bus.ConsumerSettled(info.Config, longer.Config) {
		t.Fatal("a different ack wait counts as settled")
	}
	updated, err := bus.BindOrCreateConsumer(ctx, js, longer.Stream, longer.Config)
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	if got := updated.CachedInfo().Config.AckWait; got != time.Minute {
		t.Fatalf("updated ack wait %v, want 1m", got)
	}
	var _ jetstream.Consumer = updated
}
