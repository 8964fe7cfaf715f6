// Package metricstest reads figures out of a [metrics.Metrics] for tests:
// a counter's or gauge's value, a histogram's count and sum, by labels,
// and a lint of the whole exposition.
package metricstest

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/ansflow/ansflow/pkg/metrics"
)

// Labels selects a series: every label given must match; labels not given
// may have any value.
type Labels map[string]string

// Sample is one series' figures: Value for counters and gauges, Count and
// Sum for histograms.
type Sample struct {
	Value, Sum float64
	Count      uint64
	// Buckets maps a histogram's upper bounds to cumulative counts.
	Buckets map[float64]uint64
}

// Get sums the series of family name whose labels match want; found is
// false when none matches.
func Get(t testing.TB, m *metrics.Metrics, name string, want Labels) (s Sample, found bool) {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, mt := range mf.GetMetric() {
			if !matches(mt, want) {
				continue
			}
			found = true
			switch {
			case mt.Counter != nil:
				s.Value += mt.Counter.GetValue()
			case mt.Gauge != nil:
				s.Value += mt.Gauge.GetValue()
			case mt.Histogram != nil:
				s.Count += mt.Histogram.GetSampleCount()
				s.Sum += mt.Histogram.GetSampleSum()
				if s.Buckets == nil {
					s.Buckets = map[float64]uint64{}
				}
				for _, b := range mt.Histogram.GetBucket() {
					s.Buckets[b.GetUpperBound()] += b.GetCumulativeCount()
				}
			}
		}
	}
	return s, found
}

func matches(mt *dto.Metric, want Labels) bool {
	n := 0
	for _, lp := range mt.GetLabel() {
		if v, ok := want[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}

// Value is the summed value of the matching counter or gauge series, 0
// when none matches.
func Value(t testing.TB, m *metrics.Metrics, name string, want Labels) float64 {
	t.Helper()
	s, _ := Get(t, m, name, want)
	return s.Value
}

// WaitFor polls until cond holds for the family's matching series or
// fails the test after d, saying what it last saw.
func WaitFor(t testing.TB, m *metrics.Metrics, name string, want Labels, d time.Duration, what string, cond func(Sample) bool) Sample {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		s, _ := Get(t, m, name, want)
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s%v: %s not reached within %s; last %+v", name, want, what, d, s)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition with a deadline
	}
}

// Lint fails the test for every promlint problem in m's exposition.
func Lint(t testing.TB, m *metrics.Metrics) {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatalf("lint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// String formats a sample for messages.
func (s Sample) String() string {
	return fmt.Sprintf("value=%v count=%d sum=%v", s.Value, s.Count, s.Sum)
}
