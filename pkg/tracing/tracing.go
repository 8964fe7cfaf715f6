// Package tracing is AnsFlow's OpenTelemetry tracing: one [Start] per
// process that configures OTLP export from the standard OTEL_* environment
// variables (off unless an endpoint is set), the W3C trace context carried
// in CloudEvents as the distributed-tracing extension attributes
// traceparent and tracestate ([Inject], [Extract]), and an HTTP transport
// that traces outgoing calls ([Transport]).
//
// Tracing is off by default. While it is off every function here returns
// at once without allocating: no span is started, nothing is injected into
// events and [Transport] returns its argument unchanged.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// CloudEvents extension attributes of the distributed-tracing extension.
const (
	ExtTraceParent = "traceparent"
	ExtTraceState  = "tracestate"
)

// InstrumentationName names AnsFlow's tracer.
const InstrumentationName = "github.com/ansflow/ansflow"

// enabled is set by [Start] when spans are exported.
var enabled atomic.Bool

// propagator is the W3C trace context, which [Inject] and [Extract] use
// whatever the global propagator is.
var propagator = propagation.TraceContext{}

// Enabled reports whether this process exports spans.
func Enabled() bool { return enabled.Load() }

// Tracer is AnsFlow's tracer from the global provider: a no-op one while
// tracing is off.
func Tracer() trace.Tracer {
	if !enabled.Load() {
		return noopTracer
	}
	return otel.Tracer(InstrumentationName)
}

var noopTracer = noop.NewTracerProvider().Tracer(InstrumentationName)

// ErrProtocol is returned by [Start] for an OTLP protocol other than
// http/protobuf.
var ErrProtocol = errors.New("unsupported OTLP protocol")

// Config is what [Start] reads from the environment.
type Config struct {
	// Enabled is true when an OTLP endpoint is set or
	// OTEL_TRACES_EXPORTER is otlp, and OTEL_SDK_DISABLED is not true.
	Enabled bool
	// Protocol is OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or
	// OTEL_EXPORTER_OTLP_PROTOCOL (default http/protobuf).
	Protocol string
}

// ConfigFromEnv reads the OTEL_* variables through lookup. It fails for an
// exporter or protocol AnsFlow does not support, rather than exporting
// nothing silently.
func ConfigFromEnv(lookup func(string) (string, bool)) (Config, error) {
	get := func(k string) string { v, _ := lookup(k); return strings.TrimSpace(v) }
	var c Config
	if strings.EqualFold(get("OTEL_SDK_DISABLED"), "true") {
		return c, nil
	}
	exporter := strings.ToLower(get("OTEL_TRACES_EXPORTER"))
	switch exporter {
	case "", "otlp":
	case "none":
		return c, nil
	default:
		return c, fmt.Errorf("OTEL_TRACES_EXPORTER=%q: AnsFlow exports traces with otlp only (or none)", exporter)
	}
	c.Enabled = exporter == "otlp" || get("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
	c.Protocol = get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if c.Protocol == "" {
		c.Protocol = get("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	if c.Protocol == "" {
		c.Protocol = "http/protobuf"
	}
	if c.Enabled && c.Protocol != "http/protobuf" {
		return c, fmt.Errorf("OTLP protocol %q: %w (AnsFlow exports with http/protobuf)", c.Protocol, ErrProtocol)
	}
	return c, nil
}

// Start configures tracing for the process of service (its service.name
// unless OTEL_SERVICE_NAME is set) from the OTEL_* environment variables
// and returns the function that flushes and stops it. While tracing is off
// (no OTLP endpoint set, or OTEL_SDK_DISABLED=true) it changes nothing and
// stop does nothing. Otherwise it sets the global TracerProvider, which
// exports in batches over OTLP http/protobuf and samples as
// OTEL_TRACES_SAMPLER says, and the W3C trace context propagator. Start is
// meant to be called once, by main; an error means the configuration is
// wrong and the process should not start.
func Start(ctx context.Context, service string) (stop func(context.Context) error, err error) {
	nothing := func(context.Context) error { return nil }
	cfg, err := ConfigFromEnv(os.LookupEnv)
	if err != nil || !cfg.Enabled {
		return nothing, err
	}
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nothing, fmt.Errorf("tracing: OTLP exporter: %w", err)
	}
	// The service name is the default; OTEL_SERVICE_NAME and
	// OTEL_RESOURCE_ATTRIBUTES (read by resource.WithFromEnv) win.
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(service)),
		resource.WithFromEnv(), resource.WithTelemetrySDK(), resource.WithHost(), resource.WithProcessPID())
	if err != nil {
		return nothing, fmt.Errorf("tracing: resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithSpanProcessor(dropUnparentedClientSpans{sdktrace.NewBatchSpanProcessor(exp)}),
		sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	enabled.Store(true)
	return func(ctx context.Context) error {
		enabled.Store(false)
		if err := tp.Shutdown(ctx); err != nil {
			return fmt.Errorf("tracing: flush spans: %w", err)
		}
		return nil
	}, nil
}

// dropUnparentedClientSpans passes on every ended span but the client
// spans of calls made outside any span: the HTTP calls of readiness probes
// (the Docker Engine's /_ping, an API server's /version) and of background
// loops such as the Kubernetes client's watches, each of which would
// otherwise be a trace of one span every few seconds. Calls a step, a
// trigger or a consumer makes are children of its span and are kept. It
// filters after sampling, so OTEL_TRACES_SAMPLER still decides the rest.
type dropUnparentedClientSpans struct{ sdktrace.SpanProcessor }

func (p dropUnparentedClientSpans) OnEnd(s sdktrace.ReadOnlySpan) {
	if s.SpanKind() == trace.SpanKindClient && !s.Parent().IsValid() {
		return
	}
	p.SpanProcessor.OnEnd(s)
}

// eventCarrier reads and writes the trace context of a CloudEvent's
// extension attributes.
type eventCarrier struct{ e *cloudevents.Event }

func (c eventCarrier) Get(key string) string {
	v, ok := c.e.Extensions()[key]
	if !ok {
		return ""
	}
	s, _ := v.(string)
	return s
}

func (c eventCarrier) Set(key, value string) { c.e.SetExtension(key, value) }

func (c eventCarrier) Keys() []string { return []string{ExtTraceParent, ExtTraceState} }

// Inject sets the traceparent and tracestate extension attributes of e to
// the span context of ctx. It does nothing while tracing is off or when
// ctx has no span.
func Inject(ctx context.Context, e *cloudevents.Event) {
	if !enabled.Load() || !trace.SpanContextFromContext(ctx).IsValid() {
		return
	}
	propagator.Inject(ctx, eventCarrier{e})
}

// Extract returns ctx with the remote span context of e's traceparent and
// tracestate as the parent of the spans started from it; ctx itself while
// tracing is off or when e has none.
func Extract(ctx context.Context, e cloudevents.Event) context.Context {
	if !enabled.Load() {
		return ctx
	}
	if _, ok := e.Extensions()[ExtTraceParent]; !ok {
		return ctx
	}
	return propagator.Extract(ctx, eventCarrier{&e})
}

// mapCarrier is a trace context held in one traceparent value.
type mapCarrier map[string]string

func (c mapCarrier) Get(key string) string { return c[key] }
func (c mapCarrier) Set(key, value string) { c[key] = value }
func (c mapCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// TraceParent is the W3C traceparent of ctx's span, for records that keep
// it (a run, so that steps dispatched later join its trace); "" while
// tracing is off or when ctx has no span.
func TraceParent(ctx context.Context) string {
	if !enabled.Load() || !trace.SpanContextFromContext(ctx).IsValid() {
		return ""
	}
	c := mapCarrier{}
	propagator.Inject(ctx, c)
	return c[ExtTraceParent]
}

// WithTraceParent returns ctx with traceparent (from [TraceParent]) as the
// parent of the spans started from it, unless ctx already has a span of
// that trace, whose place in the trace is the more precise one. It returns
// ctx while tracing is off or when traceparent is empty or invalid.
func WithTraceParent(ctx context.Context, traceparent string) context.Context {
	if !enabled.Load() || traceparent == "" {
		return ctx
	}
	sc := trace.SpanContextFromContext(propagator.Extract(context.Background(), mapCarrier{ExtTraceParent: traceparent}))
	if !sc.IsValid() {
		return ctx
	}
	if cur := trace.SpanContextFromContext(ctx); cur.IsValid() && cur.TraceID() == sc.TraceID() {
		return ctx
	}
	return trace.ContextWithRemoteSpanContext(ctx, sc)
}

// Transport wraps rt (http.DefaultTransport when nil) so that each request
// is a client span, child of its context's span, and carries the trace
// context in its traceparent header. While tracing is off it returns rt
// unchanged: call it after [Start].
func Transport(rt http.RoundTripper) http.RoundTripper {
	if !enabled.Load() {
		return rt
	}
	if rt == nil {
		rt = http.DefaultTransport
	}
	return otelhttp.NewTransport(rt, otelhttp.WithPropagators(propagator))
}

// RecordError marks span as failed with err; nil does nothing.
func RecordError(span trace.Span, err error) {
	if err == nil || !span.IsRecording() {
		return
	}
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
}

// StartSpan starts a span named name of kind with attrs, child of ctx's
// span. While tracing is off it returns ctx and ctx's (non-recording) span
// without starting one; callers on hot paths that build attributes check
// [Enabled] first.
func StartSpan(ctx context.Context, name string, kind trace.SpanKind, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	if !enabled.Load() {
		return ctx, trace.SpanFromContext(ctx)
	}
	return otel.Tracer(InstrumentationName).Start(ctx, name, trace.WithSpanKind(kind), trace.WithAttributes(attrs...))
}

// RecordSpan records a span of kind named name that ran from start to end
// as a child of parent's span (a remote one from [Extract]), failed when
// err is not nil. It is for work done for many traces at once, such as
// storing a batch of events, where each trace gets its own span of the
// shared work. It records nothing while tracing is off or when parent has
// no span.
func RecordSpan(parent context.Context, name string, kind trace.SpanKind, start, end time.Time, err error, attrs ...attribute.KeyValue) {
	if !enabled.Load() || !trace.SpanContextFromContext(parent).IsValid() {
		return
	}
	_, span := otel.Tracer(InstrumentationName).Start(parent, name, trace.WithSpanKind(kind),
		trace.WithTimestamp(start), trace.WithAttributes(attrs...))
	RecordError(span, err)
	span.End(trace.WithTimestamp(end))
}
