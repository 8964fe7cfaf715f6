package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/apiv1"
)

// rssMB reads this process's resident set size.
func rssMB(b *testing.B) float64 {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.Atoi(f[1])
			return float64(kb) / 1024
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

// BenchmarkUpMemory measures the resident memory of the embedded stack that
// `ansflow up` runs (nats-server, pipeline service with its API, runners,
// audit) idle, and while 100 concurrent runs of no-op steps go through it.
func BenchmarkUpMemory(b *testing.B) {
	useScriptedEngines(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := startStack(ctx, stackConfig{DataDir: b.TempDir(), NATSAddr: "off", DockerRunner: true, K8sRunner: true,
		Audit: true, Pipeline: true, Concurrency: 16}, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	defer st.stop()
	c := newClient(st.URL, st.Token)
	var sb strings.Builder
	sb.WriteString("pipeline:\n  name: mem\n  steps:\n")
	for i := 0; i < 10; i++ {
		fmt.Fprintf(&sb, "    - {name: s%d, type: docker_run, command: \"echo step %d\"}\n", i, i)
	}
	f := filepath.Join(b.TempDir(), "mem.yaml")
	os.WriteFile(f, []byte(sb.String()), 0o644)
	if _, err := c.applyPipeline(ctx, f, []byte(sb.String())); err != nil {
		b.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	runtime.GC()
	debug.FreeOSMemory()
	idle := rssMB(b)
	peak := idle
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		ids := make([]string, 100)
		for i := range ids {
			run, err := c.trigger(ctx, "mem", apiv1.TriggerBody{})
			if err != nil {
				b.Fatal(err)
			}
			ids[i] = run.ID
		}
		for _, id := range ids {
			for {
				var r apiv1.Run
				if err := c.do(ctx, http.MethodGet, "/api/v1/runs/"+id, "", nil, &r); err != nil {
					b.Fatal(err)
				}
				peak = max(peak, rssMB(b))
				if r.Terminal() {
					if r.Status != "succeeded" {
						b.Fatalf("run %s: %s", r.Status, r.Error)
					}
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	b.ReportMetric(idle, "idle-rss-MB")
	b.ReportMetric(peak, "load-rss-MB")
	b.ReportMetric(0, "ns/op")
}
