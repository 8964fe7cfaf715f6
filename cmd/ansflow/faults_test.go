package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dockerclient "github.com/docker/docker/client"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/services/audit/audit"
	"github.com/ansflow/ansflow/services/docker-runner/dockertest"
)

// Settings of the fault suite. The lease is short so that a lost runner is
// noticed within seconds; the no-runner timeout keeps its default (10m), so
// that no step fails merely because its pool was down for a moment.
const (
	faultLease      = 3 * time.Second
	faultLeaseCheck = 2 * time.Second
	faultSlots      = 3  // per runner; there are two
	faultInFlight   = 12 // runs kept in flight while faults are injected
	// faultBudget is how long the suite may run before it stops injecting
	// faults and drains (ANSFLOW_FAULTS_BUDGET overrides it).
	faultBudget = 5 * time.Minute
	// faultSpacing is the least time between one fault's recovery and the
	// next kill, so that each fault's effects can be told apart.
	faultSpacing = 5 * time.Second
	// faultDrain is what the suite reserves for the last runs to end and
	// the final checks.
	faultDrain = 75 * time.Second
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
// docs/reliability.md). Three clustered nats-server processes hold R3
// streams; two pipeline service instances, two docker runners of one pool
// and the audit service run as processes of their own. A load of concurrent
// runs, with more parallel work than runner slots and steps both shorter and
// longer than a lease, is kept in flight over the REST API while one process
// after another is SIGKILLed mid-step and started again: a runner, a
// pipeline instance, the audit service, a NATS node, then the same again.
//
// After each fault every run that ended so far must have ended as its
// pipeline must; no step may have had two attempts executing at once, and
// no attempt may have run twice (the Docker Engine's container events); no
// attempt may have been reported twice or its report lost
// (ANSFLOW_EVENTS against the run's history); and the audit trail must hold
// every event of the streams exactly once and verify. At the end every run
// must have ended, no container may be left and every stream must still
// have three replicas. Recovery times are logged per fault, with p50 and
// p99.
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
	rounds := 3
	if v := os.Getenv("ANSFLOW_FAULTS_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("ANSFLOW_FAULTS_ROUNDS %q: want a positive number", v)
		}
		rounds = n
	}

	s := startFaultSuite(t)
	t.Logf("setup (build, NATS cluster, services): %s", time.Since(began).Round(100*time.Millisecond))
	stopLoad := s.startLoad(faultInFlight)
	var took []time.Duration
faults:
	for round := range rounds {
		for _, kind := range faultKinds {
			if len(took) > 0 {
				if avg := sum(took) / time.Duration(len(took)); time.Since(began)+avg+faultDrain > budget {
					t.Logf("time budget %s reached: no more faults after %d", budget, len(s.results))
					break faults
				}
			}
			f0 := time.Now()
			s.fault(kind, round)
			took = append(took, time.Since(f0))
		}
	}
	stopLoad()
	s.drain()
	s.measureStalls()
	s.attributeLost()
	s.finalChecks()
	s.report(time.Since(began))
}

// faultSuite is the running system and what the suite observed of it.
type faultSuite struct {
	t       *testing.T
	ctx     context.Context
	js      jetstream.JetStream
	cli     *dockerclient.Client
	nodes   []*natsNode
	pipes   []*faultProc
	apis    []string
	runners map[string]*faultProc
	ids     []string // runner ids
	audit   *faultProc
	auditAt string
	// token is the pipeline instances' admin token (--admin-token-file).
	token string

	tl                 *runTimeline
	events, steps, dlq *streamLog
	docker             *dockerLog
	claims             *claimLog
	attemptsKV         jetstream.KeyValue

	pipelines map[string]*pipelineExpect
	apiTurn   atomic.Int64
	results   []*faultResult
	lastKill  string    // runner killed last
	settled   time.Time // when the last fault was recovered from
	// dlqReported is how many dead letters were already reported.
	dlqReported int

	mu    sync.Mutex
	runs  map[string]string     // run id -> pipeline, every run triggered
	final map[string]*apiv1.Run // ended runs, as checked
}

// faultResult is what one fault did.
type faultResult struct {
	n        int
	kind     string
	target   string
	killedAt time.Time
	// recovery is measured from the kill; what counts as recovered depends
	// on the kind of fault (see docs/reliability.md).
	recovery time.Duration
	// requeued is, for a runner, the time until every attempt it lost had
	// a new attempt queued (recovery adds the wait for a free slot).
	requeued time.Duration
	detail   string
	inflight int
	lostRefs []attemptRef // attempts lost with a killed runner
	liveLost int          // attempts of live runners taken over meanwhile
}

func startFaultSuite(t *testing.T) *faultSuite {
	cli := dockertest.Client(t)
	image := dockertest.BusyboxImage(t, cli)
	bin := buildFaultBinaries(t)
	logDir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s := &faultSuite{t: t, ctx: ctx, cli: cli, runners: map[string]*faultProc{},
		runs: map[string]string{}, final: map[string]*apiv1.Run{}, pipelines: faultPipelines(image)}

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
	// no container of the suite outlives it.
	t.Cleanup(s.removeContainers)
	s.docker = followDocker(ctx, cli)

	adminFile, admin := adminTokenFileFor(t)
	s.token = admin
	for i := range 2 {
		addr := freePort(t)
		p := newFaultProc(t, logDir, fmt.Sprintf("pipeline-%d", i+1), filepath.Join(bin, "pipeline"),
			"--nats", natsURLs, "--http", addr, "--ops-addr", freePort(t), "--replicas", "3", "--lease-check", faultLeaseCheck.String(), "--admin-token-file", adminFile)
		p.start()
		s.pipes, s.apis = append(s.pipes, p), append(s.apis, addr)
		if i == 0 {
			s.waitAPI(0) // the first instance creates the streams and buckets
		}
	}
	s.waitAPI(1)
	for _, id := range []string{"runner-a", "runner-b"} {
		p := newFaultProc(t, logDir, id, filepath.Join(bin, "docker-runner"),
			"--nats", natsURLs, "--ops-addr", freePort(t), "--pools", "default", "--id", id, "--concurrency", strconv.Itoa(faultSlots),
			"--lease", faultLease.String(), "--heartbeat", "1s", "--replicas", "3", "--grace", "1s", "--work-dir", t.TempDir())
		p.start()
		s.runners[id] = p
		s.ids = append(s.ids, id)
	}
	s.auditAt = freePort(t)
	s.audit = newFaultProc(t, logDir, "audit", filepath.Join(bin, "audit"),
		"--nats", natsURLs, "--ops-addr", freePort(t), "--data-dir", t.TempDir(), "--http", s.auditAt, "--replicas", "3")
	s.audit.start()
	waitTCP(t, s.auditAt)

	// One watch of the runs bucket per node, merged (see watchRunTimeline).
	var watchers []jetstream.JetStream
	for _, u := range urls {
		wc, err := nats.Connect(u, nats.Name("ansflow-faults-watch"), nats.MaxReconnects(-1), nats.ReconnectWait(200*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(wc.Close)
		wjs, err := jetstream.New(wc)
		if err != nil {
			t.Fatal(err)
		}
		watchers = append(watchers, wjs)
	}
	if s.tl, err = watchRunTimeline(ctx, watchers); err != nil {
		t.Fatal(err)
	}
	if s.claims, s.attemptsKV, err = followClaims(ctx, s.js); err != nil {
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
		if err := s.callAPI(ctx, func(ctx context.Context, c *client) error {
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
	weight     int // runs of it in every six
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
// parallel, some longer than a lease, and a pipeline that must fail after a
// retry.
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
	mk := func(name, status string, weight int, steps []st) *pipelineExpect {
		var b strings.Builder
		fmt.Fprintf(&b, "pipeline:\n  name: %s\n  steps:\n", name)
		p := &pipelineExpect{name: name, status: status, steps: map[string]stepExpect{}, weight: weight}
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

// longSteps are the steps that run longer than a lease.
var longSteps = map[string]bool{"build": true, "b": true, "c": true}

// callAPI calls fn against a running pipeline instance, trying the other
// one when it gets no answer, until it succeeds or 30s passed. A 4xx
// answer is final.
func (s *faultSuite) callAPI(ctx context.Context, fn func(ctx context.Context, c *client) error) error {
	deadline := time.Now().Add(30 * time.Second)
	var last error
	for {
		for range s.apis {
			i := int(s.apiTurn.Add(1)) % len(s.apis)
			if !s.pipes[i].running() {
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := fn(cctx, newClient("http://"+s.apis[i], s.token))
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
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("no pipeline instance answered within 30s: %w", last)
		}
		sleepCtx(ctx, 200*time.Millisecond)
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

// tracked returns every run triggered so far and its pipeline.
func (s *faultSuite) tracked() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.runs))
	for id, p := range s.runs {
		out[id] = p
	}
	return out
}

// inFlight returns the triggered runs that have not ended.
func (s *faultSuite) inFlight() []string {
	var out []string
	for id := range s.tracked() {
		if r := s.tl.last(id); r == nil || !r.Terminal() {
			out = append(out, id)
		}
	}
	return out
}

// startLoad keeps n runs in flight, triggered over the REST API in a fixed
// mix of the pipelines, until the returned stop is called.
func (s *faultSuite) startLoad(n int) (stop func()) {
	var mix []string
	for _, name := range []string{"faults-mixed", "faults-fanout", "faults-failing"} {
		for range s.pipelines[name].weight {
			mix = append(mix, name)
		}
	}
	ctx, cancel := context.WithCancel(s.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ctx.Err() == nil; {
			if len(s.inFlight()) >= n {
				sleepCtx(ctx, 100*time.Millisecond)
				continue
			}
			name := mix[i%len(mix)]
			i++
			var run *apiv1.Run
			err := s.callAPI(ctx, func(ctx context.Context, c *client) error {
				var err error
				run, err = c.trigger(ctx, name, apiv1.TriggerBody{})
				return err
			})
			if err != nil {
				if ctx.Err() == nil {
					s.t.Errorf("trigger %s: %v", name, err)
					sleepCtx(ctx, time.Second)
				}
				continue
			}
			s.mu.Lock()
			s.runs[run.ID] = name
			s.mu.Unlock()
		}
	}()
	return func() { cancel(); <-done }
}

// runningStep is a step a run document shows running.
type runningStep struct {
	run, step, runner string
	attempt           int
	since             time.Time
}

// running lists the steps of the runs in flight that run documents show
// running.
func (s *faultSuite) running() []runningStep {
	var out []runningStep
	for _, id := range s.inFlight() {
		r := s.tl.last(id)
		if r == nil {
			continue
		}
		for _, st := range r.Steps {
			if st.Status == event.StatusRunning && st.Runner != "" && st.StartedAt != nil {
				out = append(out, runningStep{run: r.ID, step: st.ID, attempt: st.Attempts, runner: st.Runner, since: *st.StartedAt})
			}
		}
	}
	return out
}

// fault waits until a step longer than a lease is mid-way (running for 1
// to 4 seconds) with more steps running beside it, injects one fault of
// kind, waits for its recovery and checks every run that ended so far and
// the audit trail.
func (s *faultSuite) fault(kind string, round int) {
	t := s.t
	res := &faultResult{n: len(s.results) + 1, kind: kind}
	var victim string
	waitFor(t, 90*time.Second, "a long step mid-way", func() (bool, string) {
		if len(s.results) > 0 && time.Since(s.settled) < faultSpacing {
			return false, "the last fault is too recent"
		}
		all := s.running()
		victim = ""
		for _, rs := range all {
			if age := time.Since(rs.since); longSteps[rs.step] && age >= time.Second && age < 4*time.Second {
				if victim == "" || victim == s.lastKill {
					victim = rs.runner
				}
			}
		}
		return victim != "" && len(all) >= 3, fmt.Sprintf("%d steps running, none of them a long one mid-way", len(all))
	})
	res.inflight = len(s.inFlight())
	switch kind {
	case faultRunner:
		s.killRunner(victim, round, res)
	case faultPipeline:
		s.killPipeline(round%len(s.pipes), res)
	case faultAudit:
		s.killAudit(res)
	case faultNATS:
		s.killNATS(round, res)
	}
	s.results = append(s.results, res)
	s.settled = time.Now()
	rec := "measured once the runs ended"
	if kind == faultRunner || kind == faultAudit {
		rec = res.recovery.Round(time.Millisecond).String()
	}
	t.Logf("fault %d: %s %s killed at %s with %d runs in flight; recovery %s; %s", res.n, kind, res.target,
		res.killedAt.Format("15:04:05.000"), res.inflight, rec, res.detail)
	for _, p := range s.checkEnded() {
		t.Errorf("after fault %d (%s %s): %s", res.n, kind, res.target, p)
	}
	for _, p := range s.checkAudit() {
		t.Errorf("after fault %d (%s %s): audit: %s", res.n, kind, res.target, p)
	}
}

// killRunner SIGKILLs runner id while it executes a long step. In the first
// round it is started again at once, so that its own new process may take
// its attempts over; in later rounds it comes back only once every attempt
// it held was fenced by the other runner or the orchestrator's lease check.
// Recovery is the time until every step whose attempt was lost has a new
// attempt running.
func (s *faultSuite) killRunner(id string, round int, res *faultResult) {
	p := s.runners[id]
	res.target = id
	s.lastKill = id
	res.killedAt = p.kill()
	waitFor(s.t, 30*time.Second, "the claims read up to the kill", func() (bool, string) { return s.claims.caughtUp(s.ctx, s.attemptsKV) })
	held := s.claims.running(id)
	if len(held) == 0 {
		s.t.Errorf("runner %s was killed executing a long step, but no claim of it is running", id)
		p.start()
		return
	}
	// fenced: the attempt will not be reported by its runner any more.
	fenced := func(a attemptRef) bool {
		c, _ := s.claims.get(a)
		return c.State != runner.ClaimRunning
	}
	// again: the step has a new attempt running or over, or the attempt was
	// reported before the runner died.
	again := func(a attemptRef) bool {
		if c, _ := s.claims.get(a); c.State == runner.ClaimDone {
			return true
		}
		r := s.tl.last(a.run)
		if r == nil {
			return false
		}
		st := r.Step(a.step)
		return r.Terminal() || (st != nil && st.Attempts > a.attempt && st.Status != event.StatusQueued && st.Status != event.StatusPending)
	}
	if round == 0 {
		p.start()
		res.detail = "restarted at once"
	} else {
		why, ok := pollUntil(60*time.Second, func() (bool, string) {
			for _, a := range held {
				if !fenced(a) {
					return false, fmt.Sprintf("%s/%s#%d still claimed", a.run, a.step, a.attempt)
				}
			}
			return true, ""
		})
		if !ok {
			s.t.Errorf("the attempts of killed runner %s were not fenced within 60s: %s", id, why)
		}
		p.start()
		res.detail = fmt.Sprintf("restarted %s after the kill, once its attempts were fenced", time.Since(res.killedAt).Round(100*time.Millisecond))
	}
	why, ok := pollUntil(120*time.Second, func() (bool, string) {
		for _, a := range held {
			if !again(a) {
				return false, fmt.Sprintf("%s/%s has no attempt after %d running", a.run, a.step, a.attempt)
			}
		}
		return true, ""
	})
	if !ok {
		s.t.Errorf("steps of killed runner %s did not run again within 120s: %s", id, why)
		return
	}
	// The exact moments come from the server's timestamps of the run
	// documents.
	var reported int
	for _, a := range held {
		if c, _ := s.claims.get(a); c.State == runner.ClaimDone {
			reported++
			continue
		}
		res.lostRefs = append(res.lostRefs, a)
		queued, _ := s.tl.first(a.run, func(r *apiv1.Run) bool { st := r.Step(a.step); return r.Terminal() || st.Attempts > a.attempt })
		ran, _ := s.tl.first(a.run, func(r *apiv1.Run) bool {
			st := r.Step(a.step)
			return r.Terminal() || (st.Attempts > a.attempt && st.Status != event.StatusQueued && st.Status != event.StatusPending)
		})
		res.requeued = max(res.requeued, queued.Sub(res.killedAt))
		res.recovery = max(res.recovery, ran.Sub(res.killedAt))
	}
	res.detail += fmt.Sprintf("; it held %d attempts, %d lost (fenced, new attempt queued within %s of the kill), %d reported before it died",
		len(held), len(res.lostRefs), res.requeued.Round(10*time.Millisecond), reported)
}

// killPipeline SIGKILLs pipeline instance i and starts it again once a run
// moved on without it.
func (s *faultSuite) killPipeline(i int, res *faultResult) {
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
	res.detail = fmt.Sprintf("restarted, serving again %s after the kill", time.Since(res.killedAt).Round(100*time.Millisecond))
}

// killNATS SIGKILLs the node leading a stream the runs depend on (the
// lifecycle events in the first round, the attempt claims in the second)
// and starts it again on the same store directory once runs moved on
// without it.
func (s *faultSuite) killNATS(round int, res *faultResult) {
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
	// Down until a run moved on without it, for 10s at most: the stall is
	// measured from the evidence afterwards.
	_, moved := pollUntil(10*time.Second, func() (bool, string) {
		return s.tl.storedSince(res.killedAt.Add(time.Second)), ""
	})
	node.proc.start()
	back := time.Since(res.killedAt)
	waitFor(s.t, 90*time.Second, node.name+" current again", func() (bool, string) { return node.healthy(), "healthz not ok" })
	res.detail = fmt.Sprintf("restarted %s after the kill, current again after %s", back.Round(100*time.Millisecond),
		time.Since(res.killedAt).Round(100*time.Millisecond))
	if !moved {
		res.detail += " (no run document was seen written in the 10s it was down)"
	}
}

// killAudit SIGKILLs the audit service and starts it again as soon as an
// event was published without it, as a supervisor would. Recovery is the time from the kill until the trail
// holds every event published until the new process was listening again
// (its durable consumers acknowledged past them): those from before the
// kill it may have held unacknowledged, and those published while it was
// down.
func (s *faultSuite) killAudit(res *faultResult) {
	before := s.lastSeq(event.StreamEvents) + s.lastSeq(event.StreamSteps)
	res.target = "audit"
	res.killedAt = s.audit.kill()
	// Down until an event was published without it, for 5s at most.
	_, _ = pollUntil(5*time.Second, func() (bool, string) {
		return s.lastSeq(event.StreamEvents)+s.lastSeq(event.StreamSteps) > before, ""
	})
	s.audit.start()
	waitTCP(s.t, s.auditAt)
	restarted := time.Since(res.killedAt)
	last := map[string]uint64{}
	for _, name := range []string{event.StreamEvents, event.StreamSteps} {
		last[name] = s.lastSeq(name)
	}
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
	res.detail = fmt.Sprintf("listening again %s after the kill; %d events published while it was down",
		restarted.Round(10*time.Millisecond), last[event.StreamEvents]+last[event.StreamSteps]-before)
}

func (s *faultSuite) lastSeq(stream string) uint64 {
	for range 100 {
		if st, err := s.js.Stream(s.ctx, stream); err == nil {
			if info, err := st.Info(s.ctx); err == nil {
				return info.State.LastSeq
			}
		}
		sleepCtx(s.ctx, 100*time.Millisecond)
	}
	s.t.Fatalf("stream %s unreadable for 10s", stream)
	return 0
}

// measureStalls measures the pipeline and NATS faults once every run
// ended: for every step.started and step.completed that happened before the
// next fault (at most 30s after the kill) and was not yet applied at the
// kill, the time from the later of the event and the kill until the run
// document reflected it. The longest such wait is the fault's recovery
// time: by then every run the fault held up had moved on.
func (s *faultSuite) measureStalls() {
	evs := stepEvents(s.events.all())
	for i, res := range s.results {
		if res.kind != faultPipeline && res.kind != faultNATS {
			continue
		}
		end := res.killedAt.Add(30 * time.Second)
		if i+1 < len(s.results) && s.results[i+1].killedAt.Before(end) {
			end = s.results[i+1].killedAt
		}
		calm := res.killedAt.Add(-30 * time.Second)
		if i > 0 {
			calm = maxTime(calm, s.results[i-1].killedAt.Add(s.results[i-1].recovery+faultSpacing/2))
		}
		var worst time.Duration
		var which string
		var normal []time.Duration
		delayed := map[string]bool{}
		for _, e := range evs {
			a := e.key()
			when := e.when()
			applied, ok := s.tl.first(a.run, func(r *apiv1.Run) bool { return reflects(r, e) })
			if !ok || when.After(end) {
				continue
			}
			if !applied.After(res.killedAt) {
				if when.After(calm) {
					normal = append(normal, max(0, applied.Sub(when)))
				}
				continue
			}
			lag := applied.Sub(maxTime(when, res.killedAt))
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
		res.recovery = worst
		res.detail += fmt.Sprintf("; longest wait: %s; %d runs held up over 1s", which, len(delayed))
		if n := s.tl.missed(res.killedAt, end); n > 0 {
			res.detail += fmt.Sprintf("; the suite's watch of the runs bucket missed %d revisions meanwhile, so the figure is an upper bound", n)
		}
		if len(normal) > 0 {
			res.detail += fmt.Sprintf("; before the kill, %d events were applied within p50 %s, p99 %s", len(normal),
				percentile(normal, 50).Round(time.Millisecond), percentile(normal, 99).Round(time.Millisecond))
		}
		s.t.Logf("fault %d: %s %s: recovery %s (%s)", res.n, res.kind, res.target, res.recovery.Round(time.Millisecond), res.detail)
	}
}

// attemptLostBy returns who fenced each attempt that a runner_lost
// completion reports: the runner that took it over.
func (s *faultSuite) attemptLostBy() map[attemptRef]string {
	by := map[attemptRef]string{}
	for _, e := range stepEvents(s.events.all()) {
		if e.completed != nil && e.completed.Reason == runner.ReasonRunnerLost {
			by[e.key()] = strings.TrimPrefix(e.source, "ansflow/docker-runner/")
		}
	}
	return by
}

// attributeLost says, for every attempt that ended runner_lost, who fenced
// it (a runner of the pool, which then publishes a runner_lost completion,
// or the orchestrator's lease check, which publishes none), and counts the
// attempts of live runners that were taken over against the fault during
// which it happened.
func (s *faultSuite) attributeLost() {
	by := s.attemptLostBy()
	killed := map[attemptRef]*faultResult{}
	for _, r := range s.results {
		for _, a := range r.lostRefs {
			killed[a] = r
		}
	}
	fencers := map[*faultResult]map[string]int{}
	live := map[*faultResult][]string{}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.final {
		for _, st := range r.Steps {
			for _, h := range st.History {
				if h.Reason != runner.ReasonRunnerLost {
					continue
				}
				a := attemptRef{r.ID, st.ID, h.Attempt}
				fencer := by[a]
				if fencer == "" {
					fencer = "orchestrator"
				}
				if res := killed[a]; res != nil {
					if fencers[res] == nil {
						fencers[res] = map[string]int{}
					}
					fencers[res][fencer]++
					continue
				}
				var during *faultResult
				for _, res := range s.results {
					if h.FinishedAt != nil && !h.FinishedAt.Before(res.killedAt) {
						during = res
					}
				}
				what := fmt.Sprintf("%s#%d of %s (fenced by %s)", st.ID, h.Attempt, h.Runner, fencer)
				if during == nil {
					s.t.Logf("before any fault, %s lost its lease: %s", h.Runner, what)
					continue
				}
				live[during] = append(live[during], what)
			}
		}
	}
	for _, res := range s.results {
		if f := fencers[res]; len(f) > 0 {
			var parts []string
			for _, who := range append(append([]string{}, s.ids...), "orchestrator") {
				if f[who] > 0 {
					parts = append(parts, fmt.Sprintf("%s %d", who, f[who]))
				}
			}
			res.detail += "; lost attempts fenced by " + strings.Join(parts, ", ")
		}
		if l := live[res]; len(l) > 0 {
			sort.Strings(l)
			res.liveLost = len(l)
			res.detail += fmt.Sprintf("; %d attempts of live runners lost their lease and were taken over: %s", len(l), strings.Join(l, ", "))
		}
	}
}

// reflects reports whether run document r shows what e reports.
func reflects(r *apiv1.Run, e stepEvent) bool {
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

// checkEnded checks the runs that ended since the last call, as
// GET /api/v1/runs/{id} shows them, once the evidence about them is in.
func (s *faultSuite) checkEnded() []string {
	var ended []string
	s.mu.Lock()
	for id := range s.runs {
		if _, done := s.final[id]; !done {
			if r := s.tl.last(id); r != nil && r.Terminal() {
				ended = append(ended, id)
			}
		}
	}
	s.mu.Unlock()
	if len(ended) == 0 {
		return nil
	}
	if why, ok := pollUntil(30*time.Second, func() (bool, string) { return s.events.caughtUp(s.ctx, s.js) }); !ok {
		return []string{"reading ANSFLOW_EVENTS: " + why}
	}
	in := map[string]bool{}
	for _, id := range ended {
		in[id] = true
	}
	// The Docker Engine's events arrive on their own stream: wait until
	// every container of these runs that started has been seen to stop.
	_, _ = pollUntil(10*time.Second, func() (bool, string) {
		for _, c := range s.docker.ofRuns(in) {
			if !c.start.IsZero() && c.die.IsZero() {
				return false, ""
			}
		}
		return true, ""
	})
	var final []*apiv1.Run
	for _, id := range ended {
		var run *apiv1.Run
		if err := s.callAPI(s.ctx, func(ctx context.Context, c *client) error {
			var err error
			run, err = c.getRun(ctx, id)
			return err
		}); err != nil {
			return []string{fmt.Sprintf("get run %s: %v", id, err)}
		}
		final = append(final, run)
	}
	s.mu.Lock()
	for _, r := range final {
		s.final[r.ID] = r
	}
	s.mu.Unlock()
	return s.checkRuns(final)
}

// drain waits until every run has ended, adopts any run the API knows that
// the load did not record (a trigger retried after its answer was lost),
// and checks them all.
func (s *faultSuite) drain() {
	t := s.t
	waitFor(t, 180*time.Second, "every run to end", func() (bool, string) {
		left := s.inFlight()
		if len(left) == 0 {
			return true, ""
		}
		return false, fmt.Sprintf("%d runs in flight, e.g. %s", len(left), describeRun(left[0], s.tl.last(left[0])))
	})
	var all []*apiv1.Run
	if err := s.callAPI(s.ctx, func(ctx context.Context, c *client) error {
		return c.do(ctx, http.MethodGet, "/api/v1/runs?limit=100000", "", nil, &all)
	}); err != nil {
		t.Fatalf("list runs: %v", err)
	}
	s.mu.Lock()
	for _, r := range all {
		if _, ok := s.runs[r.ID]; !ok {
			t.Logf("run %s of %s was created by a trigger whose answer was lost; checking it too", r.ID, r.Pipeline)
			s.runs[r.ID] = r.Pipeline
		}
	}
	n := len(s.runs)
	s.mu.Unlock()
	if len(all) != n {
		t.Errorf("the API lists %d runs, the suite triggered %d", len(all), n)
	}
	waitFor(t, 60*time.Second, "every run to end", func() (bool, string) {
		left := s.inFlight()
		return len(left) == 0, fmt.Sprintf("%d runs in flight", len(left))
	})
	for _, p := range s.checkEnded() {
		t.Errorf("at the end: %s", p)
	}
	for _, p := range s.checkAudit() {
		t.Errorf("at the end: audit: %s", p)
	}
}

func describeRun(id string, r *apiv1.Run) string {
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
