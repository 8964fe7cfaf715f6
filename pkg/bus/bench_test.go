package bus_test

import (
	"context"
	"sort"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
)

// BenchmarkPublishToHandler measures one event's way from Publish to its
// handler's return and acknowledgement through a durable consumer, one
// event at a time, as a chain of steps sees it.
func BenchmarkPublishToHandler(b *testing.B) {
	for _, tr := range []struct {
		name string
		run  func(testing.TB) *natstest.Server
	}{{"embedded", natstest.RunInProcess}, {"tcp", natstest.Run}} {
		b.Run(tr.name, func(b *testing.B) {
			s := tr.run(b)
			if err := bus.EnsureStreams(context.Background(), s.JS, 1); err != nil {
				b.Fatal(err)
			}
			subj := "ansflow.events.step.completed.bench"
			got := make(chan time.Time, 1)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				_ = bus.Consume(ctx, s.JS, bus.ConsumerConfig{Stream: event.StreamEvents, Durable: "bench", FilterSubjects: []string{subj}, Concurrency: 16},
					func(context.Context, cloudevents.Event) error { got <- time.Now(); return nil }, zap.NewNop())
			}()
			defer func() { cancel(); <-done }()
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				e, _ := event.New("bench", event.TypeStepCompleted, event.Meta{RunID: "r"}, nil)
				t0 := time.Now()
				if err := bus.Publish(context.Background(), s.JS, subj, e); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, (<-got).Sub(t0))
			}
			b.StopTimer()
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(lat[len(lat)/2])/1e3, "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100])/1e3, "p99-µs")
		})
	}
}
