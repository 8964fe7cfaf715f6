package orchestrator

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// SecretStore is what the orchestrator needs of the secret store.
type SecretStore interface {
	// Exists reports whether a step of pipeline may ask for name.
	Exists(ctx context.Context, pipeline, name string) error
	// Resolve returns the secret's metadata and plaintext.
	Resolve(ctx context.Context, pipeline, name string) (secret.Meta, []byte, error)
}

// SecretsRefused says the secrets of an attempt could not be sealed (a
// secret is missing, its filters refuse the run, or no runner of the pool
// announced a secrets key); the attempt fails with Reason.
type SecretsRefused struct {
	StepID  string
	Attempt int
	Reason  string
}

func (SecretsRefused) input() {}

// WithSecrets makes the orchestrator seal the secrets steps ask for from
// st; without it a step asking for secrets fails. Call it before Run.
func (o *Orchestrator) WithSecrets(st SecretStore) *Orchestrator {
	o.secrets = st
	return o
}

// checkSecrets fails when a step of the run asks for a secret that does not
// exist, so the trigger is refused with a clear error instead of a run that
// fails later.
func (o *Orchestrator) checkSecrets(ctx context.Context, r *store.Run) error {
	for i := range r.Spec.Steps {
		st := &r.Spec.Steps[i]
		for j, ref := range st.Secrets {
			if o.secrets == nil {
				return fmt.Errorf("%w: step %q secrets[%d]: this pipeline service has no secret store", ErrInvalid, st.Name, j)
			}
			if err := o.secrets.Exists(ctx, r.Pipeline, ref.Name); err != nil {
				return fmt.Errorf("%w: step %q secrets[%d]: %w", ErrInvalid, st.Name, j, err)
			}
		}
	}
	return nil
}

// seal attaches the sealed secrets step req asks for to req. Its errors
// never hold a value.
func (o *Orchestrator) seal(ctx context.Context, r *store.Run, req *event.StepRequested) error {
	i := r.Spec.StepIndex(req.StepID)
	if i < 0 || len(r.Spec.Steps[i].Secrets) == 0 {
		return nil
	}
	if o.secrets == nil {
		return errors.New("the step asks for secrets but this pipeline service has no secret store")
	}
	keys, pinned := o.cfg.PoolKeys[PoolKeyID(req.Kind, req.Target)]
	if d := o.pools.Load(); d != nil && !pinned {
		keys = d.SecretKeys(req.Kind, req.Target)
	}
	if len(keys) == 0 {
		return fmt.Errorf("no runner of %s pool %q announced a secrets key (start its runners with --secrets-identity FILE)", req.Kind, req.Target)
	}
	facts := secret.RunFacts{Trigger: r.Trigger.Kind, Event: r.Trigger.Event, Fork: r.Trigger.Fork, Branch: r.Vars["git_branch"].Value, Image: req.Image}
	if req.Tag != "" {
		facts.Image += ":" + req.Tag
	}
	req.Secrets = nil
	for j, ref := range r.Spec.Steps[i].Secrets {
		meta, value, err := o.secrets.Resolve(ctx, r.Pipeline, ref.Name)
		if err != nil {
			return fmt.Errorf("secrets[%d]: %w", j, err)
		}
		if err := meta.Filters.Allow(facts); err != nil {
			return fmt.Errorf("secrets[%d] %s (%s): %w", j, ref.Name, meta.Scope, err)
		}
		b := secret.Binding{RunID: req.RunID, StepID: req.StepID, Attempt: req.Attempt, Name: ref.Name, Env: ref.EnvName()}
		boxes, err := secret.Seal(value, b, keys)
		clear(value)
		if err != nil {
			return fmt.Errorf("secrets[%d] %s: %w", j, ref.Name, err)
		}
		req.Secrets = append(req.Secrets, event.SealedSecret{Name: ref.Name, Env: ref.EnvName(), Boxes: boxes})
	}
	return nil
}

// refuse fails the attempt whose secrets could not be sealed. It runs
// outside the run's lock (dispatch runs under it).
func (o *Orchestrator) refuse(ctx context.Context, req *event.StepRequested, err error) {
	o.log.Warn("step secrets refused", zap.String("run_id", req.RunID), zap.String("step_id", req.StepID), zap.Error(err))
	in := SecretsRefused{StepID: req.StepID, Attempt: req.Attempt, Reason: err.Error()}
	go func() {
		if _, err := o.update(context.WithoutCancel(ctx), req.RunID, in); err != nil {
			o.log.Error("fail a step whose secrets were refused", zap.String("run_id", req.RunID), zap.Error(err))
		}
	}()
}
