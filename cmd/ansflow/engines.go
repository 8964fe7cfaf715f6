package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"

	dockerengine "github.com/ansflow/ansflow/services/docker-runner/engine"
	k8sengine "github.com/ansflow/ansflow/services/k8s-runner/engine"
)

func init() {
	engines["docker"] = newDockerEngine
	engines["k8s"] = newK8sEngines
}

// newK8sEngines builds one Kubernetes engine for the current kubeconfig
// context (cluster "default") and one per cluster of the config file.
func newK8sEngines(ctx context.Context, fc *fileConfig, _ stackConfig, log *zap.Logger) ([]servedEngine, error) {
	type cluster struct{ name, kubeconfig, context string }
	clusters := []cluster{{name: "default"}}
	for _, c := range fc.Clusters {
		clusters = append(clusters, cluster{c.Name, c.Kubeconfig, c.Context})
	}
	var out []servedEngine
	var errs []string
	for _, c := range clusters {
		eng, err := k8sengine.New(k8sengine.Config{Kubeconfig: c.kubeconfig, Context: c.context, Cluster: c.name},
			log.With(zap.String("service", "k8s-runner"), zap.String("cluster", c.name)))
		if err == nil {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err = eng.Ping(pctx)
			cancel()
		}
		if err != nil {
			errs = append(errs, fmt.Sprintf("cluster %q: %v", c.name, err))
			continue
		}
		out = append(out, servedEngine{Engine: eng, Targets: []string{c.name}})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no Kubernetes cluster reachable (run `make cluster-up` and export KUBECONFIG): %s", strings.Join(errs, "; "))
	}
	for _, e := range errs {
		log.Warn("k8s cluster not served", zap.String("reason", e))
	}
	return out, nil
}

// newDockerEngine builds the embedded docker runner's engine, holding the
// credentials of the config file's registries, under cfg's runner policy.
func newDockerEngine(ctx context.Context, fc *fileConfig, cfg stackConfig, log *zap.Logger) ([]servedEngine, error) {
	creds := dockerengine.Credentials{}
	if path := os.Getenv("ANSFLOW_DOCKER_CREDENTIALS"); path != "" {
		loaded, err := dockerengine.LoadCredentials(path)
		if err != nil {
			return nil, err
		}
		creds = loaded
	}
	for _, r := range fc.Registries {
		if r.Username == "" {
			continue
		}
		pw, err := r.password()
		if err != nil {
			return nil, err
		}
		c := dockerengine.Credential{Server: r.URL, Username: r.Username, Password: pw}
		creds[r.Name], creds[r.ID] = c, c
	}
	log = log.With(zap.String("service", "docker-runner"))
	if rel := cfg.DockerPolicy.Relaxations(); len(rel) > 0 {
		for _, r := range rel {
			log.Warn("runner policy relaxed: " + r)
		}
	} else {
		log.Info("runner policy: strict (no host paths, Docker socket, privileged containers or host network)")
	}
	eng, err := dockerengine.New(dockerengine.Config{Credentials: creds, Policy: cfg.DockerPolicy}, log)
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := eng.Ping(pctx); err != nil {
		return nil, fmt.Errorf("docker engine not reachable: %w", err)
	}
	return []servedEngine{{Engine: eng, Targets: []string{"default"}}}, nil
}

// password resolves a registry's password reference.
func (r registryConfig) password() (string, error) {
	switch {
	case r.PasswordEnv != "":
		v, ok := os.LookupEnv(r.PasswordEnv)
		if !ok {
			return "", fmt.Errorf("registry %q: environment variable %s is not set", r.Name, r.PasswordEnv)
		}
		return v, nil
	case r.PasswordFile != "":
		b, err := os.ReadFile(r.PasswordFile)
		if err != nil {
			return "", fmt.Errorf("registry %q: %w", r.Name, err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
	return "", nil
}
