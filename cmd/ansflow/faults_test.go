package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	dockerclient "github.com/docker/docker/client"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/services/audit/audit"
	auditstore "github.com/ansflow/ansflow/services/audit/store"
	"github.com/ansflow/ansflow/services/docker-runner/dockertest"
	"github.com/ansflow/ansflow/services/docker-runner/engine"
	"github.com/ansflow/ansflow/services/pipeline/api"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// Settings of the fault suite. The lease is short so that a lost runner is
// noticed within seconds; the no-runner timeout keeps its default (10m), so
// a step never fails merely because its pool was briefly down.
const (
	faultLease      = 3 * time.Second
	faultLeaseCheck = 2 * time.Second
	faultSlots      = 3 // per runner; two runners
	// faultBudget is how long the suite may take before it stops starting
	// more rounds of faults (ANSFLOW_FAULTS_BUDGET overrides it).
	faultBudget = 5 * time.Minute
)

// The four faults, injected in turn while steps run.
const (
	faultRunner   = "docker runner"
	faultPipeline = "pipeline instance"
	faultAudit    = "audit service"
	faultNATS     = "NATS node"
)

var faultKinds = []string{faultRunner, faultPipeline, faultAudit, faultNATS}

// TestFaults is the fault suite (make test-faults; method and figures in
// docs/reliability.md): three clustered nats-server processes with R3
// streams, two pipeline service instances, two docker runners of one pool
// and the audit service, each its own process. Waves of concurrent runs with
// more parallel work than runner slots, steps shorter and longer than a
// lease, are triggered over the REST API; during each wave one process is
// SIGKILLed mid-step (a runner, a pipeline instance, the audit service, a
// NATS node, in turn) and started again. After each wave every run must have
// reached its expected end, no step may have had two attempts executing at
// once (from the Docker Engine's container events), every attempt must have
// been reported at most once and no report lost (from ANSFLOW_EVENTS), and
// the audit trail must hold every event once and verify. Recovery times are
// logged and summed up at the end.
func TestFaults(t *testing.T) {
	began := time.Now()
	budget := faultBudget
	if v := os.Getenv("ANSFLOW_FAULTS_BUDGET"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("ANSFLOW_FAULTS_BUDGET: %v", err)
		}
		budget = d
	}
	rounds := 2
	if v := os.Getenv("ANSFLOW_FAULTS_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("ANSFLOW_FAULTS_ROUNDS %q: want a positive number", v)
		}
		rounds = n
	}

	s := startFaultSuite(t)
	t.Logf("setup (build, NATS cluster, services): %s", time.Since(began).Round(100*time.Millisecond))

	var waveTimes []time.Duration
	for round := 0; round < rounds; round++ {
		for _, kind := range faultKinds {
			if round > 0 && len(waveTimes) > 0 {
				avg := sum(waveTimes) / time.Duration(len(waveTimes))
				if time.Since(began)+avg > budget {
					t.Logf("time budget %s: not repeating the %s fault (round %d)", budget, kind, round+1)
					continue
				}
			}
			w0 := time.Now()
			s.wave(kind, round)
			waveTimes = append(waveTimes, time.Since(w0))
			if t.Failed() {
				s.report(time.Since(began))
				return
			}
		}
	}
	s.finalChecks()
	s.report(time.Since(began))
}

// faultSuite is the running system and what the suite observed of it.
type faultSuite struct {
	t       *testing.T
	ctx     context.Context
	js      jetstream.JetStream
	cli     *dockerclient.Client
	image   string
	nodes   []*natsNode
	pipes   []*faultProc
	apis    []string
	runners map[string]*faultProc
	ids     []string // runner ids
	audit   *faultProc
	auditAt string

	tl                 *runTimeline
	events, steps, dlq *streamLog
	docker             *dockerLog

	pipelines map[string]*pipelineExpect
	runs      map[string]string // run id -> pipeline
	results   []faultResult
	apiTurn   int
}

// faultResult is what one fault did.
type faultResult struct {
	wave     int
	kind     string
	target   string
	killedAt time.Time
	// recovery is measured from the kill; see docs/reliability.md for what
	// counts as recovered for each kind of fault.
	recovery time.Duration
	detail   string
	runs     int
	steps    int
	attempts int
	lost     int
	duration time.Duration
}

func startFaultSuite(t *testing.T) *faultSuite {
	cli := dockertest.Client(t)
	image := dockertest.BusyboxImage(t, cli)
	bin := buildFaultBinaries(t)
	logDir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s := &faultSuite{t: t, ctx: ctx, cli: cli, image: image, runners: map[string]*faultProc{},
		runs: map[string]string{}, pipelines: faultPipelines(image)}

	s.nodes = startNATSCluster(t, filepath.Join(bin, "nats-server"), logDir)
	var urls []string
	for _, n := range s.nodes {
		urls = append(urls, n.url())
	}
	natsURLs := strings.Join(urls, ",")
	nc, err := nats.Connect(natsURLs, nats.Name("ansflow-faults"), nats.MaxReconnects(-1), nats.ReconnectWait(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if s.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}

	// Registered before the runners start, so it runs after they stopped:
	// nothing the suite started outlives it.
	t.Cleanup(s.removeContainers)
	s.docker = followDocker(ctx, cli)

	for i := range 2 {
		addr := freePort(t)
		p := newFaultProc(t, logDir, fmt.Sprintf("pipeline-%d", i+1), filepath.Join(bin, "pipeline"),
			"--nats", natsURLs, "--http", addr, "--replicas", "3", "--lease-check", faultLeaseCheck.String())
		p.start()
		s.pipes, s.apis = append(s.pipes, p), append(s.apis, addr)
		if i == 0 {
			s.waitAPI(0) // the first instance creates the streams and buckets
		}
	}
	s.waitAPI(1)
	for _, id := range []string{"runner-a", "runner-b"} {
		p := newFaultProc(t, logDir, id, filepath.Join(bin, "docker-runner"),
			"--nats", natsURLs, "--pools", "default", "--id", id, "--concurrency", strconv.Itoa(faultSlots),
			"--lease", faultLease.String(), "--heartbeat", "1s", "--replicas", "3", "--grace", "1s", "--work-dir", t.TempDir())
		p.start()
		s.runners[id] = p
		s.ids = append(s.ids, id)
	}
	s.auditAt = freePort(t)
	s.audit = newFaultProc(t, logDir, "audit", filepath.Join(bin, "audit"),
		"--nats", natsURLs, "--data-dir", t.TempDir(), "--http", s.auditAt, "--replicas", "3")
	s.audit.start()
	waitTCP(t, s.auditAt)

	if s.tl, err = watchRunTimeline(ctx, s.js); err != nil {
		t.Fatal(err)
	}
	s.events = followStream(ctx, s.js, event.StreamEvents)
	s.steps = followStream(ctx, s.js, event.StreamSteps)
	s.dlq = followStream(ctx, s.js, event.StreamDLQ)

	waitFor(t, 30*time.Second, "both runners online", func() (bool, string) {
		kv, err := s.js.KeyValue(ctx, runner.RunnersBucket)
		if err != nil {
			return false, err.Error()
		}
		for _, id := range s.ids {
			if _, err := kv.Get(ctx, event.KindDocker+"."+id); err != nil {
				return false, id + ": " + err.Error()
			}
		}
		return true, ""
	})
	for _, p := range s.pipelines {
		if err := s.callAPI(func(ctx context.Context, c *client) error {
			_, err := c.applyPipeline(ctx, p.name+".yaml", []byte(p.yaml))
			return err
		}); err != nil {
			t.Fatalf("apply %s: %v", p.name, err)
		}
	}
	s.checkReplicas("at start")
	return s
}

// pipelineExpect is a pipeline of the load and the end each of its runs
// must reach.
type pipelineExpect struct {
	name, yaml string
	status     string
	steps      map[string]stepExpect
	perWave    int
}

type stepExpect struct {
	status string
	stdout string
	exit   int
	// tries is the number of attempts that count against the retry policy
	// (attempts minus those lost with a runner), 0 for unchecked.
	tries int
}

// faultPipelines is the load: docker_run steps of mixed durations, some in
// parallel, some longer than a lease, and a pipeline that must fail.
func faultPipelines(image string) map[string]*pipelineExpect {
	type st struct {
		name    string
		order   int
		command string
		extra   string
		want    stepExpect
	}
	ok := func(out string) stepExpect {
		return stepExpect{status: event.StatusSucceeded, stdout: out + "\n", tries: 1}
	}
	mk := func(name, status string, perWave int, steps []st) *pipelineExpect {
		var b strings.Builder
		fmt.Fprintf(&b, "pipeline:\n  name: %s\n  steps:\n", name)
		p := &pipelineExpect{name: name, status: status, steps: map[string]stepExpect{}, perWave: perWave}
		for _, s := range steps {
			fmt.Fprintf(&b, "    - {name: %s, type: docker_run, order: %d, docker_image: %q, command: %q%s}\n", s.name, s.order, image, s.command, s.extra)
			p.steps[s.name] = s.want
		}
		p.yaml = b.String()
		return p
	}
	ps := []*pipelineExpect{
		mk("faults-mixed", event.StatusSucceeded, 3, []st{
			{"lint", 1, "echo lint", "", ok("lint")},
			{"unit", 1, "sleep 0.5; echo unit", "", ok("unit")},
			{"build", 2, "sleep 8; echo build", "", ok("build")},
			{"integration", 2, "sleep 2; echo integration", "", ok("integration")},
			{"package", 3, "echo package", "", ok("package")},
		}),
		mk("faults-fanout", event.StatusSucceeded, 2, []st{
			{"a", 1, "sleep 1; echo a", "", ok("a")},
			{"b", 1, "sleep 4; echo b", "", ok("b")},
			{"c", 1, "sleep 6; echo c", "", ok("c")},
			{"d", 1, "echo d", "", ok("d")},
			{"report", 2, "echo report", "", ok("report")},
		}),
		mk("faults-failing", event.StatusFailed, 1, []st{
			{"ok", 1, "echo ok", "", ok("ok")},
			{"flaky", 2, "echo flaky; exit 3", ", retry_policy: {max_retries: 1, retry_delay_seconds: 1}",
				stepExpect{status: event.StatusFailed, stdout: "flaky\n", exit: 3, tries: 2}},
			{"tolerated", 2, "exit 1", ", continue_on_failure: true", stepExpect{status: event.StatusFailed, exit: 1, tries: 1}},
			{"after", 3, "echo after", "", stepExpect{status: event.StatusSkipped}},
		}),
	}
	out := map[string]*pipelineExpect{}
	for _, p := range ps {
		out[p.name] = p
	}
	return out
}

// callAPI calls fn against a running pipeline instance, trying the other
// when one does not answer, until it succeeds or 30s passed. A 4xx answer
// is final.
func (s *faultSuite) callAPI(fn func(ctx context.Context, c *client) error) error {
	deadline := time.Now().Add(30 * time.Second)
	var last error
	for {
		for range s.apis {
			i := s.apiTurn % len(s.apis)
			s.apiTurn++
			if !s.pipes[i].running() {
				continue
			}
			ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
			err := fn(ctx, newClient("http://"+s.apis[i]))
			cancel()
			if err == nil {
				return nil
			}
			var ae *apiError
			if errors.As(err, &ae) && ae.Status < 500 {
				return err
			}
			last = err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no pipeline instance answered within 30s: %w", last)
		}
		sleepCtx(s.ctx, 200*time.Millisecond)
	}
}

func (s *faultSuite) waitAPI(i int) {
	s.t.Helper()
	waitFor(s.t, 60*time.Second, "pipeline instance "+s.pipes[i].name, func() (bool, string) {
		if !s.pipes[i].running() {
			s.t.Fatalf("%s exited:\n%s", s.pipes[i].name, tailFile(s.pipes[i].log, 30))
		}
		resp, err := http.Get("http://" + s.apis[i] + "/healthz")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
}

// trigger starts one wave of runs and returns their ids.
func (s *faultSuite) trigger() []string {
	s.t.Helper()
	var names []string
	for name := range s.pipelines {
		names = append(names, name)
	}
	sort.Strings(names)
	var ids []string
	for n := 0; ; n++ {
		more := false
		for _, name := range names {
			if p := s.pipelines[name]; n < p.perWave {
				more = true
				var run *store.Run
				if err := s.callAPI(func(ctx context.Context, c *client) error {
					var err error
					run, err = c.trigger(ctx, name, api.TriggerBody{})
					return err
				}); err != nil {
					s.t.Fatalf("trigger %s: %v", name, err)
				}
				ids = append(ids, run.ID)
				s.runs[run.ID] = name
			}
		}
		if !more {
			return ids
		}
	}
}

// current returns the newest revision of each run.
func (s *faultSuite) current(ids []string) []*store.Run {
	var out []*store.Run
	for _, id := range ids {
		if r := s.tl.last(id); r != nil {
			out = append(out, r)
		}
	}
	return out
}

// runningSteps lists the steps of ids running for at least minAge.
func (s *faultSuite) runningSteps(ids []string, minAge time.Duration) []runningStep {
	var out []runningStep
	now := time.Now()
	for _, r := range s.current(ids) {
		for _, st := range r.Steps {
			if st.Status == event.StatusRunning && st.Runner != "" && st.StartedAt != nil && now.Sub(*st.StartedAt) >= minAge {
				out = append(out, runningStep{run: r.ID, step: st.ID, attempt: st.Attempts, runner: st.Runner, since: *st.StartedAt})
			}
		}
	}
	return out
}

type runningStep struct {
	run, step, runner string
	attempt           int
	since             time.Time
}

// longSteps are the steps that run longer than a lease.
var longSteps = map[string]bool{"build": true, "b": true, "c": true}

// wave triggers a wave of runs, injects one fault while its steps run,
// waits for every run to end and checks what happened.
func (s *faultSuite) wave(kind string, round int) {
	t := s.t
	w0 := time.Now()
	ids := s.trigger()
	waveNo := len(s.results) + 1
	// Mid-step: a step longer than a lease has been running for a second
	// and more steps are running or queued behind it.
	var target []runningStep
	waitFor(t, 90*time.Second, "a long step running mid-way in wave "+strconv.Itoa(waveNo), func() (bool, string) {
		running := s.runningSteps(ids, 0)
		target = target[:0]
		for _, rs := range s.runningSteps(ids, time.Second) {
			if longSteps[rs.step] && time.Since(rs.since) < 4*time.Second {
				target = append(target, rs)
			}
		}
		return len(target) > 0 && len(running) >= 3, fmt.Sprintf("%d steps running, %d long ones mid-way", len(running), len(target))
	})
	res := faultResult{wave: waveNo, kind: kind}
	switch kind {
	case faultRunner:
		s.killRunner(ids, target[0].runner, round, &res)
	case faultPipeline:
		s.killPipeline(ids, round%len(s.pipes), &res)
	case faultAudit:
		s.killAudit(ids, &res)
	case faultNATS:
		s.killNATS(ids, round, &res)
	}
	final := s.waitEnd(ids)
	res.duration = time.Since(w0)
	for _, r := range final {
		res.runs++
		res.steps += len(r.Steps)
		for _, st := range r.Steps {
			res.attempts += st.Attempts
			res.lost += st.LostAttempts
		}
	}
	switch kind {
	case faultRunner:
		s.runnerRecovery(ids, final, &res)
	case faultPipeline, faultNATS:
		rec, detail := s.stall(ids, res.killedAt)
		res.recovery, res.detail = rec, strings.TrimPrefix(res.detail+"; "+detail, "; ")
	}
	s.results = append(s.results, res)
	t.Logf("wave %d: %s %s killed; recovered after %s (%s); %d runs, %d steps, %d attempts (%d lost with a runner), wave took %s",
		waveNo, kind, res.target, res.recovery.Round(time.Millisecond), res.detail, res.runs, res.steps, res.attempts, res.lost,
		res.duration.Round(100*time.Millisecond))
	for _, p := range s.checkWave(ids, final) {
		t.Errorf("wave %d (%s killed): %s", waveNo, kind, p)
	}
	for _, p := range s.checkAudit() {
		t.Errorf("wave %d (%s killed): audit: %s", waveNo, kind, p)
	}
}

// killRunner SIGKILLs runner id while it executes a long step. In the first
// round it is started again at once, so its own new process may take its
// attempts over; in later rounds it comes back only once every attempt it
// held was fenced by the other runner or the orchestrator's lease check.
func (s *faultSuite) killRunner(ids []string, id string, round int, res *faultResult) {
	held := map[attemptRef]bool{}
	for _, rs := range s.runningSteps(ids, 0) {
		if rs.runner == id {
			held[attemptRef{rs.run, rs.step, rs.attempt}] = true
		}
	}
	res.target = id
	res.killedAt = s.runners[id].kill()
	if round == 0 {
		s.runners[id].start()
		res.detail = "restarted at once"
		return
	}
	why, ok := pollUntil(60*time.Second, func() (bool, string) {
		for a := range held {
			r := s.tl.last(a.run)
			if r == nil {
				continue
			}
			st := r.Step(a.step)
			if st != nil && st.Attempts == a.attempt && (st.Status == event.StatusRunning || st.Status == event.StatusQueued) {
				return false, fmt.Sprintf("%s/%s attempt %d is still %s", a.run, a.step, a.attempt, st.Status)
			}
		}
		return true, ""
	})
	if !ok {
		s.t.Errorf("the attempts of killed runner %s were not fenced within 60s: %s", id, why)
	}
	s.runners[id].start()
	res.detail = fmt.Sprintf("restarted %s after the kill, once its %d attempts were fenced", time.Since(res.killedAt).Round(100*time.Millisecond), len(held))
}

// runnerRecovery measures a runner fault: from the kill until every step
// whose attempt was lost with the runner has a new attempt running (or
// already ended).
func (s *faultSuite) runnerRecovery(ids []string, final []*store.Run, res *faultResult) {
	var lost []attemptRef
	others := 0
	for _, r := range final {
		for _, st := range r.Steps {
			for _, h := range st.History {
				if h.Reason != runner.ReasonRunnerLost {
					continue
				}
				if h.Runner == res.target {
					lost = append(lost, attemptRef{r.ID, st.ID, h.Attempt})
				} else {
					others++
				}
			}
		}
	}
	if len(lost) == 0 {
		s.t.Errorf("wave %d: runner %s was killed mid-step but no attempt of it is recorded lost (runner_lost) in the runs' history", res.wave, res.target)
		return
	}
	var worst time.Duration
	var which attemptRef
	for _, a := range lost {
		at, ok := s.tl.first(a.run, func(r *store.Run) bool {
			st := r.Step(a.step)
			return st != nil && st.Attempts > a.attempt && st.Status != event.StatusQueued && st.Status != event.StatusPending
		})
		if !ok {
			s.t.Errorf("wave %d: %s/%s never got an attempt after lost attempt %d", res.wave, a.run, a.step, a.attempt)
			continue
		}
		if d := at.Sub(res.killedAt); d > worst {
			worst, which = d, a
		}
	}
	res.recovery = worst
	res.detail = fmt.Sprintf("%s; %d attempts lost with it, the last to run again: %s#%d", res.detail, len(lost), which.step, which.attempt+1)
	if others > 0 {
		res.detail += fmt.Sprintf("; %d attempts of other runners taken over", others)
	}
}

// killPipeline SIGKILLs pipeline instance i and starts it again once the
// other instance has moved a run on alone.
func (s *faultSuite) killPipeline(ids []string, i int, res *faultResult) {
	p := s.pipes[i]
	res.target = p.name
	res.killedAt = p.kill()
	if why, ok := pollUntil(30*time.Second, func() (bool, string) {
		return s.tl.storedSince(res.killedAt.Add(time.Second)), "no run document written since the kill"
	}); !ok {
		s.t.Errorf("with %s down, the other instance moved no run on within 30s: %s", p.name, why)
	}
	p.start()
	s.waitAPI(i)
	res.detail = fmt.Sprintf("restarted and serving %s after the kill", time.Since(res.killedAt).Round(100*time.Millisecond))
}

// killNATS SIGKILLs the node leading a stream the runs depend on (the
// lifecycle events in the first round, the attempt claims in the second)
// and starts it again on the same store directory once runs moved on
// without it.
func (s *faultSuite) killNATS(ids []string, round int, res *faultResult) {
	asset := []string{event.StreamEvents, "KV_" + runner.AttemptsBucket}[round%2]
	node := s.nodes[round%len(s.nodes)]
	if st, err := s.js.Stream(s.ctx, asset); err == nil {
		if info, err := st.Info(s.ctx); err == nil && info.Cluster != nil {
			for _, n := range s.nodes {
				if n.name == info.Cluster.Leader {
					node = n
				}
			}
		}
	}
	res.target = node.name + " (leader of " + asset + ")"
	res.killedAt = node.proc.kill()
	if why, ok := pollUntil(30*time.Second, func() (bool, string) {
		return s.tl.storedSince(res.killedAt.Add(time.Second)), "no run document written since the kill"
	}); !ok {
		s.t.Errorf("with %s down, no run moved on within 30s: %s", node.name, why)
	}
	node.proc.start()
	back := time.Since(res.killedAt)
	waitFor(s.t, 90*time.Second, node.name+" current again", func() (bool, string) { return node.healthy(), "healthz not ok" })
	res.detail = fmt.Sprintf("restarted after %s, current again after %s", back.Round(100*time.Millisecond),
		time.Since(res.killedAt).Round(100*time.Millisecond))
}

// killAudit SIGKILLs the audit service and starts it again once events
// were published without it. Recovery is the time from the kill until the
// trail again holds every event published before the kill (its durable
// consumers acknowledged past them).
func (s *faultSuite) killAudit(ids []string, res *faultResult) {
	last := map[string]uint64{}
	for _, name := range []string{event.StreamEvents, event.StreamSteps} {
		last[name] = s.lastSeq(name)
	}
	res.target = "audit"
	res.killedAt = s.audit.kill()
	if why, ok := pollUntil(30*time.Second, func() (bool, string) {
		return s.lastSeq(event.StreamEvents) > last[event.StreamEvents], "no event published since the kill"
	}); !ok {
		s.t.Errorf("no event published within 30s of killing the audit service: %s", why)
	}
	s.audit.start()
	restarted := time.Since(res.killedAt)
	why, ok := pollUntil(120*time.Second, func() (bool, string) {
		for stream, seq := range last {
			c, err := s.js.Consumer(s.ctx, stream, audit.Config{DurablePrefix: "audit"}.Durable(stream))
			if err != nil {
				return false, err.Error()
			}
			info, err := c.Info(s.ctx)
			if err != nil {
				return false, err.Error()
			}
			if info.AckFloor.Stream < seq {
				return false, fmt.Sprintf("%s acknowledged up to %d of %d", info.Name, info.AckFloor.Stream, seq)
			}
		}
		return true, ""
	})
	if !ok {
		s.t.Errorf("the restarted audit service did not catch up within 120s: %s", why)
	}
	res.recovery = time.Since(res.killedAt)
	res.detail = fmt.Sprintf("restarted after %s; the trail held every event published before the kill after %s",
		restarted.Round(100*time.Millisecond), res.recovery.Round(100*time.Millisecond))
}

func (s *faultSuite) lastSeq(stream string) uint64 {
	for range 50 {
		if st, err := s.js.Stream(s.ctx, stream); err == nil {
			if info, err := st.Info(s.ctx); err == nil {
				return info.State.LastSeq
			}
		}
		sleepCtx(s.ctx, 100*time.Millisecond)
	}
	s.t.Fatalf("stream %s unreadable for 5s", stream)
	return 0
}

// stall measures how long runs waited because of a fault: for every
// step.started and step.completed of the wave that happened from 2s before
// the kill to 30s after it, the time from the later of the event and the
// kill until the run document reflected it. The longest wait is the
// fault's recovery time: by then every run that was affected had made
// progress again.
func (s *faultSuite) stall(ids []string, killed time.Time) (time.Duration, string) {
	in := map[string]bool{}
	for _, id := range ids {
		in[id] = true
	}
	var worst time.Duration
	var which string
	var normal []time.Duration
	delayed := map[string]bool{}
	for _, e := range stepEvents(s.events.all()) {
		a := e.key()
		if !in[a.run] {
			continue
		}
		when := e.when()
		applied, ok := s.tl.first(a.run, func(r *store.Run) bool { return reflects(r, e) })
		if !ok {
			continue // checkWave reports it
		}
		if when.Before(killed.Add(-2 * time.Second)) {
			normal = append(normal, max(0, applied.Sub(when)))
			continue
		}
		if when.After(killed.Add(30*time.Second)) || applied.Before(killed) {
			continue
		}
		lag := applied.Sub(maxTime(when, killed))
		if lag > time.Second {
			delayed[a.run] = true
		}
		if lag > worst {
			kind := "started"
			if e.completed != nil {
				kind = "completed"
			}
			worst, which = lag, fmt.Sprintf("%s of %s#%d", kind, a.step, a.attempt)
		}
	}
	detail := fmt.Sprintf("longest wait: %s; %d runs waited over 1s", which, len(delayed))
	if len(normal) > 0 {
		detail += fmt.Sprintf("; before the kill events were applied within p50 %s, p99 %s",
			percentile(normal, 50).Round(time.Millisecond), percentile(normal, 99).Round(time.Millisecond))
	}
	return worst, detail
}

// reflects reports whether run document r shows what e reports.
func reflects(r *store.Run, e stepEvent) bool {
	if r.Terminal() {
		return true
	}
	a := e.key()
	st := r.Step(a.step)
	if st == nil {
		return false
	}
	if st.Attempts != a.attempt {
		return st.Attempts > a.attempt
	}
	if e.completed != nil {
		return st.Status != event.StatusQueued && st.Status != event.StatusRunning
	}
	return st.Status != event.StatusQueued
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// waitEnd waits until every run of ids has ended and returns the runs as
// GET /api/v1/runs/{id} shows them.
func (s *faultSuite) waitEnd(ids []string) []*store.Run {
	s.t.Helper()
	waitFor(s.t, 150*time.Second, "every run of the wave to end", func() (bool, string) {
		for _, id := range ids {
			r := s.tl.last(id)
			if r == nil || !r.Terminal() {
				return false, describeRun(id, r)
			}
		}
		return true, ""
	})
	var out []*store.Run
	for _, id := range ids {
		var run *store.Run
		if err := s.callAPI(func(ctx context.Context, c *client) error {
			var err error
			run, err = c.getRun(ctx, id)
			return err
		}); err != nil {
			s.t.Fatalf("get run %s: %v", id, err)
		}
		out = append(out, run)
	}
	return out
}

func describeRun(id string, r *store.Run) string {
	if r == nil {
		return "run " + id + " never stored"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "run %s (%s) is %s:", id, r.Pipeline, r.Status)
	for _, st := range r.Steps {
		if !st.Terminal() {
			fmt.Fprintf(&b, " %s %s#%d on %q %s;", st.ID, st.Status, st.Attempts, st.Runner, st.Waiting)
		}
	}
	return b.String()
}

// checkWave checks the wave's ended runs against the evidence.
func (s *faultSuite) checkWave(ids []string, final []*store.Run) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	in := map[string]bool{}
	byID := map[string]*store.Run{}
	for _, r := range final {
		in[r.ID], byID[r.ID] = true, r
	}

	// Every run reached the end its pipeline must reach.
	for _, r := range final {
		want := s.pipelines[r.Pipeline]
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
	for _, m := range s.dlq.all() {
		bad("dead-lettered: %s %s (%s): %s", m.typ, m.id, m.subject, m.reason)
	}
	ac := audit.NewClient("http://"+s.auditAt, &http.Client{Timeout: 30 * time.Second})
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

// finalChecks runs once every wave is over.
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
	var out []string
	for _, c := range list {
		if _, ok := s.runs[c.Labels[engine.LabelRun]]; ok {
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
	for _, c := range list {
		if _, ok := s.runs[c.Labels[engine.LabelRun]]; ok {
			_ = s.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
		}
	}
}

// report logs the figures docs/reliability.md quotes.
func (s *faultSuite) report(total time.Duration) {
	var b strings.Builder
	var runs, steps, attempts, lost int
	var all []time.Duration
	byKind := map[string][]time.Duration{}
	fmt.Fprintf(&b, "\n| wave | fault | killed | recovery | runs | steps | attempts | lost | wave time | detail |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range s.results {
		fmt.Fprintf(&b, "| %d | %s | %s | %s | %d | %d | %d | %d | %s | %s |\n", r.wave, r.kind, r.target,
			r.recovery.Round(10*time.Millisecond), r.runs, r.steps, r.attempts, r.lost, r.duration.Round(100*time.Millisecond), r.detail)
		runs, steps, attempts, lost = runs+r.runs, steps+r.steps, attempts+r.attempts, lost+r.lost
		all = append(all, r.recovery)
		byKind[r.kind] = append(byKind[r.kind], r.recovery)
	}
	fmt.Fprintf(&b, "\n| fault | count | p50 | p99 | max |\n|---|---|---|---|---|\n")
	for _, k := range faultKinds {
		if d := byKind[k]; len(d) > 0 {
			fmt.Fprintf(&b, "| %s | %d | %s | %s | %s |\n", k, len(d), percentile(d, 50).Round(10*time.Millisecond),
				percentile(d, 99).Round(10*time.Millisecond), percentile(d, 100).Round(10*time.Millisecond))
		}
	}
	if len(all) > 0 {
		fmt.Fprintf(&b, "| all | %d | %s | %s | %s |\n", len(all), percentile(all, 50).Round(10*time.Millisecond),
			percentile(all, 99).Round(10*time.Millisecond), percentile(all, 100).Round(10*time.Millisecond))
	}
	fmt.Fprintf(&b, "\n%d runs, %d steps, %d attempts (%d lost with a runner), %d faults; %d containers seen; whole test %s\n",
		runs, steps, attempts, lost, len(s.results), len(s.docker.ofRuns(keys(s.runs))), total.Round(time.Second))
	s.t.Logf("fault suite figures:%s", b.String())
}

func keys(m map[string]string) map[string]bool {
	out := map[string]bool{}
	for k := range m {
		out[k] = true
	}
	return out
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
