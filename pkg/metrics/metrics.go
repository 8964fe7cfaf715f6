// Package metrics holds every Prometheus metric family AnsFlow exposes, as
// one typed definition ([Families]: name, type, help, labels, buckets), and
// builds them per process into a registry of its own.
//
// A component takes a *[Metrics] in its Config and calls its methods; every
// method of a nil *Metrics does nothing, so a component built without
// metrics (most tests) runs unchanged. The families are never registered in
// Prometheus' global default registry: tests start many services in one
// process, and each gets its own [New].
//
// docs/operations.md's metrics reference is generated from [Families]
// (go generate ./pkg/metrics) and checked against it by a test.
package metrics

//go:generate go test -run TestOperationsReference -update .

import (
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Type is the kind of a metric family.
type Type string

// Metric types used by AnsFlow.
const (
	Counter   Type = "counter"
	Gauge     Type = "gauge"
	Histogram Type = "histogram"
)

// Family is the one definition of a metric family: what the registry
// exposes and what the docs list.
type Family struct {
	// Name is the full metric name (ansflow_...).
	Name string
	// Type is counter, gauge or histogram.
	Type Type
	// Help is the HELP text, a sentence in the docs too.
	Help string
	// Labels are the family's label names, in order.
	Labels []string
	// Buckets are a histogram's upper bounds, in seconds.
	Buckets []float64
	// Service names who exposes it, for the docs.
	Service string
}

// Label names shared by several families.
const (
	LabelPipeline = "pipeline"
	LabelStatus   = "status"
	LabelType     = "type"
	LabelKind     = "kind"
	LabelPool     = "pool"
	LabelProvider = "provider"
	LabelOutcome  = "outcome"
	LabelChannel  = "channel"
	LabelForge    = "forge"
	LabelStream   = "stream"
)

// Metric names, one per family in [Families].
const (
	RunsStarted            = "ansflow_runs_started_total"
	RunsFinished           = "ansflow_runs_finished_total"
	RunDuration            = "ansflow_run_duration_seconds"
	StepDuration           = "ansflow_step_duration_seconds"
	StepQueueWait          = "ansflow_step_queue_wait_seconds"
	StepsQueued            = "ansflow_steps_queued"
	PoolRunnersOnline      = "ansflow_pool_runners_online"
	PoolSlots              = "ansflow_pool_slots"
	PoolSlotsBusy          = "ansflow_pool_slots_busy"
	RunnerSlots            = "ansflow_runner_slots"
	RunnerSlotsBusy        = "ansflow_runner_slots_busy"
	OrchestrationLatency   = "ansflow_orchestration_latency_seconds"
	WebhookDeliveries      = "ansflow_webhook_deliveries_total"
	NotificationDeliveries = "ansflow_notification_deliveries_total"
	CommitStatusDeliveries = "ansflow_commit_status_deliveries_total"
	AuditRecordsIngested   = "ansflow_audit_records_ingested_total"
	AuditIngestLag         = "ansflow_audit_ingest_lag_seconds"
	Redeliveries           = "ansflow_redeliveries_total"
	DeadLetters            = "ansflow_dead_letters_total"
)

const (
	pipelineSvc = "pipeline"
	runnerSvc   = "docker-runner, k8s-runner"
	auditSvc    = "audit"
	everySvc    = "every service"
)

// Families lists every AnsFlow metric family, in the order of the docs.
var Families = []Family{
	{Name: RunsStarted, Type: Counter, Service: pipelineSvc, Labels: []string{LabelPipeline},
		Help: "Runs created, by pipeline."},
	{Name: RunsFinished, Type: Counter, Service: pipelineSvc, Labels: []string{LabelPipeline, LabelStatus},
		Help: "Runs that ended, by pipeline and final status (succeeded, failed, cancelled)."},
	{Name: RunDuration, Type: Histogram, Service: pipelineSvc, Labels: []string{LabelPipeline, LabelStatus},
		Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400},
		Help:    "Time from a run's creation to its end, in seconds, by pipeline and final status."},
	{Name: StepDuration, Type: Histogram, Service: runnerSvc, Labels: []string{LabelType, LabelStatus},
		Buckets: []float64{0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600},
		Help:    "Time a runner spent on one step attempt, from its claim to its completion, in seconds, by step type and status."},
	{Name: StepQueueWait, Type: Histogram, Service: runnerSvc, Labels: []string{LabelKind, LabelPool},
		Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800},
		Help:    "Time from a step attempt's request to its claim by a runner, in seconds, by kind and pool."},
	{Name: StepsQueued, Type: Gauge, Service: pipelineSvc, Labels: []string{LabelKind, LabelPool},
		Help: "Steps dispatched and not yet claimed by a runner, by kind and pool, counted over every run in the runs bucket (every pipeline instance reports the same figure)."},
	{Name: PoolRunnersOnline, Type: Gauge, Service: pipelineSvc, Labels: []string{LabelKind, LabelPool},
		Help: "Runners online, by kind and pool, from the runners bucket (every pipeline instance reports the same figure)."},
	{Name: PoolSlots, Type: Gauge, Service: pipelineSvc, Labels: []string{LabelKind, LabelPool},
		Help: "Slots of the runners online, by kind and pool, from the runners bucket."},
	{Name: PoolSlotsBusy, Type: Gauge, Service: pipelineSvc, Labels: []string{LabelKind, LabelPool},
		Help: "Slots busy as the runners online last announced, by kind and pool, from the runners bucket."},
	{Name: RunnerSlots, Type: Gauge, Service: runnerSvc, Labels: []string{LabelKind, LabelPool},
		Help: "This runner's slots, by kind and pool."},
	{Name: RunnerSlotsBusy, Type: Gauge, Service: runnerSvc, Labels: []string{LabelKind, LabelPool},
		Help: "This runner's slots executing a step now, by kind and pool."},
	{Name: OrchestrationLatency, Type: Histogram, Service: pipelineSvc,
		Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10},
		Help:    "Time from receiving a step's completion to publishing the request of a step it made due, in seconds."},
	{Name: WebhookDeliveries, Type: Counter, Service: pipelineSvc, Labels: []string{LabelProvider, LabelOutcome},
		Help: "Webhook deliveries received, by provider (github, gitlab, gitea, other) and outcome (accepted, duplicate, ignored, rejected, failed)."},
	{Name: NotificationDeliveries, Type: Counter, Service: pipelineSvc, Labels: []string{LabelChannel, LabelOutcome},
		Help: "Notifications of finished runs sent, by channel (webhook, slack, email) and outcome (delivered, failed), once per notification after its retries."},
	{Name: CommitStatusDeliveries, Type: Counter, Service: pipelineSvc, Labels: []string{LabelForge, LabelOutcome},
		Help: "Commit statuses posted to forges, by forge (github, gitlab, gitea) and outcome (posted, failed), once per status after its retries."},
	{Name: AuditRecordsIngested, Type: Counter, Service: auditSvc, Labels: []string{LabelStream},
		Help: "Audit records stored, by stream; a redelivered duplicate is not counted."},
	{Name: AuditIngestLag, Type: Histogram, Service: auditSvc, Labels: []string{LabelStream},
		Buckets: []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600},
		Help:    "Time from an event's publication (its stream timestamp) to its record being stored, in seconds, by stream."},
	{Name: Redeliveries, Type: Counter, Service: everySvc, Labels: []string{LabelStream},
		Help: "Messages delivered again to a consumer of this process (a retry, a lapsed ack wait, a takeover), by stream."},
	{Name: DeadLetters, Type: Counter, Service: everySvc, Labels: []string{LabelStream},
		Help: "Messages a consumer of this process copied to ANSFLOW_DLQ and terminated, by the stream they came from."},
}

// Options configures [New].
type Options struct {
	// PipelineLabel keeps the pipeline label's values. When false (the
	// --metrics-pipeline-label=false of the services), the label is still
	// there but always empty, which Prometheus treats as absent: the run
	// families then have one series per status instead of one per
	// pipeline and status.
	PipelineLabel bool
}

// PoolStat is one pool's figures at a scrape, as the pipeline service
// knows them.
type PoolStat struct {
	Kind, Pool                  string
	Queued, Online, Slots, Busy int
}

// PoolSource returns the current figures of every pool known; it is
// called at each scrape and must be safe for concurrent use.
type PoolSource func() []PoolStat

// Metrics is one process's metric families. Create it with [New]; a nil
// *Metrics accepts every call and records nothing. It is safe for
// concurrent use.
type Metrics struct {
	reg      *prometheus.Registry
	pipeline bool

	counters   map[string]*prometheus.CounterVec
	gauges     map[string]*prometheus.GaugeVec
	histograms map[string]*prometheus.HistogramVec
	latency    prometheus.Histogram

	mu    sync.Mutex
	pools PoolSource
}

// poolFamilies are the gauges [PoolSource] feeds at scrape time.
var poolFamilies = []string{StepsQueued, PoolRunnersOnline, PoolSlots, PoolSlotsBusy}

// New builds every family of [Families] into a new registry, with the Go
// runtime and process collectors beside them.
func New(o Options) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), pipeline: o.PipelineLabel,
		counters: map[string]*prometheus.CounterVec{}, gauges: map[string]*prometheus.GaugeVec{},
		histograms: map[string]*prometheus.HistogramVec{}}
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	scraped := map[string]bool{}
	for _, n := range poolFamilies {
		scraped[n] = true
	}
	for _, f := range Families {
		switch {
		case scraped[f.Name]:
			// collected from the PoolSource by poolCollector
		case f.Type == Counter:
			v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: f.Name, Help: f.Help}, f.Labels)
			m.counters[f.Name] = v
			m.reg.MustRegister(v)
		case f.Type == Gauge:
			v := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: f.Name, Help: f.Help}, f.Labels)
			m.gauges[f.Name] = v
			m.reg.MustRegister(v)
		case f.Type == Histogram && len(f.Labels) == 0:
			m.latency = prometheus.NewHistogram(prometheus.HistogramOpts{Name: f.Name, Help: f.Help, Buckets: f.Buckets})
			m.reg.MustRegister(m.latency)
		case f.Type == Histogram:
			v := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: f.Name, Help: f.Help, Buckets: f.Buckets}, f.Labels)
			m.histograms[f.Name] = v
			m.reg.MustRegister(v)
		}
	}
	m.reg.MustRegister(poolCollector{m})
	return m
}

// Registry is the process's registry, for a caller that registers more
// collectors or gathers directly.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus exposition formats. The
// lead's ops listener serves it on /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

func (m *Metrics) pipelineValue(p string) string {
	if m.pipeline {
		return p
	}
	return ""
}

func seconds(d time.Duration) float64 { return max(d.Seconds(), 0) }

// RunStarted counts a new run of pipeline.
func (m *Metrics) RunStarted(pipeline string) {
	if m == nil {
		return
	}
	m.counters[RunsStarted].WithLabelValues(m.pipelineValue(pipeline)).Inc()
}

// RunFinished counts a run of pipeline that ended with status after d.
func (m *Metrics) RunFinished(pipeline, status string, d time.Duration) {
	if m == nil {
		return
	}
	p := m.pipelineValue(pipeline)
	m.counters[RunsFinished].WithLabelValues(p, status).Inc()
	m.histograms[RunDuration].WithLabelValues(p, status).Observe(seconds(d))
}

// StepFinished records a step attempt of step type typ that a runner ended
// with status after d.
func (m *Metrics) StepFinished(typ, status string, d time.Duration) {
	if m == nil {
		return
	}
	m.histograms[StepDuration].WithLabelValues(typ, status).Observe(seconds(d))
}

// StepClaimed records that a runner claimed a step of kind and pool wait
// after it was requested.
func (m *Metrics) StepClaimed(kind, pool string, wait time.Duration) {
	if m == nil {
		return
	}
	m.histograms[StepQueueWait].WithLabelValues(kind, pool).Observe(seconds(wait))
}

// RunnerSlots sets this runner's slots and how many of them are busy for
// kind and pool.
func (m *Metrics) RunnerSlots(kind, pool string, slots, busy int) {
	if m == nil {
		return
	}
	m.gauges[RunnerSlots].WithLabelValues(kind, pool).Set(float64(slots))
	m.gauges[RunnerSlotsBusy].WithLabelValues(kind, pool).Set(float64(busy))
}

// SetPoolSource makes src feed the pool gauges (queued steps, runners
// online, slots) at every scrape; a later call replaces it, nil removes it.
func (m *Metrics) SetPoolSource(src PoolSource) {
	if m == nil {
		return
	}
	m.mu.Lock()
	m.pools = src
	m.mu.Unlock()
}

// Orchestrated records the time from a completion's receipt to the publish
// of a request it made due.
func (m *Metrics) Orchestrated(d time.Duration) {
	if m == nil {
		return
	}
	m.latency.Observe(seconds(d))
}

// WebhookProviders are the provider label's values; any other provider in
// a delivery's URL counts as "other", so an unauthenticated caller cannot
// grow the series.
var WebhookProviders = []string{"github", "gitlab", "gitea"}

// WebhookDelivery counts a webhook delivery of provider answered outcome.
func (m *Metrics) WebhookDelivery(provider, outcome string) {
	if m == nil {
		return
	}
	known := false
	for _, p := range WebhookProviders {
		known = known || p == provider
	}
	if !known {
		provider = "other"
	}
	m.counters[WebhookDeliveries].WithLabelValues(provider, outcome).Inc()
}

// NotificationDelivery counts a notification over channel that ended with
// outcome.
func (m *Metrics) NotificationDelivery(channel, outcome string) {
	if m == nil {
		return
	}
	m.counters[NotificationDeliveries].WithLabelValues(channel, outcome).Inc()
}

// CommitStatusDelivery counts a commit status to forge that ended with
// outcome.
func (m *Metrics) CommitStatusDelivery(forge, outcome string) {
	if m == nil {
		return
	}
	m.counters[CommitStatusDeliveries].WithLabelValues(forge, outcome).Inc()
}

// AuditIngested counts n records of stream stored.
func (m *Metrics) AuditIngested(stream string, n int) {
	if m == nil || n <= 0 {
		return
	}
	m.counters[AuditRecordsIngested].WithLabelValues(stream).Add(float64(n))
}

// AuditLag records that a message of stream was stored lag after it was
// published.
func (m *Metrics) AuditLag(stream string, lag time.Duration) {
	if m == nil {
		return
	}
	m.histograms[AuditIngestLag].WithLabelValues(stream).Observe(seconds(lag))
}

// Redelivered counts a message of stream delivered more than once.
func (m *Metrics) Redelivered(stream string) {
	if m == nil {
		return
	}
	m.counters[Redeliveries].WithLabelValues(stream).Inc()
}

// DeadLettered counts a message of stream sent to the dead-letter stream.
func (m *Metrics) DeadLettered(stream string) {
	if m == nil {
		return
	}
	m.counters[DeadLetters].WithLabelValues(stream).Inc()
}

// poolCollector turns the [PoolSource] into the pool gauges at each scrape.
type poolCollector struct{ m *Metrics }

func poolDesc(name string) *prometheus.Desc {
	for _, f := range Families {
		if f.Name == name {
			return prometheus.NewDesc(f.Name, f.Help, f.Labels, nil)
		}
	}
	panic("metrics: no family " + name)
}

var poolDescs = func() map[string]*prometheus.Desc {
	out := map[string]*prometheus.Desc{}
	for _, n := range poolFamilies {
		out[n] = poolDesc(n)
	}
	return out
}()

// Describe sends the pool gauges' descriptions.
func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, n := range poolFamilies {
		ch <- poolDescs[n]
	}
}

// Collect asks the pool source for its figures.
func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.mu.Lock()
	src := c.m.pools
	c.m.mu.Unlock()
	if src == nil {
		return
	}
	stats := src()
	sort.Slice(stats, func(i, j int) bool {
		if stats[i].Kind != stats[j].Kind {
			return stats[i].Kind < stats[j].Kind
		}
		return stats[i].Pool < stats[j].Pool
	})
	seen := map[[2]string]bool{}
	for _, s := range stats {
		k := [2]string{s.Kind, s.Pool}
		if seen[k] {
			continue // a duplicate would fail the whole scrape
		}
		seen[k] = true
		for n, v := range map[string]int{StepsQueued: s.Queued, PoolRunnersOnline: s.Online, PoolSlots: s.Slots, PoolSlotsBusy: s.Busy} {
			ch <- prometheus.MustNewConstMetric(poolDescs[n], prometheus.GaugeValue, float64(v), s.Kind, s.Pool)
		}
	}
}
