package apiv1

import (
	"fmt"

	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/secret"
)

// Registry is a container registry of the catalogue. Its credential is
// either held by the runner serving it, or kept in the secret store:
// PasswordSecret names a secret (the running pipeline's own, else the
// global one) that reaches the step's runner sealed to its pool, with
// Username, and is sent only to URL's host.
type Registry struct {
	ID             string `json:"id"`
	Name           string `json:"name"`
	URL            string `json:"url"`
	Username       string `json:"username,omitempty"`
	PasswordSecret string `json:"password_secret,omitempty"`
}

// Check reports an entry whose credential could not be used safely: a
// password secret needs a username, a valid secret name and a URL, the
// host it is bound to.
func (r *Registry) Check() error {
	if r.PasswordSecret == "" {
		if r.Username != "" {
			return fmt.Errorf("registry %q: username without password_secret (name the secret holding the password)", r.Name)
		}
		return nil
	}
	if err := secret.CheckName(r.PasswordSecret); err != nil {
		return fmt.Errorf("registry %q: password_secret: %w", r.Name, err)
	}
	if r.Username == "" {
		return fmt.Errorf("registry %q: password_secret needs a username", r.Name)
	}
	if r.URL == "" {
		return fmt.Errorf("registry %q: password_secret needs a url: the password is only sent to that host", r.Name)
	}
	return nil
}

// Cluster is a Kubernetes cluster of the catalogue; k8s runners serving it
// subscribe by Name and hold its address and credentials. TokenSecret
// names a secret holding a bearer token (a service account's, say): steps
// on the cluster then authenticate with it instead of the runner's own
// credentials, so a pipeline gets only what that account may do.
type Cluster struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	Context     string `json:"context,omitempty"`
	TokenSecret string `json:"token_secret,omitempty"`
}

// Check reports an entry naming an invalid secret.
func (c *Cluster) Check() error {
	if c.TokenSecret == "" {
		return nil
	}
	if err := secret.CheckName(c.TokenSecret); err != nil {
		return fmt.Errorf("cluster %q: token_secret: %w", c.Name, err)
	}
	return nil
}

// RunnerStatus is a runner as `GET /api/v1/runners` lists it.
type RunnerStatus struct {
	runner.RunnerInfo
	Online bool `json:"online"`
}
