package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/tmpl"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// prepare resolves step i of r for dispatch, records what it resolved in the
// step's state, and checks that some runner serves its pool or cluster.
func (o *Orchestrator) prepare(r *store.Run, i int) (*event.StepRequested, error) {
	req, err := o.request(r, i)
	if err != nil {
		return nil, err
	}
	s := r.Steps[i]
	s.Target, s.Image, s.Namespace, s.ResourceName = req.Target, req.Image, req.Namespace, req.ResourceName
	if req.Tag != "" {
		s.Image = req.Image + ":" + req.Tag
	}
	if err := o.checkServed(req.Kind, req.Target); err != nil {
		return nil, err
	}
	return req, nil
}

// request builds the step.requested data of step i's current attempt. It is
// deterministic for a given run state, so a recovery pass can rebuild it.
func (o *Orchestrator) request(r *store.Run, i int) (*event.StepRequested, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st := &r.Spec.Steps[i]
	s := r.Steps[i]
	vars := Vars(r, i)
	env := map[string]string{}
	render := func(field, v string) (string, error) {
		out, err := tmpl.Render(v, vars)
		if err != nil {
			return "", fmt.Errorf("step %q %s: %w", st.Name, field, err)
		}
		return out, nil
	}
	req := &event.StepRequested{RunID: r.ID, StepID: s.ID, StepName: st.Name, Pipeline: r.Pipeline, Attempt: s.Attempts,
		Type: st.Type, Kind: st.Kind(), RequestedAt: time.Now().UTC(), TimeoutSeconds: time.Duration(st.Timeout).Seconds()}
	var err error
	if req.Image, err = render("docker_image", st.DockerImage); err != nil {
		return nil, err
	}
	if req.Tag, err = render("docker_tag", st.DockerTag); err != nil {
		return nil, err
	}
	if req.Image == "" && st.Type != "docker_build" {
		req.Image = vars["docker_image"].S
	}
	if req.Namespace, err = render("k8s_namespace", st.K8sNamespace); err != nil {
		return nil, err
	}
	if req.Namespace == "" {
		req.Namespace = vars["k8s_namespace"].S
	}
	if req.ResourceName, err = render("k8s_resource_name", st.K8sResourceName); err != nil {
		return nil, err
	}
	if req.ResourceName == "" {
		req.ResourceName = vars["k8s_resource_name"].S
	}
	renderCmd := func(v string) (string, error) { return tmpl.RenderCommand(v, vars, env) }
	if st.Command != nil {
		c, err := tmpl.Walk(st.Command, renderCmd)
		if err != nil {
			return nil, fmt.Errorf("step %q command: %w", st.Name, err)
		}
		req.Command = c
	}
	if st.DockerConfig != nil {
		cfg := map[string]any{}
		for k, v := range st.DockerConfig {
			fn := func(s string) (string, error) { return render("docker_config."+k, s) }
			if k == "command" || k == "entrypoint" {
				fn = renderCmd
			}
			if cfg[k], err = tmpl.Walk(v, fn); err != nil {
				return nil, fmt.Errorf("step %q docker_config.%s: %w", st.Name, k, err)
			}
		}
		req.DockerConfig = cfg
	}
	if st.K8sConfig != nil {
		cfg := map[string]any{}
		for k, v := range st.K8sConfig {
			fn := func(s string) (string, error) { return render("k8s_config."+k, s) }
			if k == "command" {
				fn = renderCmd
			}
			if cfg[k], err = tmpl.Walk(v, fn); err != nil {
				return nil, fmt.Errorf("step %q k8s_config.%s: %w", st.Name, k, err)
			}
		}
		req.K8sConfig = cfg
	}
	if len(env) > 0 {
		req.Env = env
	}
	switch req.Kind {
	case event.KindDocker:
		req.Target = st.RunsOn
		if req.Target == "" {
			req.Target = o.cfg.DefaultDockerPool
		}
		if st.DockerRegistry != "" {
			reg, err := o.store.FindRegistry(ctx, string(st.DockerRegistry))
			if err != nil {
				return nil, fmt.Errorf("step %q docker_registry: %w (add it with `ansflow registries add` or the --config file)", st.Name, err)
			}
			req.Registry = &event.Registry{ID: reg.ID, Name: reg.Name, URL: reg.URL}
		}
	case event.KindK8s:
		req.Target = o.cfg.DefaultCluster
		if st.K8sCluster != "" {
			c, err := o.store.FindCluster(ctx, string(st.K8sCluster))
			if err != nil {
				return nil, fmt.Errorf("step %q k8s_cluster: %w (add it with `ansflow clusters add` or the --config file)", st.Name, err)
			}
			req.Target, req.Cluster = c.Name, c.Name
		}
	}
	if r.Source != nil {
		req.Source = &event.Source{RepoURL: r.Source.RepoURL, Commit: r.Source.Commit}
		if r.Source.Object != "" {
			req.Source = &event.Source{ObjectStore: "ansflow_sources", Object: r.Source.Object}
		}
	}
	return req, nil
}

// checkServed fails at once when no runner has ever consumed the pool's or
// cluster's subject, instead of waiting for the dispatch timeout.
func (o *Orchestrator) checkServed(kind, target string) error {
	key := kind + "/" + target
	o.servedMu.Lock()
	ok := time.Since(o.served[key]) < 10*time.Second
	o.servedMu.Unlock()
	if ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := o.js.Consumer(ctx, event.StreamSteps, runner.DurableName(kind, target))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("no %s runner serves %s %q: start one (e.g. `%s-runner --%s %s`)", kind, targetWord(kind), target,
			kind, map[string]string{"docker": "pools", "k8s": "clusters"}[kind], strings.ToLower(target))
	}
	if err != nil {
		return fmt.Errorf("check runners of %s %q: %w", targetWord(kind), target, err)
	}
	o.servedMu.Lock()
	o.served[key] = time.Now()
	o.servedMu.Unlock()
	return nil
}
