package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/source"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// ErrSource is wrapped by a trigger's error when the run's repository,
// branch or tag cannot be resolved (the caller's input, answered 4xx).
var ErrSource = fmt.Errorf("%w: source", ErrInvalid)

// resolveCommit pins a run to a commit: a trigger naming a branch or a
// tag but no commit gets the commit it points at now, so every step of the
// run (and a rerun) builds the same tree. The default branch's head is
// taken when the trigger names neither.
func (o *Orchestrator) resolveCommit(ctx context.Context, g *GitInfo) error {
	if g.Commit != "" {
		return nil
	}
	ref := g.Branch
	if g.Tag != "" {
		ref = g.Tag
	}
	if ref == "" {
		ref = "HEAD"
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	sha, err := source.ResolveRef(ctx, o.cfg.Clone, g.RepoURL, ref)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrSource, err)
	}
	g.Commit = sha
	return nil
}

// repositorySpec reads a from_repository pipeline's file at the run's
// commit and returns the spec the run executes: the file's steps,
// variables, timeout and execution mode, under the stored pipeline's name,
// triggers, repository and concurrency settings (a commit cannot change
// how it is triggered or admitted). Its error, the file's
// `file:line: field: message` lines or why the file could not be read,
// fails the run.
func (o *Orchestrator) repositorySpec(ctx context.Context, stored *spec.Pipeline, src *apiv1.Source) (*spec.Pipeline, error) {
	file := stored.File()
	if src == nil || src.RepoURL == "" {
		return nil, fmt.Errorf("%s: the pipeline takes its steps from the repository, but the run has none (set pipeline.repository or trigger with a repository)", file)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	data, err := source.ReadFile(ctx, o.cfg.Clone, src.RepoURL, src.Commit, file)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: not found in the repository at commit %.12s", file, src.Commit)
	} else if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	p, err := spec.Parse(file, data)
	if err != nil {
		return nil, err
	}
	out := *stored
	out.Description, out.ExecutionMode, out.Variables, out.Timeout, out.Steps = p.Description, p.ExecutionMode, p.Variables, p.Timeout, p.Steps
	return &out, nil
}

// startFailed stores r as a run that failed before any step, with cause
// as its error, and announces its creation and end.
func (o *Orchestrator) startFailed(ctx context.Context, r *store.Run, cause error) error {
	now := time.Now().UTC()
	r.Status, r.Error, r.StartedAt, r.FinishedAt = event.StatusFailed, cause.Error(), &now, &now
	ictx, cancel := context.WithTimeout(ctx, o.cfg.IOTimeout)
	defer cancel()
	if err := o.store.CreateRun(ictx, r); errors.Is(err, store.ErrExists) {
		return fmt.Errorf("%w: %s", ErrRunExists, r.ID)
	} else if err != nil {
		return err
	}
	o.cfg.Metrics.RunStarted(r.Pipeline)
	o.runFinished(r)
	o.publish(ctx, event.TypeRunCreated, event.Meta{RunID: r.ID}, "created-"+r.ID, event.RunCreated{RunID: r.ID,
		Pipeline: r.Pipeline, Version: r.PipelineVersion, BuildNumber: r.BuildNumber, Trigger: r.Trigger.Kind, Actor: r.Trigger.Actor})
	o.publish(ctx, event.TypeRunCompleted, event.Meta{RunID: r.ID}, "completed-"+r.ID, event.RunCompleted{
		RunID: r.ID, Pipeline: r.Pipeline, Status: r.Status, Error: r.Error, FinishedAt: now})
	return nil
}
