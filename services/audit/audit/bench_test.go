package audit

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
)

// BenchmarkServiceCatchUp measures the whole path: an audit service that
// starts behind a stream of 20,000 step.completed events (a real in-process
// JetStream server) and stores them into SQLite. It reports events/s from
// start until the last one is stored.
func BenchmarkServiceCatchUp(b *testing.B) {
	const n = 20000
	for b.Loop() {
		b.StopTimer()
		ns := natstest.Run(b)
		ctx := context.Background()
		if err := bus.EnsureStreams(ctx, ns.JS, 1); err != nil {
			b.Fatal(err)
		}
		exit := 0
		for i := range n {
			run := fmt.Sprintf("run-%d", i%50)
			e, err := event.New("ansflow/docker-runner/bench", event.TypeStepCompleted, event.Meta{RunID: run, StepID: "build", Attempt: 1},
				event.StepCompleted{RunID: run, StepID: "build", Attempt: 1, Status: event.StatusSucceeded, ExitCode: &exit,
					Runner: "docker-runner@bench", StdoutTail: "Successfully built 3f2a9c1b7d"})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := bus.PublishAsync(context.Background(), ns.JS, event.LifecycleSubject(event.TypeStepCompleted, run), e); err != nil {
				b.Fatal(err)
			}
		}
		select {
		case <-ns.JS.PublishAsyncComplete():
		case <-time.After(time.Minute):
			b.Fatal("publishing did not complete")
		}
		st, err := OpenStore(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		cfg := Config{}
		if err := cfg.Validate(); err != nil {
			b.Fatal(err)
		}
		svc := New(cfg, ns.JS, st, zap.NewNop())
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		b.StartTimer()
		t0 := time.Now()
		go func() { done <- svc.Run(rctx) }()
		for svc.Stats().Stored < n {
			time.Sleep(5 * time.Millisecond)
		}
		el := time.Since(t0)
		b.StopTimer()
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		st.Close()
		b.ReportMetric(n/el.Seconds(), "events/s")
		b.StartTimer()
	}
}
