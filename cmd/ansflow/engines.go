package main

import (
	"context"
	"errors"
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

// newK8sEngines builds one Kubernetes engine per cluster entry of the config
// file, and one for cluster "default" (the steps that name no cluster).
// Each uses only a context named explicitly: the entry's context (or the
// current context of the entry's own kubeconfig), and for "default" the
// --kube-context flag or the current context of an explicitly set
// $KUBECONFIG; never ~/.kube/config's current context by accident. A cluster
// without one is returned unserved, with the reason.
func newK8sEngines(ctx context.Context, fc *fileConfig, cfg stackConfig, log *zap.Logger) ([]servedEngine, error) {
	explicitEnv := os.Getenv("KUBECONFIG") != ""
	clusters := fc.Clusters
	hasDefault := false
	for _, c := range clusters {
		hasDefault = hasDefault || c.Name == "default"
	}
	if !hasDefault {
		clusters = append([]clusterConfig{{Cluster: k8sengine.Cluster{Name: "default", Context: cfg.KubeContext}}}, clusters...)
	}
	var out []servedEngine
	served := 0
	for _, c := range clusters {
		clog := log.With(zap.String("service", "k8s-runner"), zap.String("cluster", c.Name))
		if c.Context == "" && c.Kubeconfig == "" && !explicitEnv {
			why := fmt.Errorf("cluster %q names no kubeconfig context: set its context in --config, pass --kube-context, or export KUBECONFIG", c.Name)
			if c.Name == "default" {
				why = errors.New(`cluster "default" (steps without k8s_cluster) has no kubeconfig context: pass --kube-context, export KUBECONFIG, or add a cluster entry named "default" to --config`)
			}
			out = append(out, servedEngine{Targets: []string{c.Name}, Unserved: why})
			continue
		}
		eng, err := k8sengine.New(c.Config(k8sengine.Config{}), clog)
		if err == nil {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err = eng.Ping(pctx)
			cancel()
		}
		if err != nil {
			out = append(out, servedEngine{Targets: []string{c.Name}, Unserved: fmt.Errorf("cluster %q: %w", c.Name, err)})
			continue
		}
		kctx := c.Context
		if kctx == "" {
			kctx = "the current context of " + firstNonEmpty(c.Kubeconfig, "$KUBECONFIG")
		}
		acc := eng.Access()
		desc := fmt.Sprintf("context %s at %s, namespaces %s", strconvQuote(kctx), eng.Host(), strings.Join(acc.Namespaces, ","))
		clog.Info("k8s cluster served", zap.String("context", kctx), zap.String("server", eng.Host()),
			zap.Strings("namespaces", acc.Namespaces), zap.Strings("kinds", acc.Kinds))
		out = append(out, servedEngine{Engine: eng, Targets: []string{c.Name}, Desc: desc})
		served++
	}
	if served == 0 {
		var errs []string
		for _, se := range out {
			errs = append(errs, se.Unserved.Error())
		}
		return out, fmt.Errorf("no Kubernetes cluster reachable (run `make cluster-up` and export KUBECONFIG): %s", strings.Join(errs, "; "))
	}
	for _, se := range out {
		if se.Unserved != nil {
			log.Warn("k8s cluster not served", zap.String("reason", se.Unserved.Error()))
		}
	}
	return out, nil
}

func strconvQuote(s string) string {
	if strings.HasPrefix(s, "the current context") {
		return s
	}
	return `"` + s + `"`
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
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
		if r.Username == "" || r.PasswordSecret != "" {
			continue // anonymous, or sealed to the runner per step
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
