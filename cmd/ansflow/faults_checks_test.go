package main

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/services/audit/audit"
	auditstore "github.com/ansflow/ansflow/services/audit/store"
	"github.com/ansflow/ansflow/services/docker-runner/engine"
)

// checkRuns checks ended runs, as the API shows them, against the evidence.
func (s *faultSuite) checkRuns(final []*apiv1.Run) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	in := map[string]bool{}
	byID := map[string]*apiv1.Run{}
	for _, r := range final {
		in[r.ID], byID[r.ID] = true, r
	}

	// Every run reached the end its pipeline must reach.
	for _, r := range final {
		want := s.pipelines[r.Pipeline]
		if want == nil {
			bad("run %s is of pipeline %q, which the suite did not apply", r.ID, r.Pipeline)
			continue
		}
		if r.Status != want.status {
			bad("run %s of %s ended %s (%s), want %s", r.ID, r.Pipeline, r.Status, r.Error, want.status)
		}
		for _, st := range r.Steps {
			ws := want.steps[st.Name]
			if st.Status != ws.status {
				bad("run %s step %s ended %s (%s), want %s", r.ID, st.ID, st.Status, st.Error, ws.status)
				continue
			}
			if ws.stdout != "" && st.Logs.Stdout != ws.stdout {
				bad("run %s step %s stdout %q, want %q", r.ID, st.ID, st.Logs.Stdout, ws.stdout)
			}
			if ws.exit != 0 && (st.ExitCode == nil || *st.ExitCode != ws.exit) {
				bad("run %s step %s exit code %v, want %d", r.ID, st.ID, st.ExitCode, ws.exit)
			}
			if ws.tries > 0 && st.Attempts-st.LostAttempts != ws.tries {
				bad("run %s step %s made %d attempts, %d lost with a runner: want %d counted against its retry policy",
					r.ID, st.ID, st.Attempts, st.LostAttempts, ws.tries)
			}
			lostInHistory := 0
			for i, h := range st.History {
				if h.Attempt != i+1 {
					bad("run %s step %s history entry %d is attempt %d", r.ID, st.ID, i, h.Attempt)
				}
				if h.Reason == runner.ReasonRunnerLost {
					lostInHistory++
				}
			}
			if st.Status != event.StatusSkipped && len(st.History) != st.Attempts-1 {
				bad("run %s step %s: %d attempts but %d in its history", r.ID, st.ID, st.Attempts, len(st.History))
			}
			if lostInHistory != st.LostAttempts {
				bad("run %s step %s: lost_attempts %d but %d runner_lost entries in its history", r.ID, st.ID, st.LostAttempts, lostInHistory)
			}
		}
	}

	// No attempt reported twice, none lost; at most one start per attempt.
	type reports struct {
		started   int
		completed []*event.StepCompleted
	}
	byAttempt := map[attemptRef]*reports{}
	for _, e := range stepEvents(s.events.all()) {
		a := e.key()
		if !in[a.run] {
			continue
		}
		rp := byAttempt[a]
		if rp == nil {
			rp = &reports{}
			byAttempt[a] = rp
		}
		if e.started != nil {
			rp.started++
		} else {
			rp.completed = append(rp.completed, e.completed)
		}
	}
	for a, rp := range byAttempt {
		r := byID[a.run]
		st := r.Step(a.step)
		if st == nil || a.attempt < 1 || a.attempt > st.Attempts {
			bad("%s/%s: events of attempt %d, which the run never made", a.run, a.step, a.attempt)
			continue
		}
		if rp.started > 1 {
			bad("%s/%s attempt %d: %d step.started events", a.run, a.step, a.attempt, rp.started)
		}
		if len(rp.completed) > 1 {
			var ids []string
			for _, c := range rp.completed {
				ids = append(ids, c.Status+"/"+c.Reason+" by "+c.Runner)
			}
			bad("%s/%s attempt %d reported %d times: %v", a.run, a.step, a.attempt, len(rp.completed), ids)
		}
	}
	for _, r := range final {
		for _, st := range r.Steps {
			for n := 1; n <= st.Attempts; n++ {
				a := attemptRef{r.ID, st.ID, n}
				rp := byAttempt[a]
				if rp == nil {
					rp = &reports{}
				}
				status, reason, errMsg := st.Status, "", st.Error
				if n < st.Attempts {
					h := st.History[n-1]
					status, reason, errMsg = h.Status, h.Reason, h.Error
				}
				switch {
				case reason == runner.ReasonRunnerLost:
					if len(rp.completed) == 1 && rp.completed[0].Reason != runner.ReasonRunnerLost {
						bad("%s/%s attempt %d ended runner_lost, but its runner reported it %s", r.ID, st.ID, n, rp.completed[0].Status)
					}
				case len(rp.completed) == 0:
					bad("%s/%s attempt %d ended %s (%s) without a step.completed: a report was lost or the orchestrator gave up on it",
						r.ID, st.ID, n, status, errMsg)
				case rp.completed[0].Status != status:
					bad("%s/%s attempt %d was reported %s but the run shows %s", r.ID, st.ID, n, rp.completed[0].Status, status)
				}
			}
		}
	}

	// No step had two attempts executing at once, and no attempt ran
	// twice: each container the runners started, as the Docker Engine saw
	// it, ended before the next attempt of its step started.
	bySteps := map[[2]string][]containerLife{}
	for _, c := range s.docker.ofRuns(in) {
		if c.starts > 1 {
			bad("%s/%s attempt %d: container %s started %d times", c.ref.run, c.ref.step, c.ref.attempt, c.id[:12], c.starts)
		}
		k := [2]string{c.ref.run, c.ref.step}
		bySteps[k] = append(bySteps[k], c)
	}
	for k, cs := range bySteps {
		seen := map[int]bool{}
		for _, c := range cs {
			if c.start.IsZero() {
				continue
			}
			if seen[c.ref.attempt] {
				bad("%s/%s attempt %d ran in more than one container", k[0], k[1], c.ref.attempt)
			}
			seen[c.ref.attempt] = true
			if c.die.IsZero() {
				bad("%s/%s attempt %d: container %s never stopped", k[0], k[1], c.ref.attempt, c.id[:12])
			}
			for _, o := range cs {
				if o.ref.attempt > c.ref.attempt && !o.start.IsZero() && (c.die.IsZero() || o.start.Before(c.die)) {
					bad("%s/%s: attempt %d started at %s while attempt %d was still executing (container %s died at %s)",
						k[0], k[1], o.ref.attempt, o.start.Format("15:04:05.000"), c.ref.attempt, c.id[:12], c.die.Format("15:04:05.000"))
				}
			}
		}
		r := byID[k[0]]
		if st := r.Step(k[1]); st != nil && st.Status == event.StatusSucceeded && !seen[st.Attempts] {
			bad("%s/%s succeeded on attempt %d, of which the Docker Engine saw no container start", k[0], k[1], st.Attempts)
		}
	}
	for _, r := range final {
		for _, st := range r.Steps {
			if st.Status == event.StatusSucceeded && len(bySteps[[2]string{r.ID, st.ID}]) == 0 {
				bad("%s/%s succeeded without any container", r.ID, st.ID)
			}
		}
	}
	return problems
}

// checkAudit waits until the audit trail holds every message of the steps
// and events streams, then checks that it holds each exactly once, nothing
// else from those streams, and that the chain verifies.
func (s *faultSuite) checkAudit() []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	for _, l := range []*streamLog{s.events, s.steps, s.dlq} {
		if why, ok := pollUntil(30*time.Second, func() (bool, string) { return l.caughtUp(s.ctx, s.js) }); !ok {
			return []string{"reading the streams: " + why}
		}
	}
	type key struct{ stream, source, id string }
	want := map[key]int{}
	for _, l := range []*streamLog{s.events, s.steps} {
		for _, m := range l.all() {
			want[key{m.stream, m.source, m.id}]++
		}
	}
	for k, n := range want {
		if n > 1 {
			bad("%s holds event %s from %s %d times", k.stream, k.id, k.source, n)
		}
	}
	dead := s.dlq.all()
	for _, m := range dead[min(s.dlqReported, len(dead)):] {
		bad("dead-lettered at %s: %s %s (%s): %s", m.at.Format("15:04:05.000"), m.typ, m.id, m.subject, m.reason)
	}
	s.dlqReported = len(dead)
	ac := audit.NewClient("http://"+s.auditAt, &http.Client{Timeout: 30 * time.Second, Transport: &auth.BearerTransport{Token: s.token}})
	var have map[key]int
	var total int
	why, ok := pollUntil(120*time.Second, func() (bool, string) {
		have, total = map[key]int{}, 0
		f := auditstore.Filter{Limit: 1000}
		for {
			ctx, cancel := context.WithTimeout(s.ctx, 30*time.Second)
			p, err := ac.Query(ctx, f)
			cancel()
			if err != nil {
				return false, err.Error()
			}
			for _, rec := range p.Records {
				total++
				if rec.Stream == event.StreamEvents || rec.Stream == event.StreamSteps {
					have[key{rec.Stream, rec.Source, rec.ID}]++
				}
			}
			if p.NextCursor == "" {
				break
			}
			f.Cursor = p.NextCursor
		}
		missing := 0
		for k := range want {
			if have[k] == 0 {
				missing++
			}
		}
		return missing == 0, fmt.Sprintf("%d of %d events not in the trail yet", missing, len(want))
	})
	if !ok {
		bad("the trail is missing events after 120s: %s", why)
	}
	// The trail may by now hold events published after want was taken:
	// read the streams up to now before calling anything extra.
	for _, l := range []*streamLog{s.events, s.steps} {
		if why, ok := pollUntil(30*time.Second, func() (bool, string) { return l.caughtUp(s.ctx, s.js) }); !ok {
			bad("reading the streams: %s", why)
		}
		for _, m := range l.all() {
			if k := (key{m.stream, m.source, m.id}); want[k] == 0 {
				want[k] = -1 // published later: present, but not required
			}
		}
	}
	for k, n := range have {
		if want[k] == 0 {
			bad("the trail holds %s %s from %s, which the stream does not", k.stream, k.id, k.source)
		}
		if n > 1 {
			bad("the trail holds %s %s from %s %d times", k.stream, k.id, k.source, n)
		}
	}
	ctx, cancel := context.WithTimeout(s.ctx, 60*time.Second)
	v, err := ac.Verify(ctx)
	cancel()
	switch {
	case err != nil:
		bad("verify: %v", err)
	case !v.OK:
		bad("the chain does not verify: %+v", v.Bad)
	case v.Records < int64(total):
		bad("verify checked %d records, the trail lists %d", v.Records, total)
	}
	s.t.Logf("audit: %d records; every one of the %d stream events once; chain verified over %d records", total, len(want), v.Records)
	return problems
}

// checkReplicas checks that every stream (KV buckets included) has three
// replicas: no service starting or restarting lowered one.
func (s *faultSuite) checkReplicas(when string) {
	ctx, cancel := context.WithTimeout(s.ctx, 30*time.Second)
	defer cancel()
	names := s.js.StreamNames(ctx)
	n := 0
	for name := range names.Name() {
		n++
		st, err := s.js.Stream(ctx, name)
		if err != nil {
			s.t.Errorf("stream %s: %v", name, err)
			continue
		}
		if r := st.CachedInfo().Config.Replicas; r != 3 {
			s.t.Errorf("%s: stream %s has %d replicas, want 3", when, name, r)
		}
	}
	if err := names.Err(); err != nil {
		s.t.Errorf("%s: list streams: %v", when, err)
	}
	if n == 0 {
		s.t.Errorf("%s: no streams", when)
	}
}

// finalChecks runs once every run has ended.
func (s *faultSuite) finalChecks() {
	s.checkReplicas("at the end, after every restart")
	why, ok := pollUntil(30*time.Second, func() (bool, string) {
		left := s.containers()
		return len(left) == 0, fmt.Sprintf("%d containers of the suite's runs remain, e.g. %v", len(left), left)
	})
	if !ok {
		s.t.Errorf("containers left behind: %s", why)
	}
}

// containers lists the containers of the suite's runs that still exist.
func (s *faultSuite) containers() []string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, err := s.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", engine.LabelRun))})
	if err != nil {
		return []string{err.Error()}
	}
	runs := s.tracked()
	var out []string
	for _, c := range list {
		if _, ok := runs[c.Labels[engine.LabelRun]]; ok {
			out = append(out, c.ID[:12]+" "+c.Labels[engine.LabelStep]+"#"+c.Labels[engine.LabelAttempt]+" "+c.State)
		}
	}
	return out
}

func (s *faultSuite) removeContainers() {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	list, err := s.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", engine.LabelRun))})
	if err != nil {
		return
	}
	runs := s.tracked()
	for _, c := range list {
		if _, ok := runs[c.Labels[engine.LabelRun]]; ok {
			_ = s.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
		}
	}
}

// report logs the figures docs/reliability.md quotes.
func (s *faultSuite) report(total time.Duration) {
	var b strings.Builder
	var all, requeue []time.Duration
	byKind := map[string][]time.Duration{}
	fmt.Fprintf(&b, "\n| # | fault | killed | runs in flight | recovery | detail |\n|---|---|---|---|---|---|\n")
	for _, r := range s.results {
		fmt.Fprintf(&b, "| %d | %s | %s | %d | %s | %s |\n", r.n, r.kind, r.target, r.inflight, r.recovery.Round(10*time.Millisecond), r.detail)
		all = append(all, r.recovery)
		byKind[r.kind] = append(byKind[r.kind], r.recovery)
		if r.kind == faultRunner {
			requeue = append(requeue, r.requeued)
		}
	}
	row := func(name string, d []time.Duration) {
		if len(d) > 0 {
			fmt.Fprintf(&b, "| %s | %d | %s | %s | %s |\n", name, len(d), percentile(d, 50).Round(10*time.Millisecond),
				percentile(d, 99).Round(10*time.Millisecond), percentile(d, 100).Round(10*time.Millisecond))
		}
	}
	fmt.Fprintf(&b, "\n| recovery | faults | p50 | p99 | max |\n|---|---|---|---|---|\n")
	for _, k := range faultKinds {
		row(k, byKind[k])
	}
	row("docker runner, until requeued", requeue)
	row("all faults", all)
	st := s.totals()
	fmt.Fprintf(&b, "\n%d runs (%d succeeded, %d failed as their pipeline must), %d steps, %d attempts (%d lost with a runner, %d of them of live runners), "+
		"%d containers, %d events on ANSFLOW_EVENTS and ANSFLOW_STEPS, %d faults; whole test %s\n",
		st.runs, st.succeeded, st.failed, st.steps, st.attempts, st.lost, st.liveLost, st.containers, st.events, len(s.results), total.Round(time.Second))
	s.t.Logf("fault suite figures:%s", b.String())
}

type faultTotals struct {
	runs, succeeded, failed, steps, attempts, lost, liveLost, containers, events int
}

// totals sums up the ended runs the suite checked.
func (s *faultSuite) totals() faultTotals {
	var t faultTotals
	s.mu.Lock()
	final := make([]*apiv1.Run, 0, len(s.final))
	for _, r := range s.final {
		final = append(final, r)
	}
	s.mu.Unlock()
	killed := map[attemptRef]bool{}
	for _, r := range s.results {
		for _, a := range r.lostRefs {
			killed[a] = true
		}
	}
	in := map[string]bool{}
	for _, r := range final {
		in[r.ID] = true
		t.runs++
		switch r.Status {
		case event.StatusSucceeded:
			t.succeeded++
		case event.StatusFailed:
			t.failed++
		}
		t.steps += len(r.Steps)
		for _, st := range r.Steps {
			t.attempts += st.Attempts
			t.lost += st.LostAttempts
			for _, h := range st.History {
				if h.Reason == runner.ReasonRunnerLost && !killed[attemptRef{r.ID, st.ID, h.Attempt}] {
					t.liveLost++
				}
			}
		}
	}
	t.containers = len(s.docker.ofRuns(in))
	t.events = len(s.events.all()) + len(s.steps.all())
	return t
}

// percentile is the nearest-rank p-th percentile of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func sum(ds []time.Duration) time.Duration {
	var t time.Duration
	for _, d := range ds {
		t += d
	}
	return t
}
