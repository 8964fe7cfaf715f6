package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/runner"
	dockerengine "github.com/ansflow/ansflow/services/docker-runner/engine"
)

func init() {
	engines["docker"] = newDockerEngine
}

// newDockerEngine builds the embedded docker runner's engine, holding the
// credentials of the config file's registries.
func newDockerEngine(ctx context.Context, fc *fileConfig, log *zap.Logger) (runner.Engine, []string, error) {
	creds := dockerengine.Credentials{}
	if path := os.Getenv("ANSFLOW_DOCKER_CREDENTIALS"); path != "" {
		loaded, err := dockerengine.LoadCredentials(path)
		if err != nil {
			return nil, nil, err
		}
		creds = loaded
	}
	for _, r := range fc.Registries {
		if r.Username == "" {
			continue
		}
		pw, err := r.password()
		if err != nil {
			return nil, nil, err
		}
		c := dockerengine.Credential{Server: r.URL, Username: r.Username, Password: pw}
		creds[r.Name], creds[r.ID] = c, c
	}
	eng, err := dockerengine.New(dockerengine.Config{Credentials: creds}, log.With(zap.String("service", "docker-runner")))
	if err != nil {
		return nil, nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := eng.Ping(pctx); err != nil {
		return nil, nil, fmt.Errorf("docker engine not reachable: %w", err)
	}
	return eng, []string{"default"}, nil
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
