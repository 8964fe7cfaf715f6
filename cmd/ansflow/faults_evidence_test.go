package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	dockerclient "github.com/docker/docker/client"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/services/docker-runner/engine"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// The fault suite judges the system from what it left behind, not from what
// it says about itself: every revision of every run document (a watch of the
// runs bucket, timestamped by the server), every message of the streams, and
// the Docker Engine's own container events. Each collector runs from before
// the first run until the test ends.

// runRev is one stored revision of a run document.
type runRev struct {
	at  time.Time // when the server stored it
	rev uint64
	run *apiv1.Run
}

// runTimeline holds every revision of every run seen by a watch of the runs
// bucket.
type runTimeline struct {
	mu     sync.Mutex
	revs   map[string][]runRev
	latest time.Time
	resets int
	seen   map[uint64]time.Time // every revision observed, when stored
}

// watchRunTimeline follows the runs bucket with one watch per connection
// in jss, merged: a watch whose consumer lived on a node that died takes
// seconds to notice and start again, and the bucket keeps only the newest
// revision of a run, so one watch alone would miss revisions written
// meanwhile.
func watchRunTimeline(ctx context.Context, jss []jetstream.JetStream) (*runTimeline, error) {
	tl := &runTimeline{revs: map[string][]runRev{}, seen: map[uint64]time.Time{}}
	for _, js := range jss {
		kv, err := js.KeyValue(ctx, store.BucketRuns)
		if err != nil {
			return nil, err
		}
		go func() {
			for ctx.Err() == nil {
				w, err := kv.WatchAll(ctx)
				if err != nil {
					sleepCtx(ctx, 200*time.Millisecond)
					continue
				}
				for e := range w.Updates() {
					if e != nil && e.Operation() == jetstream.KeyValuePut {
						tl.observe(e)
					}
				}
				_ = w.Stop()
				tl.mu.Lock()
				tl.resets++
				tl.mu.Unlock()
			}
		}()
	}
	return tl, nil
}

func (tl *runTimeline) observe(e jetstream.KeyValueEntry) {
	tl.mu.Lock()
	if _, dup := tl.seen[e.Revision()]; dup {
		tl.mu.Unlock()
		return
	}
	tl.mu.Unlock()
	var r apiv1.Run
	if json.Unmarshal(e.Value(), &r) != nil {
		return
	}
	tl.mu.Lock()
	defer tl.mu.Unlock()
	if _, dup := tl.seen[e.Revision()]; dup {
		return
	}
	tl.seen[e.Revision()] = e.Created()
	revs := tl.revs[e.Key()]
	i := sort.Search(len(revs), func(i int) bool { return revs[i].rev > e.Revision() })
	revs = append(revs, runRev{})
	copy(revs[i+1:], revs[i:])
	revs[i] = runRev{at: e.Created(), rev: e.Revision(), run: &r}
	tl.revs[e.Key()] = revs
	if e.Created().After(tl.latest) {
		tl.latest = e.Created()
	}
}

// first returns when a revision of run id first satisfied cond.
func (tl *runTimeline) first(id string, cond func(*apiv1.Run) bool) (time.Time, bool) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	for _, rv := range tl.revs[id] {
		if cond(rv.run) {
			return rv.at, true
		}
	}
	return time.Time{}, false
}

// last returns the newest revision of run id seen.
func (tl *runTimeline) last(id string) *apiv1.Run {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	revs := tl.revs[id]
	if len(revs) == 0 {
		return nil
	}
	return revs[len(revs)-1].run
}

// missed counts the revisions of the runs bucket stored between from and
// to that the watch never saw (a document rewritten while the watch was
// being re-established): the bucket keeps one revision per run, so those
// are gone, and a moment taken from the next revision seen is late.
func (tl *runTimeline) missed(from, to time.Time) int {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	var lo, hi uint64
	for rev, at := range tl.seen {
		if at.Before(from) && rev > lo {
			lo = rev
		}
		if at.After(to) && (hi == 0 || rev < hi) {
			hi = rev
		}
	}
	if hi == 0 {
		return 0
	}
	n := 0
	for rev := lo + 1; rev < hi; rev++ {
		if _, ok := tl.seen[rev]; !ok {
			n++
		}
	}
	return n
}

// storedSince reports whether any run revision was stored after t.
func (tl *runTimeline) storedSince(t time.Time) bool {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return tl.latest.After(t)
}

// busMsg is one message of a stream.
type busMsg struct {
	stream  string
	seq     uint64
	at      time.Time // stored at
	subject string
	typ     string
	source  string
	id      string
	reason  string // of a dead letter
	data    []byte
}

// streamLog follows one stream from its first message with an ordered
// consumer, re-created after a failure from the next sequence.
type streamLog struct {
	name string
	mu   sync.Mutex
	msgs []busMsg
	seq  uint64
}

func followStream(ctx context.Context, js jetstream.JetStream, name string) *streamLog {
	l := &streamLog{name: name}
	go func() {
		for ctx.Err() == nil {
			l.mu.Lock()
			next := l.seq + 1
			l.mu.Unlock()
			cons, err := js.OrderedConsumer(ctx, name, jetstream.OrderedConsumerConfig{
				DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: next})
			if err != nil {
				sleepCtx(ctx, 200*time.Millisecond)
				continue
			}
			it, err := cons.Messages()
			if err != nil {
				sleepCtx(ctx, 200*time.Millisecond)
				continue
			}
			stop := context.AfterFunc(ctx, it.Stop)
			for {
				m, err := it.Next()
				if err != nil {
					break
				}
				l.add(m)
			}
			stop()
			it.Stop()
		}
	}()
	return l
}

// dlqHeaders sums up the Ansflow-Dlq-* headers of a dead letter.
func dlqHeaders(h nats.Header) string {
	var parts []string
	for k, vs := range h {
		if strings.HasPrefix(strings.ToLower(k), "ansflow-dlq-") {
			parts = append(parts, strings.TrimPrefix(strings.ToLower(k), "ansflow-dlq-")+"="+strings.Join(vs, ","))
		}
	}
	sort.Strings(parts)
	if id := h.Get("Nats-Msg-Id"); id != "" {
		parts = append(parts, "msg-id="+id)
	}
	return strings.Join(parts, " ")
}

func (l *streamLog) add(m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		return
	}
	h := m.Headers()
	bm := busMsg{stream: l.name, seq: md.Sequence.Stream, at: md.Timestamp, subject: m.Subject(), data: m.Data(),
		typ: h.Get(event.HeaderCEType), source: h.Get(event.HeaderCESource), id: h.Get(event.HeaderCEID),
		reason: dlqHeaders(h)}
	l.mu.Lock()
	defer l.mu.Unlock()
	if bm.seq <= l.seq {
		return
	}
	l.seq = bm.seq
	l.msgs = append(l.msgs, bm)
}

// caughtUp reports whether the log holds the stream up to its last message
// now.
func (l *streamLog) caughtUp(ctx context.Context, js jetstream.JetStream) (bool, string) {
	s, err := js.Stream(ctx, l.name)
	if err != nil {
		return false, err.Error()
	}
	info, err := s.Info(ctx)
	if err != nil {
		return false, err.Error()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seq < info.State.LastSeq {
		return false, l.name + " read up to " + strconv.FormatUint(l.seq, 10) + " of " + strconv.FormatUint(info.State.LastSeq, 10)
	}
	return true, ""
}

func (l *streamLog) all() []busMsg {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]busMsg(nil), l.msgs...)
}

// stepEvent is a step.started or step.completed of one attempt.
type stepEvent struct {
	busMsg
	started   *event.StepStarted
	completed *event.StepCompleted
}

// when is when what the event reports happened, by the runner's clock
// (this host's).
func (e stepEvent) when() time.Time {
	if e.completed != nil && !e.completed.FinishedAt.IsZero() {
		return e.completed.FinishedAt
	}
	if e.started != nil && !e.started.StartedAt.IsZero() {
		return e.started.StartedAt
	}
	return e.at
}

func (e stepEvent) key() attemptRef {
	if e.completed != nil {
		return attemptRef{e.completed.RunID, e.completed.StepID, e.completed.Attempt}
	}
	return attemptRef{e.started.RunID, e.started.StepID, e.started.Attempt}
}

// stepEvents decodes the step.started and step.completed messages of msgs.
func stepEvents(msgs []busMsg) []stepEvent {
	var out []stepEvent
	for _, m := range msgs {
		switch m.typ {
		case event.TypeStepStarted:
			var d event.StepStarted
			if json.Unmarshal(m.data, &d) == nil {
				out = append(out, stepEvent{busMsg: m, started: &d})
			}
		case event.TypeStepCompleted:
			var d event.StepCompleted
			if json.Unmarshal(m.data, &d) == nil {
				out = append(out, stepEvent{busMsg: m, completed: &d})
			}
		}
	}
	return out
}

type attemptRef struct {
	run, step string
	attempt   int
}

// containerLife is what the Docker Engine reported about one container of
// an attempt.
type containerLife struct {
	id         string
	ref        attemptRef
	start, die time.Time
	starts     int
	exitCode   string
}

// dockerLog follows the Docker Engine's container events for containers
// the docker runner labelled.
type dockerLog struct {
	mu         sync.Mutex
	containers map[string]*containerLife
	lastErr    error
}

func followDocker(ctx context.Context, cli *dockerclient.Client) *dockerLog {
	d := &dockerLog{containers: map[string]*containerLife{}}
	since := time.Now().Add(-time.Second)
	go func() {
		for ctx.Err() == nil {
			f := filters.NewArgs(filters.Arg("type", string(events.ContainerEventType)), filters.Arg("label", engine.LabelRun))
			msgs, errs := cli.Events(ctx, events.ListOptions{Filters: f, Since: strconv.FormatInt(since.Unix(), 10)})
		read:
			for {
				select {
				case m := <-msgs:
					d.observe(m)
					if t := time.Unix(0, m.TimeNano); t.After(since) {
						since = t
					}
				case err := <-errs:
					d.mu.Lock()
					d.lastErr = err
					d.mu.Unlock()
					break read
				}
			}
			sleepCtx(ctx, 200*time.Millisecond)
		}
	}()
	return d
}

func (d *dockerLog) observe(m events.Message) {
	attrs := m.Actor.Attributes
	run := attrs[engine.LabelRun]
	if run == "" {
		return
	}
	attempt, _ := strconv.Atoi(attrs[engine.LabelAttempt])
	at := time.Unix(0, m.TimeNano)
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.containers[m.Actor.ID]
	if c == nil {
		c = &containerLife{id: m.Actor.ID, ref: attemptRef{run, attrs[engine.LabelStep], attempt}}
		d.containers[m.Actor.ID] = c
	}
	switch m.Action {
	case events.ActionStart:
		if c.start.IsZero() || !at.Equal(c.start) {
			c.starts++
		}
		c.start = at
	case events.ActionDie:
		c.die, c.exitCode = at, attrs["exitCode"]
	}
}

// ofRuns returns the containers of the given runs.
func (d *dockerLog) ofRuns(runs map[string]bool) []containerLife {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []containerLife
	for _, c := range d.containers {
		if runs[c.ref.run] {
			out = append(out, *c)
		}
	}
	return out
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// claimLog follows the attempts bucket: the newest claim of every attempt.
type claimLog struct {
	mu     sync.Mutex
	claims map[attemptRef]runner.Claim
	rev    uint64
}

func followClaims(ctx context.Context, js jetstream.JetStream) (*claimLog, jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, runner.AttemptsBucket)
	if err != nil {
		return nil, nil, err
	}
	l := &claimLog{claims: map[attemptRef]runner.Claim{}}
	go func() {
		for ctx.Err() == nil {
			w, err := kv.WatchAll(ctx)
			if err != nil {
				sleepCtx(ctx, 200*time.Millisecond)
				continue
			}
			for e := range w.Updates() {
				if e == nil || e.Operation() != jetstream.KeyValuePut {
					continue
				}
				parts := strings.Split(e.Key(), ".")
				if len(parts) != 3 {
					continue
				}
				n, _ := strconv.Atoi(parts[2])
				var c runner.Claim
				if json.Unmarshal(e.Value(), &c) != nil {
					continue
				}
				l.mu.Lock()
				l.claims[attemptRef{parts[0], parts[1], n}] = c
				l.rev = max(l.rev, e.Revision())
				l.mu.Unlock()
			}
			_ = w.Stop()
		}
	}()
	return l, kv, nil
}

// caughtUp reports whether the log has seen every claim written to kv so
// far.
func (l *claimLog) caughtUp(ctx context.Context, kv jetstream.KeyValue) (bool, string) {
	st, err := kv.Status(ctx)
	if err != nil {
		return false, err.Error()
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return false, fmt.Sprintf("bucket status %T", st)
	}
	last := bs.StreamInfo().State.LastSeq
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rev >= last, fmt.Sprintf("claims read up to %d of %d", l.rev, last)
}

// running returns the attempts whose claim says runner id executes them.
func (l *claimLog) running(id string) []attemptRef {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []attemptRef
	for a, c := range l.claims {
		if c.State == runner.ClaimRunning && c.Runner == id {
			out = append(out, a)
		}
	}
	sort.Slice(out, func(i, j int) bool { return fmt.Sprint(out[i]) < fmt.Sprint(out[j]) })
	return out
}

func (l *claimLog) get(a attemptRef) (runner.Claim, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, ok := l.claims[a]
	return c, ok
}
