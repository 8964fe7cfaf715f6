package orchestrator_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"gopkg.in/yaml.v3"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/runner/runnertest"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/services/pipeline/orchestrator"
	"github.com/ansflow/ansflow/services/pipeline/service"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

type expected struct {
	Branch    string                  `yaml:"branch"`
	Untrusted bool                    `yaml:"untrusted"`
	Status    string                  `yaml:"status"`
	Steps     map[string]expectedStep `yaml:"steps"`
}

type expectedStep struct {
	Status   string            `yaml:"status"`
	Attempts *int              `yaml:"attempts"`
	ExitCode *int              `yaml:"exit_code"`
	Outputs  map[string]string `yaml:"outputs"`
	Stdout   *string           `yaml:"stdout"`
	Stderr   *string           `yaml:"stderr"`
	Error    string            `yaml:"error"`
}

// env is a pipeline service and scripted runners on a real JetStream server.
type env struct {
	ns   *natstest.Server
	svc  *service.Service
	eng  *runnertest.Engine
	stop func()
}

func startEnv(t *testing.T, ns *natstest.Server, runners bool) *env {
	eng := &runnertest.Engine{}
	if !runners {
		return startEnvTB(t, ns, nil)
	}
	e := startEnvTB(t, ns, eng)
	e.eng = eng
	return e
}

func startEnvTB(t testing.TB, ns *natstest.Server, eng runner.Engine) *env {
	t.Helper()
	if eng != nil {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		startRunner(ctx, t, ns, eng, event.KindDocker)
		startRunner(ctx, t, ns, eng, event.KindK8s)
	}
	return startEnvCfg(t, ns, orchestrator.Config{Policy: orchestrator.Policy{NoRunnerTimeout: 5 * time.Second}})
}

func startRunner(ctx context.Context, t testing.TB, ns *natstest.Server, eng runner.Engine, kind string) {
	t.Helper()
	nc, js := ns.Connect(t)
	cfg := runner.Config{Kind: kind, Targets: []string{"default"}, Concurrency: 16, Lease: 2 * time.Second}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	r := runner.New(cfg, nc, js, eng, nil, zap.NewNop())
	go func() {
		if err := r.Run(ctx); err != nil && ctx.Err() == nil {
			t.Errorf("runner: %v", err)
		}
	}()
	waitFor(t, 10*time.Second, func() bool {
		_, err := js.Consumer(ctx, event.StreamSteps, runner.DurableName(kind, "default"))
		return err == nil
	})
}

func waitFor(t testing.TB, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (e *env) apply(t testing.TB, file string) *spec.Pipeline { return e.applyTB(t, file) }

func (e *env) applyTB(t testing.TB, file string) *spec.Pipeline {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	p, err := spec.Parse(file, b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Store.PutPipeline(context.Background(), p, string(b), "test"); err != nil {
		t.Fatal(err)
	}
	return p
}

func (e *env) waitRun(t testing.TB, id string, d time.Duration) *store.Run {
	return e.waitRunTB(t, id, d)
}

func (e *env) waitRunTB(t testing.TB, id string, d time.Duration) *store.Run {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		r, err := e.svc.Store.GetRun(context.Background(), id)
		if err == nil && r.Terminal() {
			return r
		}
		if time.Now().After(deadline) {
			if r != nil {
				for _, s := range r.Steps {
					t.Logf("step %s: %s attempts=%d queued=%v not_before=%v error=%q", s.Name, s.Status, s.Attempts, s.QueuedAt, s.NotBefore, s.Error)
				}
			}
			t.Fatalf("run %s not over within %s (%v)", id, d, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestScenarios(t *testing.T) {
	files, _ := filepath.Glob("../testdata/scenarios/*.expected.yaml")
	if len(files) == 0 {
		t.Fatal("no scenarios")
	}
	ns := natstest.Run(t)
	e := startEnv(t, ns, true)
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".expected.yaml")
		t.Run(name, func(t *testing.T) {
			var want expected
			b, _ := os.ReadFile(f)
			if err := yaml.Unmarshal(b, &want); err != nil {
				t.Fatal(err)
			}
			p := e.apply(t, strings.TrimSuffix(f, ".expected.yaml")+".yaml")
			run, err := e.svc.Orc.Trigger(context.Background(), orchestrator.TriggerRequest{Pipeline: p.Name,
				Git: orchestrator.GitInfo{Branch: want.Branch, Untrusted: want.Untrusted}, Trigger: apiv1.Trigger{Kind: "test"}})
			if err != nil {
				t.Fatal(err)
			}
			got := e.waitRun(t, run.ID, 20*time.Second)
			if got.Status != want.Status {
				t.Errorf("run status = %s (%s), want %s", got.Status, got.Error, want.Status)
			}
			for _, s := range got.Steps {
				w, ok := want.Steps[s.Name]
				if !ok {
					t.Errorf("step %q not in expectations", s.Name)
					continue
				}
				if s.Status != w.Status {
					t.Errorf("step %q status = %s (%s%s), want %s", s.Name, s.Status, s.Error, s.SkipReason, w.Status)
				}
				if w.Attempts != nil && s.Attempts != *w.Attempts {
					t.Errorf("step %q attempts = %d, want %d", s.Name, s.Attempts, *w.Attempts)
				}
				if w.ExitCode != nil && (s.ExitCode == nil || *s.ExitCode != *w.ExitCode) {
					t.Errorf("step %q exit code = %v, want %d", s.Name, s.ExitCode, *w.ExitCode)
				}
				for k, v := range w.Outputs {
					if s.Outputs[k] != v {
						t.Errorf("step %q output %s = %q, want %q", s.Name, k, s.Outputs[k], v)
					}
				}
				if w.Stdout != nil && s.Logs.Stdout != *w.Stdout {
					t.Errorf("step %q stdout = %q, want %q", s.Name, s.Logs.Stdout, *w.Stdout)
				}
				if w.Stderr != nil && s.Logs.Stderr != *w.Stderr {
					t.Errorf("step %q stderr = %q, want %q", s.Name, s.Logs.Stderr, *w.Stderr)
				}
				if w.Error != "" && !strings.Contains(s.Error, w.Error) {
					t.Errorf("step %q error = %q, want it to contain %q", s.Name, s.Error, w.Error)
				}
			}
		})
	}
}
