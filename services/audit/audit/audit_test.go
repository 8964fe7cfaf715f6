package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/services/audit/store"
)

// running is a started service and the way to stop it.
type running struct {
	svc  *Service
	stop func()
}

// start runs a service over st until the test ends or stop is called; Run
// must return nil.
func start(t *testing.T, js jetstream.JetStream, st store.Store, cfg Config) *running {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	svc := New(cfg, js, st, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("Run did not return after cancellation")
		}
	}
	t.Cleanup(stop)
	return &running{svc: svc, stop: stop}
}

func openStore(t *testing.T, dir string) store.Store {
	t.Helper()
	st, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	eventuallyWithin(t, 20*time.Second, what, cond)
}

// eventuallyWithin polls cond until it holds, failing the test after d.
func eventuallyWithin(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func records(t *testing.T, st store.Store, f store.Filter) []store.Record {
	t.Helper()
	var out []store.Record
	f.Limit = store.MaxLimit
	for {
		p, err := st.Query(context.Background(), f)
		if err != nil {
			t.Fatalf("Query: %v", err)
		}
		out = append(out, p.Records...)
		if p.NextCursor == "" {
			return out
		}
		f.Cursor = p.NextCursor
	}
}

func mustVerify(t *testing.T, st store.Store) store.VerifyResult {
	t.Helper()
	res, err := st.Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK {
		t.Fatalf("Verify: chain broken: %+v", res.Bad)
	}
	return res
}

func newEvent(t *testing.T, typ string, meta event.Meta, data any) cloudevents.Event {
	t.Helper()
	e, err := event.New("ansflow/pipeline/test", typ, meta, data)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func publish(t *testing.T, js jetstream.JetStream, subject string, e cloudevents.Event) {
	t.Helper()
	if err := bus.Publish(context.Background(), js, subject, e); err != nil {
		t.Fatal(err)
	}
}

// publishAgain publishes e again under another Nats-Msg-Id, so the
// server's dedupe does not catch it and only the audit store's can.
func publishAgain(t *testing.T, js jetstream.JetStream, subject string, e cloudevents.Event) {
	t.Helper()
	m, err := event.ToMsg(subject, e)
	if err != nil {
		t.Fatal(err)
	}
	m.Header.Set(event.HeaderMsgID, e.ID()+"-again")
	if _, err := js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

// runEvents are the events of one small run of pipeline p: what the
// pipeline service and a runner publish, plus the API action that started
// it.
func runEvents(t *testing.T, runID string) (subjects []string, events []cloudevents.Event) {
	add := func(subject string, e cloudevents.Event) {
		subjects, events = append(subjects, subject), append(events, e)
	}
	// As the pipeline service publishes them: no run id, a target.
	add("ansflow.events.api.action._", newEvent(t, event.TypeAPIAction, event.Meta{},
		event.Action{Actor: "token:alice", SourceIP: "127.0.0.1", Action: "run.trigger", Target: "pipeline/p", Outcome: "accepted"}))
	add("ansflow.events.api.action._", newEvent(t, event.TypeAPIAction, event.Meta{},
		event.Action{Actor: "token:bob", SourceIP: "127.0.0.1", Action: "run.cancel", Target: "run/" + runID, Outcome: "ok"}))
	add(event.LifecycleSubject(event.TypeRunCreated, runID), newEvent(t, event.TypeRunCreated, event.Meta{RunID: runID},
		event.RunCreated{RunID: runID, Pipeline: "p", Version: 1, BuildNumber: 7, Trigger: "api", Actor: "token:alice"}))
	for attempt := 1; attempt <= 2; attempt++ {
		meta := event.Meta{RunID: runID, StepID: "build", Attempt: attempt}
		add(event.StepRequestedSubject(event.KindDocker, "default"), newEvent(t, event.TypeStepRequested, meta,
			event.StepRequested{RunID: runID, StepID: "build", StepName: "build", Pipeline: "p", Attempt: attempt, Type: "docker_build", Kind: event.KindDocker, Target: "default"}))
		add(event.LifecycleSubject(event.TypeStepStarted, runID), newEvent(t, event.TypeStepStarted, meta,
			event.StepStarted{RunID: runID, StepID: "build", Attempt: attempt, Runner: "r1"}))
		status := event.StatusFailed
		if attempt == 2 {
			status = event.StatusSucceeded
		}
		add(event.LifecycleSubject(event.TypeStepCompleted, runID), newEvent(t, event.TypeStepCompleted, meta,
			event.StepCompleted{RunID: runID, StepID: "build", Attempt: attempt, Status: status, Runner: "r1"}))
	}
	add(event.LogSubject(runID, "build"), newEvent(t, event.TypeStepLog, event.Meta{RunID: runID, StepID: "build", Attempt: 2},
		event.StepLog{RunID: runID, StepID: "build", Attempt: 2, Stream: event.Stdout, Text: "hello"}))
	add(event.LifecycleSubject(event.TypeRunCompleted, runID), newEvent(t, event.TypeRunCompleted, event.Meta{RunID: runID},
		event.RunCompleted{RunID: runID, Pipeline: "p", Status: event.StatusSucceeded}))
	return subjects, events
}

func TestRecordsEveryEventOnce(t *testing.T) {
	for _, k := range storeKinds {
		t.Run(k.name, func(t *testing.T) { testRecordsEveryEventOnce(t, k.fresh(t)) })
	}
}

func testRecordsEveryEventOnce(t *testing.T, where string) {
	ns := natstest.Run(t)
	st := openStore(t, where)
	r := start(t, ns.JS, st, Config{})
	subjects, events := runEvents(t, "run-1")
	for i := range events {
		publish(t, ns.JS, subjects[i], events[i])
	}
	// The log chunk is not recorded by default.
	want := len(events) - 1
	eventually(t, "every event stored", func() bool { return len(records(t, st, store.Filter{})) == want })

	// Republished: the server drops the same Nats-Msg-Id; under another
	// one the store's dedupe on (source, id) drops it.
	received := r.svc.Stats().Received
	for i := range events {
		publish(t, ns.JS, subjects[i], events[i])
		publishAgain(t, ns.JS, subjects[i], events[i])
	}
	eventually(t, "republished events received", func() bool { return r.svc.Stats().Received >= received+uint64(want) })
	got := records(t, st, store.Filter{})
	if len(got) != want {
		t.Fatalf("%d records after republishing, want %d", len(got), want)
	}
	seen := map[string]bool{}
	for _, rec := range got {
		if seen[rec.ID] {
			t.Fatalf("event %s stored twice", rec.ID)
		}
		seen[rec.ID] = true
		if rec.Rejected || (rec.RunID != "run-1" && rec.Actor != "token:alice") || rec.Source != "ansflow/pipeline/test" || rec.Time.IsZero() || len(rec.Data) == 0 {
			t.Fatalf("record %+v", rec)
		}
	}

	// Both attempts' requests and completions are there.
	for _, typ := range []string{event.TypeStepRequested, event.TypeStepCompleted} {
		rs := records(t, st, store.Filter{RunID: "run-1", StepID: "build", Type: typ})
		if len(rs) != 2 || rs[0].Attempt != 1 || rs[1].Attempt != 2 {
			t.Fatalf("%s records: %+v", typ, rs)
		}
	}
	// The actor of an API action comes from its data.
	acts := records(t, st, store.Filter{Actor: "token:alice", Type: event.TypeAPIAction})
	if len(acts) != 1 || acts[0].Pipeline != "p" {
		t.Fatalf("actions of token:alice: %+v", acts)
	}
	// An action on a run is found with the run.
	if rs := records(t, st, store.Filter{RunID: "run-1", Actor: "token:bob"}); len(rs) != 1 {
		t.Fatalf("actions of token:bob on run-1: %+v", rs)
	}
	var a event.Action
	if err := json.Unmarshal(acts[0].Data, &a); err != nil || a.SourceIP != "127.0.0.1" || a.Outcome != "accepted" {
		t.Fatalf("action data %s: %v", acts[0].Data, err)
	}
	// Every record of the run is found by its pipeline, which only some
	// of the events name.
	if rs := records(t, st, store.Filter{Pipeline: "p"}); len(rs) != want {
		t.Fatalf("pipeline p: %d records, want %d", len(rs), want)
	}
	mustVerify(t, st)
}

func TestIncludeLogs(t *testing.T) {
	ns := natstest.Run(t)
	st := openStore(t, t.TempDir())
	start(t, ns.JS, st, Config{IncludeLogs: true})
	subjects, events := runEvents(t, "run-logs")
	for i := range events {
		publish(t, ns.JS, subjects[i], events[i])
	}
	eventually(t, "events and logs stored", func() bool { return len(records(t, st, store.Filter{})) == len(events) })
	if rs := records(t, st, store.Filter{Type: event.TypeStepLog}); len(rs) != 1 || rs[0].Stream != event.StreamLogs {
		t.Fatalf("log records: %+v", rs)
	}
}

func TestCatchesUpExactlyOnceAfterRestart(t *testing.T) {
	for _, k := range storeKinds {
		t.Run(k.name, func(t *testing.T) { testCatchesUpExactlyOnceAfterRestart(t, k.fresh(t)) })
	}
}

func testCatchesUpExactlyOnceAfterRestart(t *testing.T, dir string) {
	ns := natstest.Run(t)
	st := openStore(t, dir)
	r := start(t, ns.JS, st, Config{BatchSize: 7})
	var all []cloudevents.Event
	pub := func(from, to int) {
		for i := from; i < to; i++ {
			runID := fmt.Sprintf("run-%d", i%3)
			e := newEvent(t, event.TypeStepStarted, event.Meta{RunID: runID, StepID: "s", Attempt: 1}, event.StepStarted{RunID: runID, StepID: "s", Attempt: 1})
			publish(t, ns.JS, event.LifecycleSubject(event.TypeStepStarted, runID), e)
			all = append(all, e)
		}
	}
	pub(0, 40)
	eventually(t, "first 40 stored", func() bool { return len(records(t, st, store.Filter{})) == 40 })
	r.stop()
	st.Close()

	// While the service is down: more events, and redeliveries of old
	// ones under new message ids.
	pub(40, 100)
	for _, e := range all[:10] {
		publishAgain(t, ns.JS, event.LifecycleSubject(event.TypeStepStarted, event.MetaOf(e).RunID), e)
	}

	st = openStore(t, dir)
	r2 := start(t, ns.JS, st, Config{BatchSize: 7})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := r2.svc.WaitCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	got := records(t, st, store.Filter{})
	if len(got) != 100 {
		t.Fatalf("%d records, want 100", len(got))
	}
	ids := map[string]int{}
	for _, rec := range got {
		ids[rec.ID]++
	}
	for _, e := range all {
		if ids[e.ID()] != 1 {
			t.Fatalf("event %s stored %d times", e.ID(), ids[e.ID()])
		}
	}
	mustVerify(t, st)
}

func TestMalformedMessagesStoredAsRejected(t *testing.T) {
	ns := natstest.Run(t)
	st := openStore(t, t.TempDir())
	r := start(t, ns.JS, st, Config{MaxEventBytes: 1024})
	ctx := context.Background()
	raw := func(subject string, h nats.Header, data []byte) {
		t.Helper()
		if _, err := ns.JS.PublishMsg(ctx, &nats.Msg{Subject: subject, Header: h, Data: data}); err != nil {
			t.Fatal(err)
		}
	}
	ceHeaders := func(typ, version string) nats.Header {
		return nats.Header{"ce-id": {"id-" + typ}, "ce-source": {"test/raw"}, "ce-type": {typ}, "ce-specversion": {version},
			"ce-runid": {"run-bad"}, "content-type": {"application/json"}}
	}
	raw("ansflow.events.x.y.z", nil, []byte("hello, not a cloudevent"))
	raw("ansflow.events.bogus.thing.run-bad", ceHeaders("io.ansflow.bogus.thing.v1", "1.0"), []byte(`{}`))
	raw("ansflow.events.step.started.run-bad", ceHeaders(event.TypeStepStarted, "0.3"), []byte(`{}`))
	raw("ansflow.events.step.started.run-bad", ceHeaders(event.TypeStepStarted+"x", "1.0"), []byte("{not json"))
	h := ceHeaders(event.TypeStepCompleted, "1.0")
	raw("ansflow.events.step.completed.run-bad", h, []byte(`{"stdout_tail":"`+strings.Repeat("x", 2000)+`"}`))
	raw("ansflow.step.requested.docker.default", nil, []byte{0xff, 0xfe, 0x00, 0x01})
	h = ceHeaders(event.TypeStepStarted, "1.0")
	h.Set("ce-id", "id-notjson")
	raw("ansflow.events.step.started.run-bad", h, []byte("not json at all"))
	// A good event after the bad ones is still recorded.
	good := newEvent(t, event.TypeRunCompleted, event.Meta{RunID: "run-ok"}, event.RunCompleted{RunID: "run-ok", Status: "succeeded"})
	publish(t, ns.JS, event.LifecycleSubject(event.TypeRunCompleted, "run-ok"), good)

	eventually(t, "8 records", func() bool { return len(records(t, st, store.Filter{})) == 8 })
	wantReasons := []string{"not a CloudEvent", "unknown event type \"io.ansflow.bogus.thing.v1\"", "specversion \"0.3\"",
		"unknown event type", "oversized: 20", "not a CloudEvent", "not valid JSON"}
	var rejected []store.Record
	for _, rec := range records(t, st, store.Filter{}) {
		if rec.Rejected {
			rejected = append(rejected, rec)
		} else if rec.ID != good.ID() {
			t.Fatalf("unexpected accepted record %+v", rec)
		}
	}
	if len(rejected) != len(wantReasons) {
		t.Fatalf("%d rejected records, want %d", len(rejected), len(wantReasons))
	}
	// Rejected records sort by stream: steps first (one), then events.
	byReason := map[string]bool{}
	for _, rec := range rejected {
		byReason[rec.Reason] = true
		if !strings.HasPrefix(rec.Source, BusSourcePrefix) || rec.StreamSeq == 0 {
			t.Fatalf("rejected record has no bus identity: %+v", rec)
		}
		var env MessageEnvelope
		if err := json.Unmarshal(rec.Data, &env); err != nil || env.Size == 0 || env.SHA256 == "" || env.Subject == "" {
			t.Fatalf("rejected record data %s: %v", rec.Data, err)
		}
		if rec.Stream == event.StreamSteps && env.Base64 == "" {
			t.Fatalf("binary body not kept as base64: %+v", env)
		}
		if strings.HasPrefix(rec.Reason, "oversized") && (!env.Truncated && len(env.Text) > 0 || env.Size < 2000) {
			t.Fatalf("oversized body: %+v", env)
		}
	}
	for _, want := range wantReasons {
		found := false
		for reason := range byReason {
			found = found || strings.Contains(reason, want)
		}
		if !found {
			t.Errorf("no rejected record with reason containing %q; reasons: %v", want, byReason)
		}
	}
	if rs := records(t, st, store.Filter{RunID: "run-bad"}); len(rs) != 5 {
		t.Errorf("run-bad: %d rejected records found by their claimed run, want 5", len(rs))
	}
	// Everything was acknowledged, nothing dead-lettered or retried.
	for _, stream := range []string{event.StreamEvents, event.StreamSteps} {
		cons, err := ns.JS.Consumer(ctx, stream, Config{DurablePrefix: "audit"}.Durable(stream))
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, stream+" acknowledged", func() bool {
			info, err := cons.Info(ctx)
			return err == nil && info.NumAckPending == 0 && info.NumRedelivered == 0 && info.NumPending == 0
		})
	}
	if s := r.svc.Stats(); s.Rejected != 7 || s.Stored != 8 {
		t.Fatalf("stats %+v", s)
	}
	mustVerify(t, st)
}

func TestDeadLetteredMessagesRecorded(t *testing.T) {
	ns := natstest.Run(t)
	st := openStore(t, t.TempDir())
	start(t, ns.JS, st, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := bus.EnsureStreams(ctx, ns.JS, 1); err != nil {
		t.Fatal(err)
	}
	// Another service's consumer that gives up on every event.
	consumed := make(chan error, 1)
	go func() {
		consumed <- bus.Consume(ctx, ns.JS, bus.ConsumerConfig{Stream: event.StreamEvents, Durable: "picky", RetryDelay: 10 * time.Millisecond},
			func(context.Context, cloudevents.Event) error { return bus.Permanent(errors.New("boom")) }, zap.NewNop())
	}()
	e := newEvent(t, event.TypeStepCancel, event.Meta{RunID: "run-dl"}, event.StepCancel{RunID: "run-dl", Reason: "user"})
	publish(t, ns.JS, event.LifecycleSubject(event.TypeStepCancel, "run-dl"), e)
	if _, err := ns.JS.PublishMsg(ctx, &nats.Msg{Subject: "ansflow.events.junk.junk.x", Data: []byte("junk")}); err != nil {
		t.Fatal(err)
	}
	// The event, the junk (rejected), and one dead-letter record each.
	eventually(t, "4 records", func() bool { return len(records(t, st, store.Filter{})) == 4 })
	dls := records(t, st, store.Filter{Type: TypeDeadLetter})
	if len(dls) != 2 {
		t.Fatalf("dead-letter records: %+v", dls)
	}
	var withID, withoutID *store.Record
	for i := range dls {
		if dls[i].ID == "dlq/"+e.ID() {
			withID = &dls[i]
		} else {
			withoutID = &dls[i]
		}
	}
	if withID == nil || withID.Source != e.Source() || withID.RunID != "run-dl" || withID.Stream != event.StreamDLQ ||
		!strings.Contains(withID.Reason, "dead-lettered from ANSFLOW_EVENTS after 1 deliveries") || !strings.Contains(withID.Reason, "boom") {
		t.Fatalf("dead-letter record of the event: %+v", withID)
	}
	var d DeadLetter
	if err := json.Unmarshal(withID.Data, &d); err != nil || d.Stream != event.StreamEvents || d.Type != event.TypeStepCancel || d.Message.JSON == nil {
		t.Fatalf("dead-letter data %s: %v", withID.Data, err)
	}
	if withoutID == nil || !strings.HasPrefix(withoutID.Source, BusSourcePrefix+event.StreamDLQ) || !strings.Contains(withoutID.Reason, "not a CloudEvent") {
		t.Fatalf("dead-letter record of the junk: %+v", withoutID)
	}
	cancel()
	if err := <-consumed; err != nil {
		t.Fatal(err)
	}
	mustVerify(t, st)
}

func TestRetentionPrunesIntoCheckpoint(t *testing.T) {
	ns := natstest.Run(t)
	st := openStore(t, filepath.Join(t.TempDir(), "a.db"))
	ctx := context.Background()
	old := time.Now().Add(-48 * time.Hour)
	var rs []store.Record
	for i := range 5 {
		rs = append(rs, store.Record{Source: "s", ID: fmt.Sprint(i), Type: event.TypeRunCreated, ReceivedAt: old})
	}
	if _, err := st.Append(ctx, rs); err != nil {
		t.Fatal(err)
	}
	start(t, ns.JS, st, Config{Retention: 24 * time.Hour, RetentionInterval: time.Hour})
	e := newEvent(t, event.TypeRunCreated, event.Meta{RunID: "r"}, event.RunCreated{RunID: "r"})
	publish(t, ns.JS, event.LifecycleSubject(event.TypeRunCreated, "r"), e)
	eventually(t, "old records pruned and new one stored", func() bool {
		got := records(t, st, store.Filter{})
		return len(got) == 2 && got[0].IsCheckpoint() && got[1].ID == e.ID()
	})
	res := mustVerify(t, st)
	if res.Checkpoint == nil || res.Checkpoint.Count != 5 {
		t.Fatalf("checkpoint %+v", res.Checkpoint)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{{BatchSize: -1}, {DurablePrefix: "a.b"}, {AckWait: time.Millisecond}, {Retention: -time.Hour}} {
		if err := c.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil, want an error", c)
		}
	}
	c := Config{}
	if err := c.Validate(); err != nil || c.BatchSize != 1000 || c.Durable(event.StreamDLQ) != "audit-dlq" || len(c.Streams()) != 3 {
		t.Fatalf("defaults: %+v, %v", c, err)
	}
}

// flakyStore fails its first failures appends as an unreachable database
// would, and refuses records with ID "poison" as invalid content.
type flakyStore struct {
	store.Store
	failures atomic.Int32
}

func (f *flakyStore) Append(ctx context.Context, recs []store.Record) (int, error) {
	if f.failures.Add(-1) >= 0 {
		return 0, errors.New("database is down")
	}
	for _, r := range recs {
		if r.ID == "poison" && !r.Rejected {
			return 0, fmt.Errorf("%w: poison", store.ErrInvalidRecord)
		}
	}
	return f.Store.Append(ctx, recs)
}

func TestStoreFailuresAreRetriedAndRefusedRecordsKept(t *testing.T) {
	ns := natstest.Run(t)
	fs := &flakyStore{Store: openStore(t, t.TempDir())}
	fs.failures.Store(2)
	r := start(t, ns.JS, fs, Config{})
	var ids []string
	for i := range 5 {
		e := newEvent(t, event.TypeRunCreated, event.Meta{RunID: "r"}, event.RunCreated{RunID: "r"})
		if i == 2 {
			e.SetID("poison")
		}
		ids = append(ids, e.ID())
		publish(t, ns.JS, event.LifecycleSubject(event.TypeRunCreated, "r"), e)
	}
	eventually(t, "all 5 stored", func() bool { return len(records(t, fs, store.Filter{})) == 5 })
	got := records(t, fs, store.Filter{})
	for _, rec := range got {
		if (rec.ID == "poison") != rec.Rejected {
			t.Fatalf("record %+v", rec)
		}
		if rec.Rejected && !strings.Contains(rec.Reason, "store refused the record") {
			t.Fatalf("poison reason %q", rec.Reason)
		}
	}
	if s := r.svc.Stats(); s.Failures < 2 {
		t.Fatalf("stats %+v: want at least 2 failures", s)
	}
	mustVerify(t, fs)
}
