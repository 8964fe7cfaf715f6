package engine_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/client"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/runner/runnertest"
	"github.com/ansflow/ansflow/pkg/source"
	"github.com/ansflow/ansflow/services/docker-runner/dockertest"
	"github.com/ansflow/ansflow/services/docker-runner/engine"
)

// harness is a real in-process JetStream server, a real Docker Engine and
// the engine served by the real runner loop.
type harness struct {
	t    *testing.T
	ns   *natstest.Server
	cli  *client.Client
	eng  *engine.Engine
	base string // busybox base image
	pool string
}

var runSeq atomic.Int64

// newHarness starts NATS and a runner serving pool "default" with an engine
// configured by cfg.
func newHarness(t *testing.T, cfg engine.Config) *harness {
	t.Helper()
	cli := dockertest.Client(t)
	h := &harness{t: t, ns: natstest.Run(t), cli: cli, base: dockertest.BusyboxImage(t, cli), pool: "default"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bus.EnsureStreams(ctx, h.ns.JS, 1); err != nil {
		t.Fatal(err)
	}
	eng, err := engine.New(cfg, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	h.eng = eng
	h.startRunner("runner-1", eng, 30*time.Second)
	return h
}

// startRunner runs a runner loop with eng until the test ends or the
// returned function is called.
func (h *harness) startRunner(id string, eng runner.Engine, ackWait time.Duration) (stop func()) {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cfg := runner.Config{Kind: event.KindDocker, Targets: []string{h.pool}, ID: id, Concurrency: 2,
		WorkDir: h.t.TempDir(), Lease: ackWait}
	if err := cfg.Validate(); err != nil {
		h.t.Fatal(err)
	}
	log := zaptest.NewLogger(h.t, zaptest.Level(zap.WarnLevel))
	r := runner.New(cfg, h.ns.NC, h.ns.JS, eng, &source.Fetcher{JS: h.ns.JS, AllowLocal: true}, log)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx)
	}()
	var stopped atomic.Bool
	stop = func() {
		if stopped.CompareAndSwap(false, true) {
			cancel()
			<-done
		}
	}
	h.t.Cleanup(stop)
	return stop
}

// newRequest returns a step request of typ in a fresh run.
func (h *harness) newRequest(typ string) *event.StepRequested {
	n := runSeq.Add(1)
	run := fmt.Sprintf("run-%d-%d", time.Now().UnixNano(), n)
	req := &event.StepRequested{RunID: run, StepID: "step-1", StepName: typ, Pipeline: "engine-test",
		Attempt: 1, Type: typ, Kind: event.KindDocker, Target: h.pool, RequestedAt: time.Now().UTC(),
		DockerConfig: map[string]any{}}
	labels := engine.AttemptLabels(req.RunID, req.StepID, req.Attempt)
	h.t.Cleanup(func() { dockertest.RemoveContainers(h.t, h.cli, labels) })
	return req
}

// upload stores dir as the run's source.
func (h *harness) upload(req *event.StepRequested, dir string) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src, err := source.Upload(ctx, h.ns.JS, dir, req.RunID)
	if err != nil {
		h.t.Fatal(err)
	}
	req.Source = src
}

// publish sends the step request to the pool.
func (h *harness) publish(req *event.StepRequested) {
	h.t.Helper()
	e, err := event.New("ansflow/test", event.TypeStepRequested,
		event.Meta{RunID: req.RunID, StepID: req.StepID, Attempt: req.Attempt}, req)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bus.Publish(ctx, h.ns.JS, event.StepRequestedSubject(event.KindDocker, h.pool), e); err != nil {
		h.t.Fatal(err)
	}
}

// cancelStep publishes a step.cancel for req.
func (h *harness) cancelStep(req *event.StepRequested, reason string) {
	h.t.Helper()
	e, err := event.New("ansflow/test", event.TypeStepCancel, event.Meta{RunID: req.RunID},
		event.StepCancel{RunID: req.RunID, StepID: req.StepID, Reason: reason})
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bus.Publish(ctx, h.ns.JS, event.LifecycleSubject(event.TypeStepCancel, req.RunID), e); err != nil {
		h.t.Fatal(err)
	}
}

// result is what a step left on the bus.
type result struct {
	*event.StepCompleted
	Stdout, Stderr string
	Took           time.Duration
}

func (r *result) String() string {
	b, _ := json.MarshalIndent(r.StepCompleted, "", "  ")
	return fmt.Sprintf("%s\n--- stdout:\n%s\n--- stderr:\n%s", b, r.Stdout, r.Stderr)
}

// exec publishes req and waits for its completion.
func (h *harness) exec(req *event.StepRequested, timeout time.Duration) *result {
	h.t.Helper()
	start := time.Now()
	h.publish(req)
	r := h.await(req, timeout)
	r.Took = time.Since(start)
	return r
}

// await waits for req's step.completed and collects its logs.
func (h *harness) await(req *event.StepRequested, timeout time.Duration) *result {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout+10*time.Second)
	defer cancel()
	cons, err := h.ns.JS.OrderedConsumer(ctx, event.StreamEvents, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{event.LifecycleSubject(event.TypeStepCompleted, req.RunID)}})
	if err != nil {
		h.t.Fatal(err)
	}
	deadline := time.Now().Add(timeout)
	for {
		msg, err := cons.Next(jetstream.FetchMaxWait(time.Until(deadline)))
		if err != nil {
			if errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, context.DeadlineExceeded) || time.Now().After(deadline) {
				h.t.Fatalf("no step.completed for %s/%s within %s", req.RunID, req.StepID, timeout)
			}
			h.t.Fatalf("await step.completed: %v", err)
		}
		var c event.StepCompleted
		if err := json.Unmarshal(msg.Data(), &c); err != nil {
			h.t.Fatal(err)
		}
		if c.StepID != req.StepID || c.Attempt != req.Attempt {
			continue
		}
		r := &result{StepCompleted: &c}
		r.Stdout, r.Stderr = h.logs(req)
		return r
	}
}

// logs returns the step's stdout and stderr as published on the bus.
func (h *harness) logs(req *event.StepRequested) (stdout, stderr string) {
	h.t.Helper()
	return runnertest.StepLogs(h.t, h.ns.JS, req.RunID, req.StepID)
}

// waitRunning waits until a container of req's attempt runs and returns its
// id.
func (h *harness) waitRunning(req *event.StepRequested, timeout time.Duration) string {
	h.t.Helper()
	labels := engine.AttemptLabels(req.RunID, req.StepID, req.Attempt)
	var id string
	dockertest.Eventually(h.t, timeout, func() bool {
		for _, c := range dockertest.Containers(h.t, h.cli, labels) {
			if c.State == "running" {
				id = c.ID
				return true
			}
		}
		return false
	}, "no running container for %s", req.RunID)
	return id
}

// wantNoContainers checks that req's attempt leaves no container behind
// (the daemon removes an exited one within moments).
func (h *harness) wantNoContainers(t *testing.T, req *event.StepRequested) {
	t.Helper()
	labels := engine.AttemptLabels(req.RunID, req.StepID, req.Attempt)
	dockertest.Eventually(t, 5*time.Second, func() bool { return len(dockertest.Containers(t, h.cli, labels)) == 0 },
		"containers of %s/%s left behind", req.RunID, req.StepID)
}

// writeTree writes files (path → content) under a new directory.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func wantStatus(t *testing.T, r *result, status string) {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %s, want %s:\n%s", r.Status, status, r)
	}
}

func wantContains(t *testing.T, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%s lacks %q:\n%s", what, sub, s)
		}
	}
}
