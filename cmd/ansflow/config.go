package main

import (
	"context"
	"fmt"
	"os"

	"gopkg.in/yaml.v3"

	"github.com/ansflow/ansflow/pkg/apiv1"
	k8sengine "github.com/ansflow/ansflow/services/k8s-runner/engine"
	"github.com/ansflow/ansflow/services/pipeline/service"
)

// fileConfig is the embedded mode's --config file: the registries and
// clusters catalogue, with credentials by reference for the local runners.
type fileConfig struct {
	Registries []registryConfig `yaml:"registries"`
	Clusters   []clusterConfig  `yaml:"clusters"`
}

// registryConfig is a registry entry. Its password is the local runner's
// (PasswordEnv, PasswordFile) or kept in the secret store (PasswordSecret,
// stored in the catalogue entry and sealed to the runner per step).
type registryConfig struct {
	ID             string `yaml:"id"`
	Name           string `yaml:"name"`
	URL            string `yaml:"url"`
	Username       string `yaml:"username"`
	PasswordEnv    string `yaml:"password_env"`
	PasswordFile   string `yaml:"password_file"`
	PasswordSecret string `yaml:"password_secret"`
}

// entry is the registry's catalogue entry.
func (r registryConfig) entry() *apiv1.Registry {
	e := &apiv1.Registry{ID: r.ID, Name: r.Name, URL: r.URL}
	if r.PasswordSecret != "" {
		e.Username, e.PasswordSecret = r.Username, r.PasswordSecret
	}
	return e
}

// clusterConfig is a cluster entry: its catalogue id, where the embedded
// k8s runner finds its credentials and what its steps may touch (the same
// form as the k8s runner's --clusters-file, [k8sengine.Cluster]); an entry
// named "default" configures the cluster of the steps that name none.
type clusterConfig struct {
	ID                string `yaml:"id"`
	k8sengine.Cluster `yaml:",inline"`
	// TokenSecret names the secret holding the bearer token its steps
	// authenticate with (see apiv1.Cluster).
	TokenSecret string `yaml:"token_secret"`
}

func loadFileConfig(path string) (*fileConfig, error) {
	fc := &fileConfig{}
	if path == "" {
		return fc, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	dec := yaml.NewDecoder(bytesReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(fc); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	for i, r := range fc.Registries {
		if r.ID == "" || r.Name == "" || r.URL == "" {
			return nil, fmt.Errorf("config %s: registries[%d]: id, name and url are required", path, i)
		}
		if r.PasswordSecret != "" && (r.PasswordEnv != "" || r.PasswordFile != "") {
			return nil, fmt.Errorf("config %s: registries[%d]: password_secret excludes password_env and password_file", path, i)
		}
		if err := r.entry().Check(); err != nil {
			return nil, fmt.Errorf("config %s: registries[%d]: %w", path, i, err)
		}
	}
	for i, c := range fc.Clusters {
		if c.ID == "" || c.Name == "" {
			return nil, fmt.Errorf("config %s: clusters[%d]: id and name are required", path, i)
		}
		if err := c.entry().Check(); err != nil {
			return nil, fmt.Errorf("config %s: clusters[%d]: %w", path, i, err)
		}
	}
	return fc, nil
}

// applyCatalog stores the file's registries and clusters (without
// credentials, only the names of secrets holding them) in the pipeline
// service's catalogue.
func applyCatalog(ctx context.Context, svc *service.Service, fc *fileConfig) error {
	for _, r := range fc.Registries {
		if err := svc.Store.PutRegistry(ctx, r.entry()); err != nil {
			return err
		}
	}
	for _, c := range fc.Clusters {
		if err := svc.Store.PutCluster(ctx, c.entry()); err != nil {
			return err
		}
	}
	return nil
}

// entry is the cluster's catalogue entry.
func (c clusterConfig) entry() *apiv1.Cluster {
	return &apiv1.Cluster{ID: c.ID, Name: c.Name, Context: c.Context, TokenSecret: c.TokenSecret}
}
