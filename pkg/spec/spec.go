// Package spec is AnsFlow's pipeline specification: the YAML format (a
// superset of the original report's example), its typed form, and validation
// whose errors name the file, line and field. The settings each step type
// takes in docker_config or k8s_config are defined in [steps]; [JSONSchema]
// derives the file's JSON Schema from both.
package spec

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ansflow/ansflow/pkg/spec/steps"
)

// File is a pipeline file: a single top-level "pipeline" key.
type File struct {
	Pipeline Pipeline `yaml:"pipeline" json:"pipeline"`
}

// Pipeline is a named list of steps with its variables, limits and triggers.
type Pipeline struct {
	Name          string            `yaml:"name" json:"name"`
	Description   string            `yaml:"description,omitempty" json:"description,omitempty"`
	ExecutionMode string            `yaml:"execution_mode,omitempty" json:"execution_mode,omitempty"`
	Variables     map[string]string `yaml:"variables,omitempty" json:"variables,omitempty"`
	Timeout       Duration          `yaml:"timeout,omitempty" json:"timeout,omitempty"`
	// Concurrency bounds the runs of this pipeline active at once; further
	// runs wait as queued, oldest first (0: no limit).
	Concurrency int `yaml:"concurrency,omitempty" json:"concurrency,omitempty"`
	// CancelPrevious makes a new run cancel the active runs of the same
	// pipeline and branch started before it.
	CancelPrevious bool `yaml:"cancel_previous,omitempty" json:"cancel_previous,omitempty"`
	// Repository is the Git repository a run clones when its trigger
	// names none (a cron trigger, `ansflow trigger`, the UI's trigger
	// form); a branch or tag is resolved to its commit when the run is
	// created.
	Repository string `yaml:"repository,omitempty" json:"repository,omitempty"`
	// FromRepository takes the pipeline's steps, variables, timeout and
	// execution mode from PipelineFile in the repository at the run's
	// commit, read when the run is created; the stored pipeline keeps its
	// name, triggers, repository and concurrency settings.
	FromRepository bool `yaml:"from_repository,omitempty" json:"from_repository,omitempty"`
	// PipelineFile is the file FromRepository reads, relative to the
	// repository's root (default [DefaultPipelineFile]).
	PipelineFile string    `yaml:"pipeline_file,omitempty" json:"pipeline_file,omitempty"`
	Triggers     []Trigger `yaml:"triggers,omitempty" json:"triggers,omitempty"`
	// Notify announces finished runs (package notify of the pipeline
	// service); without rules the server-wide default applies.
	Notify []NotifyRule `yaml:"notify,omitempty" json:"notify,omitempty"`
	// Status configures the commit statuses posted back to the forge for
	// runs started by its webhooks (nil: the server's defaults).
	Status *CommitStatus `yaml:"status,omitempty" json:"status,omitempty"`
	Steps  []Step        `yaml:"steps" json:"steps"`
}

// DefaultPipelineFile is the file a pipeline with from_repository reads
// when it names no pipeline_file.
const DefaultPipelineFile = ".ansflow.yml"

// File returns the repository file a from_repository pipeline reads.
func (p *Pipeline) File() string {
	if p.PipelineFile != "" {
		return p.PipelineFile
	}
	return DefaultPipelineFile
}

// CommitStatus configures the commit statuses of a pipeline's webhook runs.
type CommitStatus struct {
	// Disabled posts no status for this pipeline's runs.
	Disabled bool `yaml:"disabled,omitempty" json:"disabled,omitempty"`
	// Steps posts one status per step as well as the run's (nil: the
	// server's default).
	Steps *bool `yaml:"steps,omitempty" json:"steps,omitempty"`
	// TokenSecret names the stored secret (the pipeline's, else the global
	// one) holding the forge API token (empty: the server's setting).
	TokenSecret string `yaml:"token_secret,omitempty" json:"token_secret,omitempty"`
}

// Step is one unit of work executed by a runner.
type Step struct {
	Name              string         `yaml:"name" json:"name"`
	Type              string         `yaml:"type" json:"type"`
	Order             int            `yaml:"order,omitempty" json:"order,omitempty"`
	Needs             []string       `yaml:"needs,omitempty" json:"needs,omitempty"`
	RunsOn            string         `yaml:"runs_on,omitempty" json:"runs_on,omitempty"`
	DockerImage       string         `yaml:"docker_image,omitempty" json:"docker_image,omitempty"`
	DockerTag         string         `yaml:"docker_tag,omitempty" json:"docker_tag,omitempty"`
	DockerRegistry    Ref            `yaml:"docker_registry,omitempty" json:"docker_registry,omitempty"`
	DockerConfig      map[string]any `yaml:"docker_config,omitempty" json:"docker_config,omitempty"`
	K8sCluster        Ref            `yaml:"k8s_cluster,omitempty" json:"k8s_cluster,omitempty"`
	K8sNamespace      string         `yaml:"k8s_namespace,omitempty" json:"k8s_namespace,omitempty"`
	K8sResourceName   string         `yaml:"k8s_resource_name,omitempty" json:"k8s_resource_name,omitempty"`
	K8sConfig         map[string]any `yaml:"k8s_config,omitempty" json:"k8s_config,omitempty"`
	Command           any            `yaml:"command,omitempty" json:"command,omitempty"`
	Conditions        []Condition    `yaml:"conditions,omitempty" json:"conditions,omitempty"`
	When              string         `yaml:"when,omitempty" json:"when,omitempty"`
	Timeout           Duration       `yaml:"timeout,omitempty" json:"timeout,omitempty"`
	RetryPolicy       *RetryPolicy   `yaml:"retry_policy,omitempty" json:"retry_policy,omitempty"`
	ContinueOnFailure bool           `yaml:"continue_on_failure,omitempty" json:"continue_on_failure,omitempty"`
	// Secrets are the stored secrets the step's container (or exec)
	// receives as environment variables.
	Secrets []SecretRef `yaml:"secrets,omitempty" json:"secrets,omitempty"`
}

// SecretRef asks for one stored secret (the pipeline's own, else the global
// one of that name) as the environment variable Env (default: Name).
type SecretRef struct {
	Name string `yaml:"name" json:"name"`
	Env  string `yaml:"env,omitempty" json:"env,omitempty"`
}

// EnvName is the environment variable the secret becomes.
func (r SecretRef) EnvName() string {
	if r.Env != "" {
		return r.Env
	}
	return r.Name
}

// SecretTypes are the step types that may ask for secrets.
var SecretTypes = []string{"docker_run", "k8s_exec"}

// ID is the step's identifier in subjects, URLs and events: its name as a
// lower-case slug.
func (s *Step) ID() string { return Slug(s.Name) }

// Kind is the runner kind executing the step ("docker" or "k8s").
func (s *Step) Kind() string { return KindOf(s.Type) }

// AllowsFailure reports whether a failure of this step leaves the run
// successful.
func (s *Step) AllowsFailure() bool {
	return s.ContinueOnFailure || (s.RetryPolicy != nil && s.RetryPolicy.ContinueOnFailure)
}

// MaxAttempts is 1 plus the retry policy's max_retries.
func (s *Step) MaxAttempts() int {
	if s.RetryPolicy == nil {
		return 1
	}
	return 1 + s.RetryPolicy.MaxRetries
}

// RetryDelay is the wait before attempt n+1 after attempt n failed.
func (s *Step) RetryDelay(n int) time.Duration {
	if s.RetryPolicy == nil {
		return 0
	}
	d := time.Duration(s.RetryPolicy.RetryDelaySeconds * float64(time.Second))
	if s.RetryPolicy.Backoff == BackoffExponential {
		for i := 1; i < n && d < time.Hour; i++ {
			d *= 2
		}
	}
	return d
}

// Condition gates a step; all conditions of a step must hold.
type Condition struct {
	Type  string `yaml:"type" json:"type"`
	Value string `yaml:"value,omitempty" json:"value,omitempty"`
	// Name is the variable (variable_equals) or environment variable
	// (env_equals) compared.
	Name string `yaml:"name,omitempty" json:"name,omitempty"`
}

// Condition types.
const (
	CondBranchEquals   = "branch_equals"
	CondBranchMatches  = "branch_matches"
	CondEnvEquals      = "env_equals"
	CondVariableEquals = "variable_equals"
)

// RetryPolicy says how often and how fast a failed step is retried.
type RetryPolicy struct {
	MaxRetries        int     `yaml:"max_retries" json:"max_retries"`
	RetryDelaySeconds float64 `yaml:"retry_delay_seconds,omitempty" json:"retry_delay_seconds,omitempty"`
	Backoff           string  `yaml:"backoff,omitempty" json:"backoff,omitempty"`
	ContinueOnFailure bool    `yaml:"continue_on_failure,omitempty" json:"continue_on_failure,omitempty"`
}

// Backoff kinds.
const (
	BackoffExponential = "exponential"
	BackoffFixed       = "fixed"
)

// When values.
const (
	WhenOnSuccess = "on_success"
	WhenOnFailure = "on_failure"
	WhenAlways    = "always"
)

// Trigger starts the pipeline from a Git webhook or a schedule.
type Trigger struct {
	Type     string `yaml:"type" json:"type"` // webhook or cron
	Provider string `yaml:"provider,omitempty" json:"provider,omitempty"`
	// Secret names the webhook secret in the secret store; it is the way
	// forward and replaces SecretEnv.
	Secret string `yaml:"secret,omitempty" json:"secret,omitempty"`
	// SecretEnv names an environment variable of the pipeline service
	// holding the webhook secret; only names starting with
	// [WebhookSecretEnvPrefix] are accepted.
	SecretEnv string   `yaml:"secret_env,omitempty" json:"secret_env,omitempty"`
	Events    []string `yaml:"events,omitempty" json:"events,omitempty"`
	Branches  []string `yaml:"branches,omitempty" json:"branches,omitempty"`
	Tags      []string `yaml:"tags,omitempty" json:"tags,omitempty"`
	Paths     []string `yaml:"paths,omitempty" json:"paths,omitempty"`
	// PullRequest filters pull (merge) request events.
	PullRequest *PullRequestRules `yaml:"pull_request,omitempty" json:"pull_request,omitempty"`
	Schedule    string            `yaml:"schedule,omitempty" json:"schedule,omitempty"`
	Branch      string            `yaml:"branch,omitempty" json:"branch,omitempty"`
}

// WebhookSecretEnvPrefix starts every environment variable a trigger's
// secret_env may name, so that a pipeline cannot use an arbitrary variable
// of the service (HOME, a cloud key) as its webhook secret.
const WebhookSecretEnvPrefix = "ANSFLOW_WEBHOOK_"

// triggerSecretName is the shape of a secret name a trigger's secret: may
// hold.
var triggerSecretName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]*$`)

// Fork policies of [PullRequestRules.Forks]. Every run of a pull request
// from a fork is marked as such, so that it gets no secrets.
const (
	// ForksApprove creates the run held until an operator approves it
	// (the default).
	ForksApprove = "approve"
	// ForksIgnore answers pull requests from forks "ignored".
	ForksIgnore = "ignore"
	// ForksRun runs them at once.
	ForksRun = "run"
)

// DefaultPullRequestActions are the pull request actions that start a run
// when a trigger lists none: new commits to review, not closing or editing.
var DefaultPullRequestActions = []string{"opened", "synchronize", "reopened"}

// PullRequestActions are the normalised pull request actions a trigger may
// list (GitLab's open/update/reopen/close/merge and Gitea's synchronized map
// onto them).
var PullRequestActions = []string{"opened", "synchronize", "reopened", "closed", "merged", "edited", "ready_for_review"}

// PullRequestRules filters pull request events of a webhook trigger.
type PullRequestRules struct {
	// Actions that start a run (default [DefaultPullRequestActions]).
	Actions []string `yaml:"actions,omitempty" json:"actions,omitempty"`
	// Forks is what a pull request whose head repository is not the base
	// repository does: approve (default), ignore or run; never with
	// secrets.
	Forks string `yaml:"forks,omitempty" json:"forks,omitempty"`
}

// PullRequestActionsOf returns the actions trigger t starts runs for.
func (t *Trigger) PullRequestActionsOf() []string {
	if t.PullRequest != nil && len(t.PullRequest.Actions) > 0 {
		return t.PullRequest.Actions
	}
	return DefaultPullRequestActions
}

// ForkPolicy returns t's policy for pull requests from forks.
func (t *Trigger) ForkPolicy() string {
	if t.PullRequest != nil && t.PullRequest.Forks != "" {
		return t.PullRequest.Forks
	}
	return ForksApprove
}

// Ref names a catalogue entry (registry or cluster) by numeric id or name.
type Ref string

// UnmarshalYAML accepts a number or a string.
func (r *Ref) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want an id or a name, got a %s", n.Line, kindName(n.Kind))
	}
	*r = Ref(n.Value)
	return nil
}

// Duration is a time.Duration written as "90s", "5m" or a number of seconds.
type Duration time.Duration

// UnmarshalYAML parses "90s" or 90.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a duration such as 90s, got a %s", n.Line, kindName(n.Kind))
	}
	v, err := ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration as Go's string form.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return []byte(strconv.Quote(time.Duration(d).String())), nil
}

// UnmarshalJSON reads "90s" or 90.
func (d *Duration) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	v, err := ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// ParseDuration reads "90s", "1h30m" or a plain number of seconds.
func ParseDuration(s string) (time.Duration, error) {
	if s == "" || s == "0" {
		return 0, nil
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		if f < 0 {
			return 0, fmt.Errorf("duration %q is negative", s)
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("duration %q: want e.g. 90s, 5m or a number of seconds", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("duration %q is negative", s)
	}
	return d, nil
}

// Step types, as [steps] defines them.
var (
	DockerTypes = steps.Names("docker")
	K8sTypes    = steps.Names("k8s")
)

// KindOf returns "docker" or "k8s" for a step type, "" for an unknown one.
func KindOf(stepType string) string {
	switch {
	case strings.HasPrefix(stepType, "docker_") && contains(DockerTypes, stepType):
		return "docker"
	case strings.HasPrefix(stepType, "k8s_") && contains(K8sTypes, stepType):
		return "k8s"
	}
	return ""
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Slug turns a step name into a lower-case identifier of letters, digits and
// dashes.
func Slug(name string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(name) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '_':
			b.WriteRune(r)
			dash = false
		default:
			if !dash && b.Len() > 0 {
				b.WriteByte('-')
				dash = true
			}
		}
	}
	return strings.TrimSuffix(b.String(), "-")
}

func kindName(k yaml.Kind) string {
	switch k {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "list"
	case yaml.ScalarNode:
		return "scalar"
	case yaml.AliasNode:
		return "alias"
	}
	return "document"
}
