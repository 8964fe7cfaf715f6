package orchestrator_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/services/pipeline/orchestrator"
)

// timingEngine is a no-op engine that records when each step reached it
// and when it returned, to measure the orchestration between steps.
type timingEngine struct {
	mu    sync.Mutex
	start map[string]time.Time
	end   map[string]time.Time
}

func (e *timingEngine) Types() []string { return []string{"docker_run"} }

func (e *timingEngine) Execute(_ context.Context, req *event.StepRequested, _ *runner.Task) (map[string]string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	k := req.RunID + "/" + req.StepID
	e.start[k] = time.Now()
	e.end[k] = time.Now()
	return nil, nil
}

func chainPipeline(b *testing.B, name string, steps int) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "pipeline:\n  name: %s\n  steps:\n", name)
	for i := 0; i < steps; i++ {
		fmt.Fprintf(&sb, "    - name: s%d\n      type: docker_run\n", i)
	}
	f := filepath.Join(b.TempDir(), name+".yaml")
	if err := os.WriteFile(f, []byte(sb.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	return f
}

// transports are the client connections benchmarked: in-process, as the
// embedded `ansflow up` connects its services, and loopback TCP, as separate
// service processes on one machine do.
var transports = []struct {
	name string
	run  func(testing.TB) *natstest.Server
}{{"embedded", natstest.RunInProcess}, {"tcp", natstest.Run}}

func benchEnv(b *testing.B, run func(testing.TB) *natstest.Server) (*env, *timingEngine) {
	ns := run(b)
	eng := &timingEngine{start: map[string]time.Time{}, end: map[string]time.Time{}}
	e := startEnvTB(b, ns, eng)
	return e, eng
}

// BenchmarkDispatch measures the time from a step's end at a runner to the
// next step's arrival at a runner, through step.completed, the orchestrator's
// compare-and-swap update and step.requested, on an embedded JetStream.
func BenchmarkDispatch(b *testing.B) {
	for _, tr := range transports {
		b.Run(tr.name, func(b *testing.B) { benchDispatch(b, tr.run) })
	}
}

func benchDispatch(b *testing.B, run func(testing.TB) *natstest.Server) {
	e, eng := benchEnv(b, run)
	bare := bareRoundTrips(b, e.ns, 500)
	const steps = 40
	e.applyTB(b, chainPipeline(b, "chain", steps))
	var gaps []time.Duration
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		run, err := e.svc.Orc.Trigger(context.Background(), orchestrator.TriggerRequest{Pipeline: "chain", Trigger: apiv1.Trigger{Kind: "bench"}})
		if err != nil {
			b.Fatal(err)
		}
		r := e.waitRunTB(b, run.ID, time.Minute)
		if r.Status != event.StatusSucceeded {
			b.Fatalf("run %s: %s", r.Status, r.Error)
		}
		eng.mu.Lock()
		for i := 1; i < steps; i++ {
			prev, cur := fmt.Sprintf("%s/s%d", run.ID, i-1), fmt.Sprintf("%s/s%d", run.ID, i)
			gaps = append(gaps, eng.start[cur].Sub(eng.end[prev]))
		}
		eng.mu.Unlock()
	}
	b.StopTimer()
	sort.Slice(gaps, func(i, j int) bool { return gaps[i] < gaps[j] })
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	p50, p99 := gaps[len(gaps)/2], gaps[len(gaps)*99/100]
	b50, b99 := bare[len(bare)/2], bare[len(bare)*99/100]
	b.ReportMetric(ms(p50), "p50-ms")
	b.ReportMetric(ms(p99), "p99-ms")
	b.ReportMetric(ms(b50), "bare-p50-ms")
	b.ReportMetric(ms(b99), "bare-p99-ms")
	b.ReportMetric(float64(p50)/float64(b50), "p50-ratio")
	b.ReportMetric(float64(p99)/float64(b99), "p99-ratio")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkThroughput runs 100 concurrent runs of no-op steps and reports
// steps executed per second, from their triggers to the runs' ends.
func BenchmarkThroughput(b *testing.B) {
	for _, tr := range transports {
		b.Run(tr.name, func(b *testing.B) { benchThroughput(b, tr.run) })
	}
}

func benchThroughput(b *testing.B, run func(testing.TB) *natstest.Server) {
	e, _ := benchEnv(b, run)
	const runs, steps = 100, 10
	e.applyTB(b, chainPipeline(b, "wide", steps))
	b.ResetTimer()
	start := time.Now()
	total := 0
	for n := 0; n < b.N; n++ {
		runAll(b, e, "wide", runs, 5*time.Minute)
		total += runs * steps
	}
	b.ReportMetric(float64(total)/time.Since(start).Seconds(), "steps/s")
	b.ReportMetric(0, "ns/op")
}

// runAll triggers n runs of pipeline at once and waits until each has
// succeeded, for at most d each.
func runAll(b *testing.B, e *env, pipeline string, n int, d time.Duration) {
	ids := make([]string, n)
	for i := range ids {
		run, err := e.svc.Orc.Trigger(context.Background(), orchestrator.TriggerRequest{Pipeline: pipeline, Trigger: apiv1.Trigger{Kind: "bench"}})
		if err != nil {
			b.Fatal(err)
		}
		ids[i] = run.ID
	}
	for _, id := range ids {
		if r := e.waitRunTB(b, id, d); r.Status != event.StatusSucceeded {
			b.Fatalf("run %s: %s", r.Status, r.Error)
		}
	}
}

// bareRoundTrips measures n JetStream round trips on ns with nothing of
// AnsFlow in them: publish (acknowledged by the stream), fetch by a waiting
// pull consumer, and a synchronous ack, which is what one step transition
// does at least twice. The dispatch figures are reported as ratios to it.
func bareRoundTrips(b *testing.B, ns *natstest.Server, n int) []time.Duration {
	ctx := context.Background()
	js := ns.JS
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "BENCH_BARE", Subjects: []string{"bench.bare"}}); err != nil {
		b.Fatal(err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, "BENCH_BARE", jetstream.ConsumerConfig{Durable: "bare", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		b.Fatal(err)
	}
	acked := make(chan struct{})
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		for cctx.Err() == nil {
			m, err := cons.Next(jetstream.FetchMaxWait(time.Second))
			if err != nil {
				continue
			}
			_ = m.DoubleAck(cctx)
			acked <- struct{}{}
		}
	}()
	out := make([]time.Duration, 0, n)
	for i := 0; i < n+20; i++ {
		start := time.Now()
		if _, err := js.Publish(ctx, "bench.bare", []byte("x")); err != nil {
			b.Fatal(err)
		}
		<-acked
		if i >= 20 { // warm-up
			out = append(out, time.Since(start))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// BenchmarkQueue queues 1,000 runs of 10 no-op steps at once behind one
// runner with 8 slots and reports steps per second and the queue's cost per
// step: the slot time each step took (wall time × slots / steps), all of it
// orchestration, queueing and claiming since the steps do nothing.
func BenchmarkQueue(b *testing.B) {
	for _, tr := range transports {
		b.Run(tr.name, func(b *testing.B) {
			ns := tr.run(b)
			e := startEnvCfg(b, ns, orchestrator.Config{})
			const slots, runs, steps = 8, 1000, 10
			runnerAt(b, ns, &timingEngine{start: map[string]time.Time{}, end: map[string]time.Time{}}, "bench-8", slots, 30*time.Second)
			e.applyTB(b, chainPipeline(b, "queued", steps))
			b.ResetTimer()
			start := time.Now()
			total := 0
			for n := 0; n < b.N; n++ {
				runAll(b, e, "queued", runs, 10*time.Minute)
				total += runs * steps
			}
			wall := time.Since(start)
			b.ReportMetric(float64(total)/wall.Seconds(), "steps/s")
			b.ReportMetric(float64(wall)*slots/float64(total)/float64(time.Millisecond), "slot-ms/step")
			b.ReportMetric(0, "ns/op")
		})
	}
}
