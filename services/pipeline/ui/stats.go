package ui

import (
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// parseSpan reads a window such as 24h, 90m or 7d (days).
func parseSpan(s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil || days <= 0 || days > 3660 {
			return 0, fmt.Errorf("window %q: want a whole number of days", s)
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}
	return time.ParseDuration(s)
}

// statWindows are the windows the statistics page offers.
var statWindows = []string{"24h", "7d", "30d"}

// statRow sums up the runs of a pipeline, or the steps of a step type,
// within the window.
type statRow struct {
	Name string
	// Count is how many finished (succeeded or failed); Failed how many
	// of them failed.
	Count, Failed int
	FailRate      float64
	P50, P95      time.Duration
	// QueueP50 and QueueP95 are the waits from dispatch to a runner's
	// start (of the steps, for a pipeline: of its runs' steps).
	QueueP50, QueueP95 time.Duration
}

// sample collects one row's figures.
type sample struct {
	count, failed int
	durations     []time.Duration
	waits         []time.Duration
}

func (s *sample) row(name string) statRow {
	r := statRow{Name: name, Count: s.count, Failed: s.failed}
	if s.count > 0 {
		r.FailRate = float64(s.failed) / float64(s.count)
	}
	r.P50, r.P95 = percentile(s.durations, 0.50), percentile(s.durations, 0.95)
	r.QueueP50, r.QueueP95 = percentile(s.waits, 0.50), percentile(s.waits, 0.95)
	return r
}

// percentile is the nearest-rank percentile p of ds (0 for none).
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	rank := int(p*float64(len(s))+0.999999) - 1
	return s[min(max(rank, 0), len(s)-1)]
}

type statsData struct {
	layout
	Window, Pipeline string
	Windows          []string
	Pipelines        []string
	ByPipeline       []statRow
	ByStepType       []statRow
	// Charts drawn on the server.
	Activity  columnChart
	Failures  barChart
	Durations barChart
	Waits     barChart
}

func (s *Server) statsPage(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	window := q.Get("window")
	if window == "" {
		window = "7d"
	}
	span, err := parseSpan(window)
	if err != nil || span <= 0 {
		http.Error(w, "400 Bad Request: window: want a duration such as 24h, 7d or 30d", http.StatusBadRequest)
		return
	}
	runs, err := s.st.ListRuns(r.Context(), store.RunFilter{})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	runs = visible(r, runs)
	now := s.now()
	from := now.Add(-span)
	pipeline := q.Get("pipeline")
	d := statsData{layout: s.frame(r, "Statistics", "stats", ""), Window: window, Pipeline: pipeline, Windows: statWindows}
	names := map[string]bool{}
	byPipeline, byType := map[string]*sample{}, map[string]*sample{}
	get := func(m map[string]*sample, k string) *sample {
		if m[k] == nil {
			m[k] = &sample{}
		}
		return m[k]
	}
	buckets, bucketSize := activityBuckets(span)
	// Columns are whole hours or UTC days, the last one the current.
	first := now.Truncate(bucketSize).Add(-time.Duration(buckets-1) * bucketSize)
	ok, failed := make([]int, buckets), make([]int, buckets)
	for _, run := range runs {
		names[run.Pipeline] = true
		if run.CreatedAt.Before(from) || (pipeline != "" && spec.Slug(run.Pipeline) != spec.Slug(pipeline)) {
			continue
		}
		ps := get(byPipeline, run.Pipeline)
		if run.Status == event.StatusSucceeded || run.Status == event.StatusFailed {
			ps.count++
			b := min(max(int(run.CreatedAt.Sub(first)/bucketSize), 0), buckets-1)
			if run.Status == event.StatusFailed {
				ps.failed++
				failed[b]++
			} else {
				ok[b]++
			}
			if run.StartedAt != nil && run.FinishedAt != nil {
				ps.durations = append(ps.durations, run.FinishedAt.Sub(*run.StartedAt))
			}
		}
		for _, st := range run.Steps {
			ts := get(byType, st.Type)
			if st.StartedAt != nil {
				wait := time.Duration(st.QueueSeconds * float64(time.Second))
				ts.waits = append(ts.waits, wait)
				ps.waits = append(ps.waits, wait)
			}
			if st.Status != event.StatusSucceeded && st.Status != event.StatusFailed {
				continue
			}
			ts.count++
			if st.Status == event.StatusFailed {
				ts.failed++
			}
			if st.StartedAt != nil && st.FinishedAt != nil {
				ts.durations = append(ts.durations, st.FinishedAt.Sub(*st.StartedAt))
			}
		}
	}
	d.Pipelines = sortedKeys(names)
	for _, k := range sortedSampleKeys(byPipeline) {
		d.ByPipeline = append(d.ByPipeline, byPipeline[k].row(k))
	}
	for _, k := range sortedSampleKeys(byType) {
		d.ByStepType = append(d.ByStepType, byType[k].row(k))
	}
	d.Activity = newColumnChart(ok, failed, first, bucketSize)
	d.Failures = newBarChart(d.ByPipeline, func(r statRow) (float64, float64, string) {
		return r.FailRate, 0, fmt.Sprintf("%.0f%% of %d", r.FailRate*100, r.Count)
	})
	d.Durations = newBarChart(d.ByPipeline, func(r statRow) (float64, float64, string) {
		return r.P50.Seconds(), r.P95.Seconds(), "p50 " + formatDuration(r.P50) + " · p95 " + formatDuration(r.P95)
	})
	d.Waits = newBarChart(d.ByStepType, func(r statRow) (float64, float64, string) {
		return r.QueueP50.Seconds(), r.QueueP95.Seconds(), "p50 " + formatDuration(r.QueueP50) + " · p95 " + formatDuration(r.QueueP95)
	})
	s.render(w, "stats", d)
}

func sortedSampleKeys(m map[string]*sample) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// activityBuckets splits a window into the activity chart's columns: hours
// for a day or less, else days.
func activityBuckets(span time.Duration) (int, time.Duration) {
	size := 24 * time.Hour
	if span <= 24*time.Hour {
		size = time.Hour
	}
	return max(int((span+size-1)/size), 1), size
}

// columnChart is a stacked column per time bucket: succeeded below, failed
// above, each column labelled with its counts in its title.
type columnChart struct {
	Width, Height int
	Columns       []column
	// Max is the tallest column's count; Labels mark the time axis.
	Max    int
	Labels []axisLabel
}

type column struct {
	X, W                   int
	OkY, OkH, FailY, FailH int
	Title                  string
}

type axisLabel struct {
	X    int
	Text string
}

func newColumnChart(ok, failed []int, from time.Time, size time.Duration) columnChart {
	const width, height, base = 720, 160, 140
	c := columnChart{Width: width, Height: height}
	for i := range ok {
		c.Max = max(c.Max, ok[i]+failed[i])
	}
	n := len(ok)
	cw := width / n
	for i := range ok {
		col := column{X: i*cw + 1, W: max(cw-2, 1)}
		scale := 0.0
		if c.Max > 0 {
			scale = float64(base-10) / float64(c.Max)
		}
		col.OkH = int(float64(ok[i]) * scale)
		col.FailH = int(float64(failed[i]) * scale)
		col.OkY = base - col.OkH
		col.FailY = col.OkY - col.FailH
		start := from.Add(time.Duration(i) * size)
		layout := "Jan 2"
		if size < 24*time.Hour {
			layout = "15:04"
		}
		col.Title = fmt.Sprintf("%s: %d succeeded, %d failed", start.Format(layout), ok[i], failed[i])
		c.Columns = append(c.Columns, col)
		if every := max(n/6, 1); i%every == 0 {
			c.Labels = append(c.Labels, axisLabel{X: i*cw + 2, Text: start.Format(layout)})
		}
	}
	return c
}

// barChart is one horizontal bar per row: a darker bar for the first value
// and, when set, a lighter one behind it for the second (p50 and p95), the
// text beside them.
type barChart struct {
	Width, Height int
	Bars          []bar
}

type bar struct {
	Label, Text string
	Y, W1, W2   int
	TextX       int
}

// Bar chart geometry.
const (
	barLabelW = 150
	barMaxW   = 380
	barH      = 18
	barGap    = 8
)

func newBarChart(rows []statRow, value func(statRow) (float64, float64, string)) barChart {
	c := barChart{Width: barLabelW + barMaxW + 220}
	top := 0.0
	for _, r := range rows {
		a, b, _ := value(r)
		top = max(top, a, b)
	}
	for i, r := range rows {
		a, b, text := value(r)
		bb := bar{Label: r.Name, Text: text, Y: i * (barH + barGap)}
		if top > 0 {
			bb.W1 = int(a / top * barMaxW)
			bb.W2 = int(b / top * barMaxW)
		}
		bb.TextX = barLabelW + max(bb.W1, bb.W2) + 8
		if len(bb.Label) > 22 {
			bb.Label = bb.Label[:21] + "…"
		}
		c.Bars = append(c.Bars, bb)
	}
	c.Height = max(len(rows)*(barH+barGap), barH)
	return c
}
