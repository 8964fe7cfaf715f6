package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/source"
	"github.com/ansflow/ansflow/services/docker-runner/dockertest"
	"github.com/ansflow/ansflow/services/docker-runner/engine"
)

// childEnv makes the test binary run main instead of the tests, so a test
// can start the real docker-runner as a process and kill it.
const childEnv = "ANSFLOW_DOCKER_RUNNER_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestParseConfig(t *testing.T) {
	env := map[string]string{"ANSFLOW_NATS_URL": "nats://n1:4222", "ANSFLOW_POOLS": "a, b,", "ANSFLOW_CONCURRENCY": "4"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	var out bytes.Buffer
	c, err := parseConfig([]string{"--concurrency", "3", "--id", "r1", "--lease", "5s", "--network", "ci"}, lookup, &out)
	if err != nil {
		t.Fatal(err)
	}
	if c.NATSURL != "nats://n1:4222" || strings.Join(c.Runner.Targets, "|") != "a|b" || c.Runner.Concurrency != 3 ||
		c.Runner.ID != "r1" || c.Runner.Lease != 5*time.Second || c.Engine.Network != "ci" ||
		c.Runner.Kind != event.KindDocker || c.Engine.SourceMount != engine.DefaultSourceMount {
		t.Errorf("config %+v", c)
	}
	c, err = parseConfig(nil, func(string) (string, bool) { return "", false }, &out)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.Runner.Targets, "|") != "default" || c.Runner.Concurrency != 2 || !strings.HasPrefix(c.Runner.ID, "docker-runner@") {
		t.Errorf("defaults %+v", c)
	}
	env["ANSFLOW_CONCURRENCY"] = "many"
	if _, err := parseConfig(nil, lookup, &out); err == nil || !strings.Contains(err.Error(), "ANSFLOW_CONCURRENCY") {
		t.Errorf("bad env: %v", err)
	}
	if _, err := parseConfig([]string{"--pools", " , "}, func(string) (string, bool) { return "", false }, &out); err == nil {
		t.Error("no pools accepted")
	}
	none := func(string) (string, bool) { return "", false }
	c, err = parseConfig([]string{"--allow-host-path", "/srv/cache", "--allow-privileged"}, none, &out)
	if err != nil {
		t.Fatal(err)
	}
	if p := c.Engine.Policy; len(p.AllowedHostPaths) != 1 || !p.AllowPrivileged || p.AllowHostNetwork || p.AllowDockerSocket {
		t.Errorf("policy %+v", p)
	}
	if c, _ := parseConfig(nil, none, &out); len(c.Engine.Policy.Relaxations()) != 0 {
		t.Errorf("default policy relaxes %v", c.Engine.Policy.Relaxations())
	}
	if _, err := parseConfig([]string{"--allow-host-path", "cache"}, none, &out); err == nil || !strings.Contains(err.Error(), "not an absolute path") {
		t.Errorf("relative host path: %v", err)
	}
	if _, err := parseConfig([]string{"--policy", "/no/such/policy.yaml"}, none, &out); err == nil || !strings.Contains(err.Error(), "runner policy") {
		t.Errorf("missing policy file: %v", err)
	}
}

// TestKilledRunner starts the real docker-runner process, kills it
// (SIGKILL) in the middle of a step, and starts another runner: the attempt
// is taken over (reported runner_lost), a docker_run's orphaned container is reaped, and a
// build's container is gone (the daemon aborts a build whose client
// vanished).
func TestKilledRunner(t *testing.T) {
	cli := dockertest.Client(t)
	base := dockertest.BusyboxImage(t, cli)
	marker := fmt.Sprintf("ansflow-killed-build-%d", time.Now().UnixNano())
	buildContainers := func() int {
		n := 0
		for _, c := range dockertest.Containers(t, cli, nil) {
			if strings.Contains(c.Command, marker) {
				n++
			}
		}
		return n
	}
	for _, tc := range []struct {
		name    string
		req     event.StepRequested
		source  map[string]string
		running func(labels map[string]string) bool
		orphan  bool // the container outlives the runner until reaped
		gone    func(labels map[string]string) bool
	}{
		{
			name: "docker_run",
			req:  event.StepRequested{Type: engine.TypeRun, Image: base, Command: "sleep 300"},
			running: func(labels map[string]string) bool {
				for _, c := range dockertest.Containers(t, cli, labels) {
					if c.State == "running" {
						return true
					}
				}
				return false
			},
			orphan: true,
			gone:   func(labels map[string]string) bool { return len(dockertest.Containers(t, cli, labels)) == 0 },
		},
		{
			name:    "docker_build",
			req:     event.StepRequested{Type: engine.TypeBuild, Image: "ansflow-e2e/killed"},
			source:  map[string]string{"Dockerfile": "FROM " + base + "\nRUN sleep 300 # " + marker + "\n"},
			running: func(map[string]string) bool { return buildContainers() > 0 },
			gone:    func(map[string]string) bool { return buildContainers() == 0 },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			killedRunner(t, tc.req, tc.source, tc.running, tc.orphan, tc.gone)
		})
	}
}

func killedRunner(t *testing.T, req event.StepRequested, files map[string]string, running func(map[string]string) bool,
	orphan bool, gone func(map[string]string) bool) {
	cli := dockertest.Client(t)
	ns := natstest.Run(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := bus.EnsureStreams(ctx, ns.JS, 1); err != nil {
		t.Fatal(err)
	}
	const pool = "killed"
	req.RunID, req.StepID, req.Attempt = "killed-"+time.Now().Format("150405.000000"), "step", 1
	req.Kind, req.Target, req.RequestedAt = event.KindDocker, pool, time.Now().UTC()
	labels := engine.AttemptLabels(req.RunID, req.StepID, req.Attempt)
	t.Cleanup(func() { dockertest.RemoveContainers(t, cli, labels) })
	if files != nil {
		dir := t.TempDir()
		for name, content := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		src, err := source.Upload(ctx, ns.JS, dir, req.RunID)
		if err != nil {
			t.Fatal(err)
		}
		req.Source = src
	}

	var out syncBuffer
	child := exec.Command(os.Args[0], "--nats", ns.ClientURL(), "--pools", pool, "--id", "doomed-runner",
		"--lease", "2s", "--log-level", "warn")
	child.Env = append(os.Environ(), childEnv+"=1")
	child.Stdout, child.Stderr = &out, &out
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { child.Wait(); close(exited) }()
	t.Cleanup(func() { child.Process.Kill(); <-exited })

	e, err := event.New("ansflow/test", event.TypeStepRequested, event.Meta{RunID: req.RunID, StepID: req.StepID, Attempt: 1}, req)
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Publish(ctx, ns.JS, event.StepRequestedSubject(event.KindDocker, pool), e); err != nil {
		t.Fatal(err)
	}
	dockertest.Eventually(t, time.Minute, func() bool {
		select {
		case <-exited:
			t.Fatalf("docker-runner exited early:\n%s", out.String())
		default:
		}
		return running(labels)
	}, "the runner process never started the step; its output:\n%s", &out)

	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-exited
	killedAt := time.Now()
	if orphan && !running(labels) {
		t.Fatal("after the kill, want the orphaned container still running")
	}

	// a new runner serving the pool gets the redelivered request
	eng, err := engine.New(engine.Config{}, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	rcfg := runner.Config{Kind: event.KindDocker, Targets: []string{pool}, ID: "successor", Lease: 2 * time.Second, WorkDir: t.TempDir()}
	if err := rcfg.Validate(); err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		runner.New(rcfg, ns.NC, ns.JS, eng, &source.Fetcher{JS: ns.JS}, zaptest.NewLogger(t, zaptest.Level(zap.ErrorLevel))).Run(rctx)
	}()
	defer func() { stop(); <-done }()

	cons, err := ns.JS.OrderedConsumer(ctx, event.StreamEvents, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{event.LifecycleSubject(event.TypeStepCompleted, req.RunID)}})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(time.Minute))
	if err != nil {
		t.Fatalf("no step.completed after the kill: %v", err)
	}
	var c event.StepCompleted
	if err := json.Unmarshal(msg.Data(), &c); err != nil {
		t.Fatal(err)
	}
	if c.Status != event.StatusFailed || c.Reason != runner.ReasonRunnerLost || c.Runner != "doomed-runner" ||
		!strings.Contains(c.Error, "runner doomed-runner stopped renewing its lease on attempt 1; successor took the step over") {
		t.Fatalf("completion %+v", c)
	}
	dockertest.Eventually(t, 15*time.Second, func() bool { return gone(labels) }, "the killed runner's step left a container")
	t.Logf("lost attempt taken over %s after the kill, nothing left running", time.Since(killedAt))
}

// syncBuffer is a bytes.Buffer safe for a child process's output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
