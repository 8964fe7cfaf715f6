package main

import (
	"context"
	"encoding/json"
	"strconv"
	"sync"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	dockerclient "github.com/docker/docker/client"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/event"
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
	run *store.Run
}

// runTimeline holds every revision of every run seen by a watch of the runs
// bucket.
type runTimeline struct {
	mu     sync.Mutex
	revs   map[string][]runRev
	latest time.Time
	resets int
}

func watchRunTimeline(ctx context.Context, js jetstream.JetStream) (*runTimeline, error) {
	kv, err := js.KeyValue(ctx, store.BucketRuns)
	if err != nil {
		return nil, err
	}
	tl := &runTimeline{revs: map[string][]runRev{}}
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
	return tl, nil
}

func (tl *runTimeline) observe(e jetstream.KeyValueEntry) {
	var r store.Run
	if json.Unmarshal(e.Value(), &r) != nil {
		return
	}
	r.Revision = e.Revision()
	tl.mu.Lock()
	defer tl.mu.Unlock()
	revs := tl.revs[e.Key()]
	if n := len(revs); n > 0 && revs[n-1].rev >= e.Revision() {
		return // replayed by a new watch
	}
	tl.revs[e.Key()] = append(revs, runRev{at: e.Created(), rev: e.Revision(), run: &r})
	if e.Created().After(tl.latest) {
		tl.latest = e.Created()
	}
}

// first returns when a revision of run id first satisfied cond.
func (tl *runTimeline) first(id string, cond func(*store.Run) bool) (time.Time, bool) {
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
func (tl *runTimeline) last(id string) *store.Run {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	revs := tl.revs[id]
	if len(revs) == 0 {
		return nil
	}
	return revs[len(revs)-1].run
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

func (l *streamLog) add(m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		return
	}
	h := m.Headers()
	bm := busMsg{stream: l.name, seq: md.Sequence.Stream, at: md.Timestamp, subject: m.Subject(), data: m.Data(),
		typ: h.Get(event.HeaderCEType), source: h.Get(event.HeaderCESource), id: h.Get(event.HeaderCEID),
		reason: h.Get("Ansflow-Dlq-Reason")}
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
