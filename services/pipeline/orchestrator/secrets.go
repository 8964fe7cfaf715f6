package orchestrator

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/pkg/spec"
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
// exist, or its registry or cluster entry names one that does not, so the
// trigger is refused with a clear error instead of a run that fails later.
func (o *Orchestrator) checkSecrets(ctx context.Context, r *store.Run) error {
	cat := o.store.Catalog()
	for i := range r.Spec.Steps {
		st := &r.Spec.Steps[i]
		type use struct{ what, name string }
		var uses []use
		for j, ref := range st.Secrets {
			uses = append(uses, use{fmt.Sprintf("secrets[%d]", j), ref.Name})
		}
		reg, cl := o.credentialSecrets(cat, st)
		if reg != "" {
			uses = append(uses, use{fmt.Sprintf("docker_registry %s: password_secret", st.DockerRegistry), reg})
		}
		if cl != "" {
			uses = append(uses, use{fmt.Sprintf("k8s_cluster %s: token_secret", o.clusterOf(st)), cl})
		}
		for _, u := range uses {
			if o.secrets == nil {
				return fmt.Errorf("%w: step %q %s: this pipeline service has no secret store", ErrInvalid, st.Name, u.what)
			}
			if err := o.secrets.Exists(ctx, r.Pipeline, u.name); err != nil {
				return fmt.Errorf("%w: step %q %s: %w", ErrInvalid, st.Name, u.what, err)
			}
		}
	}
	return nil
}

// clusterOf is the catalogue name of a Kubernetes step's cluster.
func (o *Orchestrator) clusterOf(st *spec.Step) string {
	if st.K8sCluster != "" {
		return string(st.K8sCluster)
	}
	return o.cfg.Policy.DefaultCluster
}

// credentialSecrets returns the secrets the catalogue entries of a step's
// registry and cluster keep their credentials in ("" for none).
func (o *Orchestrator) credentialSecrets(cat *store.Catalog, st *spec.Step) (registry, cluster string) {
	if st.DockerRegistry != "" {
		if reg, err := cat.Registry(string(st.DockerRegistry)); err == nil {
			registry = reg.PasswordSecret
		}
	}
	if st.Kind() == event.KindK8s {
		if c, err := cat.Cluster(o.clusterOf(st)); err == nil {
			cluster = c.TokenSecret
		}
	}
	return registry, cluster
}

// seal attaches to req, sealed to the runners of its pool, the secrets the
// step asks for and the credentials its registry or cluster entry keeps in
// the secret store. Its errors never hold a value.
func (o *Orchestrator) seal(ctx context.Context, r *store.Run, req *event.StepRequested) error {
	i := r.Spec.StepIndex(req.StepID)
	if i < 0 {
		return nil
	}
	st := &r.Spec.Steps[i]
	var regSecret, clusterSecret string
	cat := o.store.Catalog()
	if req.Registry != nil {
		if reg, err := cat.Registry(req.Registry.ID); err == nil && reg.PasswordSecret != "" {
			regSecret = reg.PasswordSecret
			req.Registry.Username = reg.Username
		}
	}
	if req.Kind == event.KindK8s {
		if c, err := cat.Cluster(req.Target); err == nil {
			clusterSecret = c.TokenSecret
		}
	}
	if len(st.Secrets) == 0 && regSecret == "" && clusterSecret == "" {
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
	sealOne := func(what, name, env string) (*event.SealedSecret, error) {
		meta, value, err := o.secrets.Resolve(ctx, r.Pipeline, name)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		defer clear(value)
		if err := meta.Filters.Allow(facts); err != nil {
			return nil, fmt.Errorf("%s %s (%s): %w", what, name, meta.Scope, err)
		}
		b := secret.Binding{RunID: req.RunID, StepID: req.StepID, Attempt: req.Attempt, Name: name, Env: env}
		boxes, err := secret.Seal(value, b, keys)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", what, name, err)
		}
		return &event.SealedSecret{Name: name, Env: env, Boxes: boxes}, nil
	}
	req.Secrets = nil
	for j, ref := range st.Secrets {
		s, err := sealOne(fmt.Sprintf("secrets[%d]", j), ref.Name, ref.EnvName())
		if err != nil {
			return err
		}
		req.Secrets = append(req.Secrets, *s)
	}
	var err error
	if regSecret != "" {
		if req.Registry.Password, err = sealOne("registry "+req.Registry.Name+" password_secret", regSecret, secret.EnvRegistryPassword); err != nil {
			return err
		}
	}
	if clusterSecret != "" {
		if req.ClusterToken, err = sealOne("cluster "+req.Target+" token_secret", clusterSecret, secret.EnvClusterToken); err != nil {
			return err
		}
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
