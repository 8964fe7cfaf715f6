package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/event"
)

// followerInactivity is how long the server keeps a log follower's
// consumer whose client went away without deleting it.
const followerInactivity = time.Minute

// logs streams a run's log chunks and status changes as server-sent events.
// With follow=false (the default when the run is over) it ends once the
// history is sent; otherwise it ends after the run completes.
func (s *Server) logs(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	run, err := s.st.GetRun(r.Context(), id)
	if err != nil {
		s.fail(w, err)
		return
	}
	follow := r.URL.Query().Get("follow") != "false" && !run.Terminal()
	stepFilter := r.URL.Query().Get("step")
	ctx, cancel := context.WithCancel(r.Context())
	// Everything opened below is released before the handler returns:
	// cancel ends the feeders (blocked in Next or in a send), the iterators
	// are stopped, and once the feeders are gone the ordered consumers are
	// deleted on the server, which would otherwise keep them for their
	// inactivity threshold.
	var feeders sync.WaitGroup
	var followers []follower
	defer func() {
		cancel()
		for _, f := range followers {
			f.it.Stop()
		}
		feeders.Wait()
		s.release(context.WithoutCancel(r.Context()), followers)
	}()
	logLines := make(chan seqLine, 256)
	eventLines := make(chan seqLine, 64)
	logSubj := "ansflow.logs." + event.Token(id) + ".*"
	if stepFilter != "" {
		logSubj = event.LogSubject(id, stepFilter)
	}
	feeds := []struct {
		stream, subject string
		out             chan seqLine
	}{
		{event.StreamLogs, logSubj, logLines},
		{event.StreamEvents, "ansflow.events.*.*." + event.Token(id), eventLines},
	}
	for _, f := range feeds {
		cons, err := s.js.OrderedConsumer(ctx, f.stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{f.subject},
			// a backstop for a process that dies while following; the
			// deferred cleanup deletes the consumer in every other case
			InactiveThreshold: followerInactivity})
		if err != nil {
			s.fail(w, fmt.Errorf("follow %s: %w", f.stream, err))
			return
		}
		it, err := cons.Messages()
		if err != nil {
			s.fail(w, fmt.Errorf("follow %s: %w", f.stream, err))
			return
		}
		followers = append(followers, follower{stream: f.stream, cons: cons, it: it})
		feeders.Add(1)
		go func() {
			defer feeders.Done()
			for {
				// NextContext, not Stop alone: an ordered consumer resetting
				// onto a new server consumer as Stop runs could leave Next
				// waiting on a subscription nobody stops.
				m, err := it.Next(jetstream.NextContext(ctx))
				if err != nil {
					return
				}
				l, ok := toLine(m)
				if !ok || (stepFilter != "" && l.Step != "" && l.Step != stepFilter) {
					continue
				}
				var seq uint64
				if md, err := m.Metadata(); err == nil {
					seq = md.Sequence.Stream
				}
				select {
				case f.out <- seqLine{l, seq}:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	write := func(l apiv1.LogLine) {
		b, _ := json.Marshal(l)
		fmt.Fprintf(w, "event: %s\ndata: %s\n\n", l.Kind, b)
		if flusher != nil {
			flusher.Flush()
		}
	}
	// A step's log chunks are stored before its completion; the two feeds
	// are separate consumers, so before a completion is sent, the logs feed
	// is drained up to the step's last stored chunk.
	logSeq := map[string]uint64{}
	writeLog := func(sl seqLine) {
		logSeq[sl.Step] = max(logSeq[sl.Step], sl.seq)
		write(sl.LogLine)
	}
	catchUp := func(step string) {
		last, err := s.js.Stream(ctx, event.StreamLogs)
		if err != nil {
			return
		}
		m, err := last.GetLastMsgForSubject(ctx, event.LogSubject(id, step))
		if err != nil {
			return
		}
		deadline := time.After(time.Second)
		for logSeq[step] < m.Sequence {
			select {
			case sl := <-logLines:
				writeLog(sl)
			case <-deadline:
				return
			case <-ctx.Done():
				return
			}
		}
	}
	idle := 300 * time.Millisecond
	done := !follow
	timer := time.NewTimer(idle)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case sl := <-logLines:
			writeLog(sl)
			timer.Reset(idle)
		case sl := <-eventLines:
			if sl.Kind == "step" && sl.Status != event.StatusRunning {
				catchUp(sl.Step)
			}
			write(sl.LogLine)
			if sl.Kind == "run" && sl.Status != event.StatusRunning {
				done = true
			}
			timer.Reset(idle)
		case <-timer.C:
			if done {
				fmt.Fprint(w, "event: end\ndata: {}\n\n")
				return
			}
			timer.Reset(idle)
		}
	}
}

// follower is one of the ordered consumers a logs request reads.
type follower struct {
	stream string
	cons   jetstream.Consumer
	it     jetstream.MessagesContext
}

// release deletes the followers' consumers on the server. Their iterators
// must be stopped and drained: an ordered consumer whose reader is still
// running may reset onto a new consumer.
func (s *Server) release(ctx context.Context, followers []follower) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for _, f := range followers {
		info := f.cons.CachedInfo()
		if info == nil {
			continue
		}
		if err := s.js.DeleteConsumer(ctx, f.stream, info.Name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			s.log.Debug("delete log follower", zap.String("stream", f.stream), zap.String("consumer", info.Name), zap.Error(err))
		}
	}
}

// seqLine is a line with its stream sequence.
type seqLine struct {
	apiv1.LogLine
	seq uint64
}

func toLine(m jetstream.Msg) (apiv1.LogLine, bool) {
	e, err := event.FromMsg(&nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
	if err != nil {
		return apiv1.LogLine{}, false
	}
	switch e.Type() {
	case event.TypeStepLog:
		var d event.StepLog
		if event.DecodeData(e, &d) != nil {
			return apiv1.LogLine{}, false
		}
		return apiv1.LogLine{Kind: "log", Step: d.StepID, Attempt: d.Attempt, Stream: d.Stream, Text: d.Text, Time: d.Time}, true
	case event.TypeStepStarted:
		var d event.StepStarted
		if event.DecodeData(e, &d) != nil {
			return apiv1.LogLine{}, false
		}
		return apiv1.LogLine{Kind: "step", Step: d.StepID, Attempt: d.Attempt, Status: event.StatusRunning, Time: d.StartedAt}, true
	case event.TypeStepCompleted:
		var d event.StepCompleted
		if event.DecodeData(e, &d) != nil {
			return apiv1.LogLine{}, false
		}
		return apiv1.LogLine{Kind: "step", Step: d.StepID, Attempt: d.Attempt, Status: d.Status, Error: d.Error, Time: d.FinishedAt}, true
	case event.TypeRunCompleted:
		var d event.RunCompleted
		if event.DecodeData(e, &d) != nil {
			return apiv1.LogLine{}, false
		}
		return apiv1.LogLine{Kind: "run", Status: d.Status, Error: d.Error, Time: d.FinishedAt}, true
	}
	return apiv1.LogLine{}, false
}
