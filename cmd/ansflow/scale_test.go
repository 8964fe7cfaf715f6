package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/runner/runnertest"
	"github.com/ansflow/ansflow/pkg/source"
)

// scaleRunnerEnv makes the test binary run one runner process of the
// scale-out benchmark (with the scripted engine) instead of the tests.
const scaleRunnerEnv = "ANSFLOW_SCALE_RUNNER"

func TestMain(m *testing.M) {
	if os.Getenv(scaleRunnerEnv) != "" {
		if err := scaleRunner(); err != nil {
			fmt.Fprintln(os.Stderr, "scale runner:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// scaleRunner is a runner process of the default docker pool with the
// scripted engine, configured by ANSFLOW_SCALE_RUNNER=ID,
// ANSFLOW_NATS_URL and ANSFLOW_CONCURRENCY; it stops on SIGTERM.
func scaleRunner() error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	nc, err := nats.Connect(os.Getenv("ANSFLOW_NATS_URL"), nats.Name(os.Getenv(scaleRunnerEnv)), nats.MaxReconnects(-1))
	if err != nil {
		return err
	}
	defer nc.Drain()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return err
	}
	slots, _ := strconv.Atoi(os.Getenv("ANSFLOW_CONCURRENCY"))
	dir, err := os.MkdirTemp("", "ansflow-scale-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	rc := runner.Config{Kind: event.KindDocker, Targets: []string{"default"}, ID: os.Getenv(scaleRunnerEnv), Concurrency: slots, Replicas: 3, WorkDir: dir}
	if err := rc.Validate(); err != nil {
		return err
	}
	err = runner.New(rc, nc, js, &runnertest.Engine{}, &source.Fetcher{JS: js}, zap.NewNop()).Run(ctx)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// cpuTicks reads the user and system CPU time of process pid, in clock
// ticks (1/100 s).
func cpuTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return u + s
}

// Scale-out workload: chains of scaleChain steps that each sleep
// scaleStepSleep in the scripted engine, scaleRunsPerSlot runs per runner
// slot at once, so every slot always has a step waiting.
const (
	scaleSlots       = 4
	scaleChain       = 10
	scaleStepSleep   = 100 * time.Millisecond
	scaleRunsPerSlot = 3
)

// BenchmarkScaleOut measures AnsFlow's throughput of short steps on three
// clustered nats-server processes with R3 streams and buckets, with the
// pipeline service as its own process and 1, 2, 4 and 8 runner processes
// of scaleSlots slots each (the scripted engine sleeps, so the figures are
// AnsFlow's, not the Docker Engine's). For each it reports steps/s, the
// ideal (slots / step time) and their ratio, the per-step orchestration
// latency (a step's end at the runner to the next step's dispatch by the
// pipeline service, p50/p99), and the CPU each part spent per step, which
// says what bounds the curve on this machine.
func BenchmarkScaleOut(b *testing.B) {
	bin := buildFaultBinaries(b)
	logDir := b.TempDir()
	nodes := startNATSCluster(b, filepath.Join(bin, "nats-server"), logDir)
	var urls []string
	for _, n := range nodes {
		urls = append(urls, n.url())
	}
	natsURLs := strings.Join(urls, ",")
	adminFile, admin := adminTokenFileFor(b)
	api := freePort(b)
	pipe := newFaultProc(b, logDir, "pipeline", filepath.Join(bin, "pipeline"),
		"--nats", natsURLs, "--http", api, "--ops-addr", "off", "--replicas", "3", "--admin-token-file", adminFile, "--log-level", "warn")
	pipe.start()
	waitTCP(b, api)
	c := newClient("http://"+api, admin)
	ctx := context.Background()
	var sb strings.Builder
	fmt.Fprintf(&sb, "pipeline:\n  name: chain\n  steps:\n")
	for i := range scaleChain {
		fmt.Fprintf(&sb, "    - {name: s%d, type: docker_run, order: %d, command: \"sleep %s\"}\n", i, i+1, scaleStepSleep)
	}
	if _, err := c.applyPipeline(ctx, "chain.yaml", []byte(sb.String())); err != nil {
		b.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}

	for _, n := range []int{1, 2, 4, 8} {
		b.Run(fmt.Sprintf("runners=%d", n), func(b *testing.B) {
			var procs []*faultProc
			for i := range n {
				id := fmt.Sprintf("scale-%d-%d", n, i)
				p := newFaultProc(b, logDir, id, self)
				p.env = []string{scaleRunnerEnv + "=" + id, "ANSFLOW_NATS_URL=" + natsURLs, "ANSFLOW_CONCURRENCY=" + strconv.Itoa(scaleSlots)}
				p.start()
				procs = append(procs, p)
			}
			defer func() {
				for _, p := range procs {
					p.stop()
				}
			}()
			waitRunnersOnline(b, c, n, procs)
			slots := n * scaleSlots
			var gaps []time.Duration
			var steps int
			var wall time.Duration
			var cpu [3]int64 // pipeline, NATS, runners
			b.ResetTimer()
			for range b.N {
				before := scaleCPU(pipe, nodes, procs)
				start := time.Now()
				ids := make([]string, slots*scaleRunsPerSlot)
				for i := range ids {
					run, err := c.trigger(ctx, "chain", apiv1.TriggerBody{})
					if err != nil {
						b.Fatal(err)
					}
					ids[i] = run.ID
				}
				runs := waitScaleRuns(b, c, ids)
				wall += time.Since(start)
				after := scaleCPU(pipe, nodes, procs)
				for i := range cpu {
					cpu[i] += after[i] - before[i]
				}
				for _, r := range runs {
					steps += len(r.Steps)
					gaps = append(gaps, chainGaps(b, r)...)
				}
			}
			b.StopTimer()
			slices.Sort(gaps)
			ideal := float64(slots) / scaleStepSleep.Seconds()
			rate := float64(steps) / wall.Seconds()
			b.ReportMetric(rate, "steps/s")
			b.ReportMetric(ideal, "ideal-steps/s")
			b.ReportMetric(rate/ideal, "efficiency")
			b.ReportMetric(ms(gaps[len(gaps)/2]), "orch-p50-ms")
			b.ReportMetric(ms(gaps[len(gaps)*99/100]), "orch-p99-ms")
			for i, name := range []string{"pipeline", "nats", "runners"} {
				b.ReportMetric(float64(cpu[i])*10/float64(steps), name+"-cpu-ms/step")
			}
		})
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// scaleCPU reads the CPU ticks of the pipeline service, the NATS nodes and
// the runner processes.
func scaleCPU(pipe *faultProc, nodes []*natsNode, runners []*faultProc) [3]int64 {
	var out [3]int64
	out[0] = cpuTicks(pipe.pid())
	for _, n := range nodes {
		out[1] += cpuTicks(n.proc.pid())
	}
	for _, r := range runners {
		out[2] += cpuTicks(r.pid())
	}
	return out
}

// waitRunnersOnline waits until the pool's runner catalogue lists every
// runner process just started.
func waitRunnersOnline(b *testing.B, c *client, n int, procs []*faultProc) {
	b.Helper()
	want := map[string]bool{}
	for _, p := range procs {
		want[p.name] = true
	}
	waitFor(b, 30*time.Second, fmt.Sprintf("%d runner processes online", n), func() (bool, string) {
		var rs []apiv1.RunnerStatus
		if err := c.do(context.Background(), http.MethodGet, "/api/v1/runners", "", nil, &rs); err != nil {
			return false, err.Error()
		}
		seen := 0
		for _, r := range rs {
			if want[r.ID] {
				seen++
			}
		}
		return seen == n, fmt.Sprintf("%d of %d online", seen, n)
	})
}

// waitScaleRuns waits until every run succeeded and returns them.
func waitScaleRuns(b *testing.B, c *client, ids []string) []*apiv1.Run {
	b.Helper()
	out := make([]*apiv1.Run, len(ids))
	for i, id := range ids {
		waitFor(b, 5*time.Minute, "run "+id+" finished", func() (bool, string) {
			var r apiv1.Run
			if err := c.do(context.Background(), http.MethodGet, "/api/v1/runs/"+id, "", nil, &r); err != nil {
				return false, err.Error()
			}
			if !r.Terminal() {
				return false, r.Status
			}
			if r.Status != event.StatusSucceeded {
				b.Fatalf("run %s ended %s: %s", id, r.Status, r.Error)
			}
			out[i] = &r
			return true, ""
		})
	}
	return out
}

// chainGaps returns, for each step of a chain run after the first, the time
// from the previous step's end (as the runner reported it) to its dispatch.
func chainGaps(b *testing.B, r *apiv1.Run) []time.Duration {
	steps := slices.Clone(r.Steps)
	index := func(s *apiv1.StepState) int { n, _ := strconv.Atoi(strings.TrimPrefix(s.Name, "s")); return n }
	slices.SortFunc(steps, func(x, y *apiv1.StepState) int { return index(x) - index(y) })
	var out []time.Duration
	for i := 1; i < len(steps); i++ {
		prev, next := steps[i-1], steps[i]
		if prev.FinishedAt == nil || next.StartedAt == nil {
			b.Fatalf("run %s step %s: no start or end time", r.ID, next.Name)
		}
		// Dispatched is when the step's attempt was published: its
		// start less the time it waited for a runner.
		dispatched := next.StartedAt.Add(-time.Duration(next.QueueSeconds * float64(time.Second)))
		out = append(out, dispatched.Sub(*prev.FinishedAt))
	}
	return out
}
