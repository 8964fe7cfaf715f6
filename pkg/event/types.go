package event

import "time"

// Step statuses, shared by events, run state and the CLI.
const (
	StatusPending   = "pending"
	StatusQueued    = "queued"
	StatusRunning   = "running"
	StatusSucceeded = "succeeded"
	StatusFailed    = "failed"
	StatusSkipped   = "skipped"
	StatusCancelled = "cancelled"
)

// StepRequested asks a runner to execute one attempt of one step. Every
// template is already resolved. It never carries a plaintext credential: a
// registry or cluster is named and the runner serving it holds its
// credentials, or they travel sealed (Registry.Password, ClusterToken), as
// do the secrets the step asked for (Secrets).
type StepRequested struct {
	RunID        string            `json:"run_id"`
	StepID       string            `json:"step_id"`
	StepName     string            `json:"step_name"`
	Pipeline     string            `json:"pipeline"`
	Attempt      int               `json:"attempt"`
	Type         string            `json:"type"`
	Kind         string            `json:"kind"`
	Target       string            `json:"target"`
	Image        string            `json:"docker_image,omitempty"`
	Tag          string            `json:"docker_tag,omitempty"`
	Registry     *Registry         `json:"docker_registry,omitempty"`
	DockerConfig map[string]any    `json:"docker_config,omitempty"`
	Cluster      string            `json:"k8s_cluster,omitempty"`
	Namespace    string            `json:"k8s_namespace,omitempty"`
	ResourceName string            `json:"k8s_resource_name,omitempty"`
	K8sConfig    map[string]any    `json:"k8s_config,omitempty"`
	Command      any               `json:"command,omitempty"`
	Env          map[string]string `json:"env,omitempty"`
	// Secrets are the secrets the step asked for, each sealed to the
	// public keys of its pool's runners; never a plaintext.
	Secrets []SealedSecret `json:"secrets,omitempty"`
	Source  *Source        `json:"source,omitempty"`
	// ClusterToken is the bearer token the step authenticates to its
	// cluster with, sealed to the pool's runners, when the catalogue's
	// cluster entry keeps one in the secret store.
	ClusterToken *SealedSecret `json:"k8s_cluster_token,omitempty"`
	// TimeoutSeconds bounds the attempt at the runner; 0 means the runner's
	// default.
	TimeoutSeconds float64   `json:"timeout_seconds,omitempty"`
	RequestedAt    time.Time `json:"requested_at"`
	// Reason says why this attempt exists when it is not the first or a
	// retry: "runner_lost" when the previous attempt's runner stopped
	// renewing its lease, so the runner removes what that attempt left.
	Reason string `json:"reason,omitempty"`
}

// SealedSecret is one secret on its way to a runner: the environment
// variable it becomes and its value sealed (NaCl box, anonymous sender) to
// each runner public key of the pool, by key id (package secret). Only a
// runner holding one of those identities can open it.
type SealedSecret struct {
	Name  string            `json:"name"`
	Env   string            `json:"env"`
	Boxes map[string]string `json:"boxes"`
}

// Registry names a container registry of the catalogue. Its credential is
// held by the runner under Name (or URL), or, when the catalogue entry
// keeps it in the secret store, travels as Username and Password sealed to
// the pool's runners, which send it only to URL's host.
type Registry struct {
	ID       string        `json:"id,omitempty"`
	Name     string        `json:"name"`
	URL      string        `json:"url"`
	Username string        `json:"username,omitempty"`
	Password *SealedSecret `json:"password,omitempty"`
}

// Source tells a runner where the run's source tree is: an archive in the
// JetStream object store, or a Git repository and commit to clone.
type Source struct {
	ObjectStore string `json:"object_store,omitempty"`
	Object      string `json:"object,omitempty"`
	RepoURL     string `json:"repo_url,omitempty"`
	Commit      string `json:"commit,omitempty"`
}

// StepStarted reports that a runner began an attempt.
type StepStarted struct {
	RunID     string    `json:"run_id"`
	StepID    string    `json:"step_id"`
	Attempt   int       `json:"attempt"`
	Runner    string    `json:"runner"`
	StartedAt time.Time `json:"started_at"`
}

// StepLog is one chunk of a step's output.
type StepLog struct {
	RunID   string    `json:"run_id"`
	StepID  string    `json:"step_id"`
	Attempt int       `json:"attempt"`
	Stream  string    `json:"stream"` // "stdout" or "stderr"
	Seq     int       `json:"seq"`
	Text    string    `json:"text"`
	Time    time.Time `json:"time"`
}

// Log stream names.
const (
	Stdout = "stdout"
	Stderr = "stderr"
)

// StepCompleted reports the end of an attempt.
type StepCompleted struct {
	RunID   string `json:"run_id"`
	StepID  string `json:"step_id"`
	Attempt int    `json:"attempt"`
	Status  string `json:"status"` // succeeded, failed or cancelled
	// Reason is "runner_lost" when the attempt did not end but its runner
	// stopped renewing its lease and another runner or the orchestrator
	// took the step over; Runner is then the lost runner.
	Reason     string            `json:"reason,omitempty"`
	ExitCode   *int              `json:"exit_code,omitempty"`
	Outputs    map[string]string `json:"outputs,omitempty"`
	Error      string            `json:"error,omitempty"`
	Runner     string            `json:"runner"`
	StartedAt  time.Time         `json:"started_at"`
	FinishedAt time.Time         `json:"finished_at"`
	StdoutTail string            `json:"stdout_tail,omitempty"`
	StderrTail string            `json:"stderr_tail,omitempty"`
}

// StepCancel tells runners to stop an in-flight step (StepID empty: every
// step of the run).
type StepCancel struct {
	RunID  string `json:"run_id"`
	StepID string `json:"step_id,omitempty"`
	Reason string `json:"reason"`
}

// RunCreated announces a new run.
type RunCreated struct {
	RunID       string            `json:"run_id"`
	Pipeline    string            `json:"pipeline"`
	Version     int               `json:"pipeline_version"`
	BuildNumber int               `json:"build_number"`
	Trigger     string            `json:"trigger"`
	Actor       string            `json:"actor,omitempty"`
	Vars        map[string]string `json:"vars,omitempty"`
}

// RunCompleted announces the end of a run.
type RunCompleted struct {
	RunID      string    `json:"run_id"`
	Pipeline   string    `json:"pipeline"`
	Status     string    `json:"status"`
	Error      string    `json:"error,omitempty"`
	FinishedAt time.Time `json:"finished_at"`
}

// PipelineUpdated announces a new version (or the deletion) of a pipeline.
type PipelineUpdated struct {
	Pipeline string `json:"pipeline"`
	Version  int    `json:"version"`
	Deleted  bool   `json:"deleted,omitempty"`
	Actor    string `json:"actor,omitempty"`
}

// Action records an API or webhook action for the audit trail.
type Action struct {
	Actor    string `json:"actor"`
	SourceIP string `json:"source_ip,omitempty"`
	Action   string `json:"action"`
	Target   string `json:"target"`
	Outcome  string `json:"outcome"`
	Detail   string `json:"detail,omitempty"`
}
