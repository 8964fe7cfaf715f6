// Package store keeps the pipeline service's state in JetStream key-value
// buckets: pipelines with their version history, the registries and clusters
// catalogue, build-number counters, and runs, updated with compare-and-swap
// so that several pipeline service instances can share them.
package store

import (
	"fmt"
	"time"

	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/pkg/spec"
)

// PipelineRecord is one stored pipeline version.
type PipelineRecord struct {
	Name      string         `json:"name"`
	Version   int            `json:"version"`
	YAML      string         `json:"yaml"`
	Spec      *spec.Pipeline `json:"spec"`
	CreatedAt time.Time      `json:"created_at"`
	UpdatedAt time.Time      `json:"updated_at"`
	UpdatedBy string         `json:"updated_by,omitempty"`
}

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

// Var is a run variable; Untrusted marks values from webhook payloads.
type Var struct {
	Value     string `json:"value"`
	Untrusted bool   `json:"untrusted,omitempty"`
}

// Logs holds the tails of a step's output streams.
type Logs struct {
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
}

// StepState is the record of one step within a run.
type StepState struct {
	Name       string            `json:"name"`
	ID         string            `json:"id"`
	Type       string            `json:"type"`
	Status     string            `json:"status"`
	Attempts   int               `json:"attempts"`
	ExitCode   *int              `json:"exit_code"`
	Outputs    map[string]string `json:"outputs"`
	Error      string            `json:"error,omitempty"`
	StartedAt  *time.Time        `json:"started_at"`
	FinishedAt *time.Time        `json:"finished_at"`
	Logs       Logs              `json:"logs"`

	Kind         string `json:"kind,omitempty"`
	Target       string `json:"target,omitempty"`
	Runner       string `json:"runner,omitempty"`
	Image        string `json:"docker_image,omitempty"`
	Namespace    string `json:"k8s_namespace,omitempty"`
	ResourceName string `json:"k8s_resource_name,omitempty"`
	// QueuedAt is when the current attempt was dispatched; Waiting says,
	// while the step is queued, why no runner has taken it yet (it is
	// filled in when the run is read through the API, not stored).
	QueuedAt *time.Time `json:"queued_at,omitempty"`
	// QueueSeconds is how long the current attempt waited from its
	// dispatch until a runner started it.
	QueueSeconds float64    `json:"queue_seconds,omitempty"`
	Waiting      string     `json:"waiting,omitempty"`
	NotBefore    *time.Time `json:"not_before,omitempty"`
	SkipReason   string     `json:"skip_reason,omitempty"`
	// LostAttempts counts attempts lost with their runner; they do not
	// count against the retry policy.
	LostAttempts int `json:"lost_attempts,omitempty"`
	// NextReason is the reason the next attempt is made ("runner_lost").
	NextReason string `json:"next_reason,omitempty"`
	// History records the attempts before the current one.
	History []AttemptEnd `json:"history,omitempty"`
}

// AttemptEnd is how an earlier attempt of a step ended.
type AttemptEnd struct {
	Attempt    int        `json:"attempt"`
	Status     string     `json:"status"`
	Reason     string     `json:"reason,omitempty"`
	Runner     string     `json:"runner,omitempty"`
	Error      string     `json:"error,omitempty"`
	StartedAt  *time.Time `json:"started_at,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
}

// Terminal reports whether the step will not change any more.
func (s *StepState) Terminal() bool {
	switch s.Status {
	case "succeeded", "failed", "skipped", "cancelled":
		return true
	}
	return false
}

// Trigger says what started a run.
type Trigger struct {
	Kind     string `json:"kind"` // cli, api, webhook, cron, rerun
	Actor    string `json:"actor,omitempty"`
	Provider string `json:"provider,omitempty"`
	Delivery string `json:"delivery,omitempty"`
	// Event is the webhook event (push, tag, pull_request), which secret
	// filters match.
	Event string `json:"event,omitempty"`
	// Fork marks a run of a pull request from a fork: it gets no secret
	// whose filters do not allow forks.
	Fork bool `json:"fork,omitempty"`
}

// Source locates the run's source tree for runners.
type Source struct {
	Object  string `json:"object,omitempty"`
	RepoURL string `json:"repo_url,omitempty"`
	Commit  string `json:"commit,omitempty"`
}

// Run is the state of one pipeline run. It is the document `ansflow run
// --output json` and `ansflow runs get --output json` print.
type Run struct {
	ID              string         `json:"id"`
	Pipeline        string         `json:"pipeline"`
	PipelineVersion int            `json:"pipeline_version"`
	BuildNumber     int            `json:"build_number"`
	Status          string         `json:"status"`
	Error           string         `json:"error,omitempty"`
	CreatedAt       time.Time      `json:"created_at"`
	StartedAt       *time.Time     `json:"started_at"`
	FinishedAt      *time.Time     `json:"finished_at"`
	Trigger         Trigger        `json:"trigger"`
	Vars            map[string]Var `json:"vars"`
	Steps           []*StepState   `json:"steps"`
	RerunOf         string         `json:"rerun_of,omitempty"`
	Source          *Source        `json:"source,omitempty"`

	Spec            *spec.Pipeline `json:"spec"`
	Deadline        *time.Time     `json:"deadline,omitempty"`
	CancelRequested string         `json:"cancel_requested,omitempty"`
	// Admitted is set once a run of a pipeline with a concurrency limit
	// holds one of its slots; until then it is queued, and Waiting says so
	// (filled in when the run is read through the API, not stored).
	Admitted bool `json:"admitted,omitempty"`
	// Approval is set on a run that may not start before an operator
	// approves it (a pull request from a fork); until then it is queued
	// and Waiting says "approval".
	Approval *Approval `json:"approval,omitempty"`
	Waiting  string    `json:"waiting,omitempty"`
	Revision uint64    `json:"-"`
}

// Approval records why a run waits for an operator and who approved it.
type Approval struct {
	// Reason says why the run needs approval.
	Reason     string     `json:"reason"`
	ApprovedBy string     `json:"approved_by,omitempty"`
	ApprovedAt *time.Time `json:"approved_at,omitempty"`
}

// AwaitingApproval reports whether r may not start before an operator
// approves it.
func (r *Run) AwaitingApproval() bool { return r.Approval != nil && r.Approval.ApprovedBy == "" }

// Branch is the run's git branch, if any.
func (r *Run) Branch() string { return r.Vars["git_branch"].Value }

// Terminal reports whether the run is over.
func (r *Run) Terminal() bool {
	switch r.Status {
	case "succeeded", "failed", "cancelled":
		return true
	}
	return false
}

// Clone returns a copy of r that can be changed without changing r. The
// spec and variables are shared: they do not change during a run.
func (r *Run) Clone() *Run {
	c := *r
	c.Steps = make([]*StepState, len(r.Steps))
	for i, s := range r.Steps {
		sc := *s
		sc.History = append([]AttemptEnd(nil), s.History...)
		if s.Outputs != nil {
			sc.Outputs = make(map[string]string, len(s.Outputs))
			for k, v := range s.Outputs {
				sc.Outputs[k] = v
			}
		}
		c.Steps[i] = &sc
	}
	return &c
}

// Step returns the state of the step with id, or nil.
func (r *Run) Step(id string) *StepState {
	for _, s := range r.Steps {
		if s.ID == id {
			return s
		}
	}
	return nil
}

// Catalog is a point-in-time copy of the registries and clusters catalogue.
type Catalog struct {
	Registries []*Registry
	Clusters   []*Cluster
}

// Registry resolves a registry by id or name.
func (c *Catalog) Registry(ref string) (*Registry, error) {
	if c != nil {
		for _, r := range c.Registries {
			if r.ID == ref || r.Name == ref {
				return r, nil
			}
		}
	}
	return nil, fmt.Errorf("registry %q: %w in the catalogue", ref, ErrNotFound)
}

// Cluster resolves a cluster by id or name.
func (c *Catalog) Cluster(ref string) (*Cluster, error) {
	if c != nil {
		for _, cl := range c.Clusters {
			if cl.ID == ref || cl.Name == ref {
				return cl, nil
			}
		}
	}
	return nil, fmt.Errorf("cluster %q: %w in the catalogue", ref, ErrNotFound)
}
