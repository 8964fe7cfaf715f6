package store

import (
	"context"
	"testing"
	"time"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/pkg/spec"
)

// TestRunsKeepTheSpecTheyExecute: a run of an ordinary pipeline is read
// back with its version's spec, and a from_repository run with the steps
// it read from the repository, not the stored pipeline's (which has none);
// the orchestrator indexes a run's spec steps by its step states.
func TestRunsKeepTheSpecTheyExecute(t *testing.T) {
	ns := natstest.Run(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Open(ctx, ns.JS, 1)
	if err != nil {
		t.Fatal(err)
	}
	put := func(yamlText string) *apiv1.Pipeline {
		t.Helper()
		p, err := spec.Parse("p.yaml", []byte(yamlText))
		if err != nil {
			t.Fatal(err)
		}
		rec, err := s.PutPipeline(ctx, p, yamlText, "test")
		if err != nil {
			t.Fatal(err)
		}
		return rec
	}
	plain := put("pipeline:\n  name: plain\n  steps:\n    - {name: a, type: docker_run, command: 'echo a'}\n")
	fromRepo := put("pipeline:\n  name: from-repo\n  repository: https://git.example.com/a/b.git\n  from_repository: true\n")
	if len(fromRepo.Spec.Steps) != 0 {
		t.Fatalf("stored from_repository pipeline has %d steps, want none", len(fromRepo.Spec.Steps))
	}
	file, err := spec.Parse(".ansflow.yml", []byte("pipeline:\n  name: from-repo\n  steps:\n    - {name: a, type: docker_run, command: 'echo a'}\n    - {name: b, type: docker_run, command: 'echo b'}\n"))
	if err != nil {
		t.Fatal(err)
	}
	executed := *fromRepo.Spec
	executed.Steps = file.Steps

	for _, tc := range []struct {
		id        string
		rec       *apiv1.Pipeline
		spec      *spec.Pipeline
		wantSteps int
	}{
		{"run-plain", plain, plain.Spec, 1},
		{"run-from-repo", fromRepo, &executed, 2},
	} {
		r := &Run{Run: apiv1.Run{ID: tc.id, Pipeline: tc.rec.Name, PipelineVersion: tc.rec.Version, Status: "pending", Spec: tc.spec}}
		for _, st := range tc.spec.Steps {
			r.Steps = append(r.Steps, &apiv1.StepState{Name: st.Name, ID: st.ID(), Status: "pending"})
		}
		if err := s.CreateRun(ctx, r); err != nil {
			t.Fatal(err)
		}
		r.Status = "running"
		if err := s.UpdateRun(ctx, r); err != nil {
			t.Fatal(err)
		}
		// A second store has no cached copy: it decodes the bucket entry,
		// as another pipeline instance or a restarted one does.
		other, err := Open(ctx, ns.JS, 1)
		if err != nil {
			t.Fatal(err)
		}
		for name, get := range map[string]func(context.Context, string) (*Run, error){
			"GetRun": s.GetRun, "GetRunCached": s.GetRunCached, "another store's GetRun": other.GetRun} {
			got, err := get(ctx, tc.id)
			if err != nil {
				t.Fatalf("%s %s: %v", name, tc.id, err)
			}
			if len(got.Spec.Steps) != tc.wantSteps || len(got.Steps) != tc.wantSteps {
				t.Errorf("%s %s: %d spec steps and %d step states, want %d of each", name, tc.id, len(got.Spec.Steps), len(got.Steps), tc.wantSteps)
			}
		}
		runs, err := other.ListRuns(ctx, RunFilter{Pipeline: tc.rec.Name})
		if err != nil {
			t.Fatal(err)
		}
		if len(runs) != 1 || len(runs[0].Spec.Steps) != tc.wantSteps {
			t.Errorf("ListRuns %s: %d runs, want 1 with %d spec steps", tc.id, len(runs), tc.wantSteps)
		}
	}
}
