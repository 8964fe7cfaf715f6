package apiv1

import (
	"time"

	"github.com/ansflow/ansflow/pkg/spec"
)

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
	// Repo is the forge repository a webhook's payload named, which the
	// run's commit statuses are posted to.
	Repo *ForgeRepo `json:"repo,omitempty"`
}

// ForgeRepo names a repository on a forge as its webhook payload gave it.
// All of it is untrusted input, read from a signed delivery.
type ForgeRepo struct {
	// APIURL is the forge's base URL as the payload gave it: GitHub's REST
	// API root (https://api.github.com/, or https://HOST/api/v3/ for
	// GitHub Enterprise), or the instance's web root for GitLab and Gitea
	// (https://gitlab.com/, http://gitea.local:3000/).
	APIURL string `json:"api_url,omitempty"`
	// Owner and Name are the repository's owner (user, organisation or
	// GitLab namespace path) and name.
	Owner string `json:"owner,omitempty"`
	Name  string `json:"name,omitempty"`
	// ProjectID is a GitLab project's numeric id.
	ProjectID int64 `json:"project_id,omitempty"`
}

// FullName is owner/name.
func (r *ForgeRepo) FullName() string { return r.Owner + "/" + r.Name }

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
	// Approval is set on a run that may not start before an operator
	// approves it (a pull request from a fork); until then it is queued
	// and Waiting says "approval".
	Approval *Approval `json:"approval,omitempty"`
	// Waiting says, while the run is queued, what it waits for (a
	// concurrency slot, approval); it is filled in when the run is read
	// through the API.
	Waiting string `json:"waiting,omitempty"`
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

// Step returns the state of the step with id, or nil.
func (r *Run) Step(id string) *StepState {
	for _, s := range r.Steps {
		if s.ID == id {
			return s
		}
	}
	return nil
}

// LogLine is one server-sent event of GET /api/v1/runs/{id}/logs: a log
// chunk (Kind "log") or a step or run status change (Kind "step", "run").
type LogLine struct {
	Kind    string    `json:"kind"`
	Step    string    `json:"step,omitempty"`
	Attempt int       `json:"attempt,omitempty"`
	Stream  string    `json:"stream,omitempty"`
	Text    string    `json:"text,omitempty"`
	Status  string    `json:"status,omitempty"`
	Error   string    `json:"error,omitempty"`
	Time    time.Time `json:"time"`
}
