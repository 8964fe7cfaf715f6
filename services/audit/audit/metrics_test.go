package audit

import (
	"testing"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/metrics"
	"github.com/ansflow/ansflow/pkg/metrics/metricstest"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/services/audit/store"
)

// TestIngestIsMeasured records a run's events through a store that fails
// its first batch: the records stored are counted by stream (a republished
// duplicate is not), the batch the store refused comes back as
// redeliveries, and its records' ingest lag includes the second it waited.
func TestIngestIsMeasured(t *testing.T) {
	ns := natstest.Run(t)
	m := metrics.New(metrics.Options{PipelineLabel: true})
	fs := &flakyStore{Store: openStore(t, t.TempDir())}
	fs.failures.Store(1)
	r := start(t, ns.JS, fs, Config{Metrics: m})
	subjects, events := runEvents(t, "run-m")
	for i := range events {
		publish(t, ns.JS, subjects[i], events[i])
	}
	want := len(events) - 1 // the log chunk is not recorded by default
	eventually(t, "every event stored", func() bool { return len(records(t, fs, store.Filter{})) == want })

	received := r.svc.Stats().Received
	for i := range events {
		publishAgain(t, ns.JS, subjects[i], events[i])
	}
	eventually(t, "the duplicates received", func() bool { return r.svc.Stats().Received >= received+uint64(want) })

	total, lagged := 0.0, uint64(0)
	for _, stream := range []string{event.StreamSteps, event.StreamEvents} {
		l := metricstest.Labels{metrics.LabelStream: stream}
		n := 0
		for _, rec := range records(t, fs, store.Filter{}) {
			if rec.Stream == stream {
				n++
			}
		}
		if got := metricstest.Value(t, m, metrics.AuditRecordsIngested, l); got != float64(n) || n == 0 {
			t.Errorf("records ingested from %s = %v, want %d (the duplicates not counted)", stream, got, n)
		}
		total += metricstest.Value(t, m, metrics.AuditRecordsIngested, l)
		s, _ := metricstest.Get(t, m, metrics.AuditIngestLag, l)
		lagged += s.Count
	}
	if total != float64(want) {
		t.Errorf("%v records counted, want %d", total, want)
	}
	if lagged < uint64(want) {
		t.Errorf("ingest lag observed %d times, want at least once per record (%d)", lagged, want)
	}
	all, _ := metricstest.Get(t, m, metrics.AuditIngestLag, nil)
	if slow := all.Count - all.Buckets[0.5]; slow == 0 || all.Sum < 0.9 {
		t.Errorf("ingest lag %v buckets %v: the refused batch waited about 1s and should show as such", all, all.Buckets)
	}
	if got := metricstest.Value(t, m, metrics.Redeliveries, nil); got < 1 {
		t.Errorf("redeliveries = %v, want the refused batch counted", got)
	}
	metricstest.Lint(t, m)
}
