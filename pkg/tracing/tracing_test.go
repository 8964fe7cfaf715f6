package tracing

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// record turns tracing on for the test with an in-memory span recorder.
func record(t *testing.T) *tracetest.SpanRecorder {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	enabled.Store(true)
	t.Cleanup(func() { enabled.Store(false); otel.SetTracerProvider(prev); _ = tp.Shutdown(context.Background()) })
	return rec
}

func newEvent() cloudevents.Event {
	e := cloudevents.NewEvent()
	e.SetID("1")
	e.SetType("io.ansflow.step.requested.v1")
	e.SetSource("test")
	return e
}

func TestConfigFromEnv(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		enabled bool
		err     error
	}{
		{"nothing set: off", nil, false, nil},
		{"endpoint", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, true, nil},
		{"traces endpoint", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, true, nil},
		{"exporter otlp", map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, true, nil},
		{"exporter none wins", map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, false, nil},
		{"sdk disabled wins", map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, false, nil},
		{"grpc refused", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, true, ErrProtocol},
		{"traces protocol wins", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
			"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ConfigFromEnv(func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok })
			if !errors.Is(err, tc.err) || (tc.err == nil && err != nil) {
				t.Fatalf("error %v, want %v", err, tc.err)
			}
			if c.Enabled != tc.enabled {
				t.Fatalf("enabled %v, want %v", c.Enabled, tc.enabled)
			}
		})
	}
	if _, err := ConfigFromEnv(func(k string) (string, bool) { return "zipkin", k == "OTEL_TRACES_EXPORTER" }); err == nil {
		t.Fatal("an unsupported exporter was accepted")
	}
}

func TestStartOffChangesNothing(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	t.Setenv("OTEL_TRACES_EXPORTER", "")
	stop, err := Start(context.Background(), "ansflow-test")
	if err != nil {
		t.Fatal(err)
	}
	defer stop(context.Background())
	if Enabled() {
		t.Fatal("tracing is on without an endpoint")
	}
	ctx, span := Tracer().Start(context.Background(), "x")
	defer span.End()
	e := newEvent()
	Inject(ctx, &e)
	if len(e.Extensions()) != 0 || TraceParent(ctx) != "" {
		t.Fatalf("tracing off wrote a trace context: %v", e.Extensions())
	}
	rt := http.DefaultTransport
	if Transport(rt) != rt {
		t.Fatal("Transport wrapped the transport while tracing is off")
	}
}

func TestStartRefusesUnsupportedProtocol(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
	if _, err := Start(context.Background(), "ansflow-test"); !errors.Is(err, ErrProtocol) {
		t.Fatalf("Start with grpc: %v, want ErrProtocol", err)
	}
	if Enabled() {
		t.Fatal("a refused configuration turned tracing on")
	}
}

// A span started from an event's extracted context is a child of the span
// that published the event, in the same trace.
func TestEventsCarryTheTraceContext(t *testing.T) {
	rec := record(t)
	ctx, parent := Tracer().Start(context.Background(), "dispatch")
	e := newEvent()
	Inject(ctx, &e)
	parent.End()
	if tp, _ := e.Extensions()[ExtTraceParent].(string); tp == "" || tp != TraceParent(ctx) {
		t.Fatalf("traceparent extension %q, want %q", tp, TraceParent(ctx))
	}
	_, child := Tracer().Start(Extract(context.Background(), e), "execute")
	child.End()
	spans := rec.Ended()
	if len(spans) != 2 {
		t.Fatalf("%d spans, want 2", len(spans))
	}
	if spans[1].Parent().SpanID() != spans[0].SpanContext().SpanID() || spans[1].SpanContext().TraceID() != spans[0].SpanContext().TraceID() {
		t.Fatalf("execute's parent %v, want dispatch %v", spans[1].Parent(), spans[0].SpanContext())
	}
	// an event without a trace context starts a new trace
	if sc := trace.SpanContextFromContext(Extract(context.Background(), newEvent())); sc.IsValid() {
		t.Fatalf("an event without traceparent gave %v", sc)
	}
}

// A stored traceparent makes the spans started later join the run's trace,
// unless the context is already in that trace.
func TestWithTraceParent(t *testing.T) {
	rec := record(t)
	ctx, root := Tracer().Start(context.Background(), "trigger")
	stored := TraceParent(ctx)
	root.End()
	_, later := Tracer().Start(WithTraceParent(context.Background(), stored), "dispatch")
	later.End()
	inner, s := Tracer().Start(ctx, "inner")
	if WithTraceParent(inner, stored) != inner {
		t.Error("a context in the same trace was reparented")
	}
	s.End()
	if WithTraceParent(context.Background(), "garbage") != context.Background() {
		t.Error("an invalid traceparent changed the context")
	}
	spans := rec.Ended()
	if spans[1].Parent().SpanID() != spans[0].SpanContext().SpanID() {
		t.Fatalf("dispatch's parent %v, want the trigger span", spans[1].Parent())
	}
}

func TestTransportTracesRequests(t *testing.T) {
	rec := record(t)
	var header string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { header = r.Header.Get("traceparent") }))
	defer srv.Close()
	ctx, parent := Tracer().Start(context.Background(), "execute")
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	resp, err := (&http.Client{Transport: Transport(nil)}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	parent.End()
	spans := rec.Ended()
	if len(spans) != 2 || spans[0].SpanKind() != trace.SpanKindClient || spans[0].Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Fatalf("spans %v, want a client span under execute", spans)
	}
	if header == "" {
		t.Fatal("the request carried no traceparent")
	}
}

// TestUnparentedClientSpansAreNotExported: the processor Start installs
// drops client spans of calls made outside any span (a readiness probe's
// ping) and passes on the rest: a client span under a step's span, a root
// span of another kind, and a client span whose parent came from an event.
func TestUnparentedClientSpansAreNotExported(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(dropUnparentedClientSpans{sdktrace.NewSimpleSpanProcessor(exp)}))
	defer tp.Shutdown(context.Background())
	tr := tp.Tracer("test")
	enabled.Store(true) // Inject and Extract carry context only while on
	defer enabled.Store(false)

	_, ping := tr.Start(context.Background(), "GET /_ping", trace.WithSpanKind(trace.SpanKindClient))
	ping.End()
	ctx, step := tr.Start(context.Background(), "step.execute")
	_, call := tr.Start(ctx, "POST /containers/create", trace.WithSpanKind(trace.SpanKindClient))
	call.End()
	step.End()
	e := newEvent()
	Inject(ctx, &e)
	_, remote := tr.Start(Extract(context.Background(), e), "GET /version", trace.WithSpanKind(trace.SpanKindClient))
	remote.End()

	var got []string
	for _, s := range exp.GetSpans() {
		got = append(got, s.Name)
	}
	want := []string{"POST /containers/create", "step.execute", "GET /version"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("exported %q, want %q", got, want)
	}
}

// TestRecordSpan: a span of work already done joins the trace of its
// event's traceparent with the given times and error; without a parent,
// or while tracing is off, nothing is recorded.
func TestRecordSpan(t *testing.T) {
	rec := record(t)
	ctx, producer := Tracer().Start(context.Background(), "step.dispatch")
	e := newEvent()
	Inject(ctx, &e)
	producer.End()
	start := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	RecordSpan(Extract(context.Background(), e), "audit.record", trace.SpanKindConsumer, start, start.Add(time.Second), errors.New("store down"))
	RecordSpan(context.Background(), "orphan", trace.SpanKindConsumer, start, start.Add(time.Second), nil)
	spans := rec.Ended()
	if len(spans) != 2 {
		t.Fatalf("%d spans ended, want step.dispatch and audit.record", len(spans))
	}
	s := spans[1]
	if s.Name() != "audit.record" || s.Parent().SpanID() != producer.SpanContext().SpanID() || s.SpanKind() != trace.SpanKindConsumer ||
		!s.StartTime().Equal(start) || s.EndTime().Sub(s.StartTime()) != time.Second || s.Status().Code != codes.Error {
		t.Fatalf("span %s parent %s kind %s %s..%s status %v", s.Name(), s.Parent().SpanID(), s.SpanKind(), s.StartTime(), s.EndTime(), s.Status())
	}
	enabled.Store(false)
	RecordSpan(Extract(context.Background(), e), "off", trace.SpanKindConsumer, start, start, nil)
	if len(rec.Ended()) != 2 {
		t.Fatal("a span was recorded while tracing is off")
	}
}
