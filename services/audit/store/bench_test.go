package store

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the CPU time this process has used. The benchmarks report it
// beside wall time because the machines they run on are shared: on a busy
// machine wall time grows, CPU time much less.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// The benchmarks report the figures of docs/performance.md:
//
//	go test -run '^$' -bench . -benchtime 1x ./store/   (1x: build once)
//
// ANSFLOW_AUDIT_BENCH_RECORDS changes the size of the shared database
// (default 1,000,000 records); ANSFLOW_AUDIT_BENCH_DB keeps it at a path
// and reuses it on later runs.

const benchRunEvents = 100 // events per run in the shared database

// benchRecord is the i-th record of the benchmark trail: runs of
// benchRunEvents events, 50 of them interleaved at any time, with data of
// the size of a real step.completed event.
func benchRecord(i int, now time.Time) Record {
	group, off := i/(50*benchRunEvents), i%(50*benchRunEvents)
	run := "run-" + strconv.Itoa(group*50+off%50)
	step := "step-" + strconv.Itoa(off/50%10)
	return Record{
		Stream: "ANSFLOW_EVENTS", StreamSeq: uint64(i + 1),
		Source: "ansflow/docker-runner/pool-1", ID: fmt.Sprintf("%016x-%08x", i, i*7919),
		Type: "io.ansflow.step.completed.v1", Time: now, Subject: run + "/" + step + "/1",
		RunID: run, StepID: step, Attempt: 1, Pipeline: "pipeline-" + strconv.Itoa(group%20),
		Data: json.RawMessage(`{"run_id":"` + run + `","step_id":"` + step + `","attempt":1,"status":"succeeded","exit_code":0,` +
			`"runner":"docker-runner@host-1","started_at":"2025-03-01T12:00:00Z","finished_at":"2025-03-01T12:00:03Z",` +
			`"stdout_tail":"Step 4/7 : RUN npm ci\nadded 312 packages in 4s\nSuccessfully built 3f2a9c1b7d"}`),
		ReceivedAt: now,
	}
}

func benchRecords() int {
	if v, err := strconv.Atoi(os.Getenv("ANSFLOW_AUDIT_BENCH_RECORDS")); err == nil && v > 0 {
		return v
	}
	return 1_000_000
}

var (
	bigOnce sync.Once
	bigDir  string
	bigErr  error
	bigPath string
)

// bigStore returns the shared benchmark database, building it on first use.
func bigStore(b *testing.B) *SQLite {
	b.Helper()
	bigOnce.Do(func() {
		if bigPath = os.Getenv("ANSFLOW_AUDIT_BENCH_DB"); bigPath != "" {
			if _, err := os.Stat(bigPath); err == nil {
				return
			}
		} else {
			if bigDir, bigErr = os.MkdirTemp("", "audit-bench-"); bigErr != nil {
				return
			}
			bigPath = filepath.Join(bigDir, "audit.db")
		}
		s, err := OpenSQLite(context.Background(), bigPath)
		if err != nil {
			bigErr = err
			return
		}
		defer s.Close()
		start, n, now := time.Now(), benchRecords(), time.Now()
		const batch = 5000
		for i := 0; i < n; i += batch {
			rs := make([]Record, 0, batch)
			for j := i; j < min(i+batch, n); j++ {
				rs = append(rs, benchRecord(j, now))
			}
			if _, err := s.Append(context.Background(), rs); err != nil {
				bigErr = err
				return
			}
		}
		fmt.Fprintf(os.Stderr, "built %d-record benchmark store in %s\n", n, time.Since(start).Round(time.Millisecond))
	})
	if bigErr != nil {
		b.Fatalf("build benchmark store: %v", bigErr)
	}
	s, err := OpenSQLite(context.Background(), bigPath)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bigDir != "" {
		os.RemoveAll(bigDir)
	}
	os.Exit(code)
}

// BenchmarkSQLiteIngest appends batches of 500 records, each batch one
// transaction, into a new store (at least 20,000 records).
func BenchmarkSQLiteIngest(b *testing.B) {
	s, err := OpenSQLite(context.Background(), filepath.Join(b.TempDir(), "audit.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	benchIngest(b, s)
}

// BenchmarkPostgresIngest is BenchmarkSQLiteIngest on PostgreSQL; it runs
// when ANSFLOW_TEST_POSTGRES_DSN is set.
func BenchmarkPostgresIngest(b *testing.B) {
	if os.Getenv(PostgresDSNEnv) == "" {
		b.Skipf("%s is not set", PostgresDSNEnv)
	}
	s, err := OpenPostgres(context.Background(), freshSchema(b))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	benchIngest(b, s)
}

func benchIngest(b *testing.B, s Store) {
	const batch = 500
	n := max(b.N, 20000)
	now := time.Now()
	rs := make([]Record, 0, batch)
	b.ResetTimer()
	start, cpu := time.Now(), cpuTime()
	for i := 0; i < n; i += batch {
		rs = rs[:0]
		for j := i; j < min(i+batch, n); j++ {
			rs = append(rs, benchRecord(j, now))
		}
		if _, err := s.Append(context.Background(), rs); err != nil {
			b.Fatal(err)
		}
	}
	el := time.Since(start)
	b.ReportMetric(float64(n)/el.Seconds(), "events/s")
	b.ReportMetric(float64(cpuTime()-cpu)/1e3/float64(n), "cpu-µs/event")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkSQLiteQueryByRun1M queries whole runs (one page of 100) at
// random from the shared database and reports latency percentiles.
func BenchmarkSQLiteQueryByRun1M(b *testing.B) {
	s := bigStore(b)
	runs := benchRecords() / benchRunEvents
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	q := max(b.N, 2000)
	lat := make([]time.Duration, 0, q)
	b.ResetTimer()
	for range q {
		run := "run-" + strconv.Itoa(rng.IntN(runs))
		t := time.Now()
		p, err := s.Query(ctx, Filter{RunID: run, Limit: 100})
		lat = append(lat, time.Since(t))
		if err != nil || len(p.Records) == 0 {
			b.Fatalf("query %s: %d records, %v", run, len(p.Records), err)
		}
	}
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))]) / 1e6 }
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkSQLiteVerify1M verifies the whole shared database.
func BenchmarkSQLiteVerify1M(b *testing.B) {
	s := bigStore(b)
	b.ResetTimer()
	for b.Loop() {
		t, cpu := time.Now(), cpuTime()
		res, err := s.Verify(context.Background())
		if err != nil || !res.OK {
			b.Fatalf("Verify = %+v, %v", res, err)
		}
		b.ReportMetric(time.Since(t).Seconds(), "s/verify")
		b.ReportMetric((cpuTime() - cpu).Seconds(), "cpu-s/verify")
		b.ReportMetric(float64(res.Records)/time.Since(t).Seconds(), "records/s")
	}
}
