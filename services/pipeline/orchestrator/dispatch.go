package orchestrator

import (
	"fmt"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/tmpl"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// Request builds the step.requested data of step i's current attempt from
// the run and env's catalogue and policy. It does no I/O and is
// deterministic for a given run state but for RequestedAt, so a recovery
// pass can rebuild it.
func Request(r *store.Run, i int, env Env) (*event.StepRequested, error) {
	st := &r.Spec.Steps[i]
	s := r.Steps[i]
	vars := Vars(r, i)
	cmdEnv := map[string]string{}
	render := func(field, v string) (string, error) {
		out, err := tmpl.Render(v, vars)
		if err != nil {
			return "", fmt.Errorf("step %q %s: %w", st.Name, field, err)
		}
		return out, nil
	}
	req := &event.StepRequested{RunID: r.ID, StepID: s.ID, StepName: st.Name, Pipeline: r.Pipeline, Attempt: s.Attempts,
		Type: st.Type, Kind: st.Kind(), RequestedAt: env.Now, Reason: s.NextReason}
	req.TimeoutSeconds = (&decision{env: env}).stepTimeout(st).Seconds()
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
	renderCmd := func(v string) (string, error) { return tmpl.RenderCommand(v, vars, cmdEnv) }
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
	if len(cmdEnv) > 0 {
		req.Env = cmdEnv
	}
	switch req.Kind {
	case event.KindDocker:
		req.Target = st.RunsOn
		if req.Target == "" {
			req.Target = env.Policy.DefaultDockerPool
		}
		if st.DockerRegistry != "" {
			reg, err := env.Catalog.Registry(string(st.DockerRegistry))
			if err != nil {
				return nil, fmt.Errorf("step %q docker_registry: %w (add it with `ansflow registries add` or the --config file)", st.Name, err)
			}
			req.Registry = &event.Registry{ID: reg.ID, Name: reg.Name, URL: reg.URL}
		}
	case event.KindK8s:
		req.Target = env.Policy.DefaultCluster
		if st.K8sCluster != "" {
			c, err := env.Catalog.Cluster(string(st.K8sCluster))
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
