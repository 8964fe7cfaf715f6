package steps

import (
	"fmt"
	"slices"
	"strings"
)

// Failure is one way a step can fail once it runs: the text its error
// holds (shown on the run page, in `ansflow runs get` and in step.completed
// events), when it happens and what to do. Failures that come from an
// engine's sentinel error quote its text exactly; each engine package has
// a test that every sentinel it declares is listed here.
type Failure struct {
	// Message is text the step's error contains.
	Message string `json:"message"`
	// Help says when it happens and what to do about it.
	Help string `json:"help"`
}

// failure is a [Failure] and the step types (or runner kinds: "docker",
// "k8s", "*" for all) that can report it.
type failure struct {
	Failure
	types []string
}

// failures lists what a running step can report. Settings errors are not
// here: [Failures] derives them from the definitions.
var failures = []failure{
	{Failure{"step timed out after", "The step ran longer than its timeout (the step's timeout:, else the runner's --step-timeout); the container or process is stopped. Raise timeout: or make the step faster."}, []string{"*"}},
	{Failure{"cancelled", "The run was cancelled (by a user, its pipeline timeout or a newer run of a concurrency group); the step's work was stopped."}, []string{"*"}},
	{Failure{"runner_lost", "Not a failure of the step: its runner stopped renewing the lease (killed, partitioned). The attempt is recorded with reason runner_lost and the step is offered to another runner of its pool; it does not count against retries."}, []string{"*"}},
	{Failure{"announced a secrets key", "The step needs secrets but no runner of its pool announced a secrets key: start the pool's runners with --secrets-identity FILE."}, []string{"*"}},
	{Failure{"exit code", "The command ran and exited non-zero (`exit code N: …`); the step's exit_code holds N and its stderr tail the process's last words."}, []string{"docker_run", "k8s_exec"}},
	{Failure{"invalid step", "The docker runner refused the request: a setting resolved at run time (a {{variable}}) is not valid, a path leaves the run's source, the context or Dockerfile is missing, or the step names no image. The message says which."}, []string{"docker"}},
	{Failure{"refused by the runner's policy", "The step asks for host access (privileged, a host network, a bind mount, host devices, …) the runner's operator did not allow; the message names the setting and the runner flag or policy field that would allow it."}, []string{"docker_build", "docker_run"}},
	{Failure{"authentication failed", "The registry refused the credential (the runner's, or the password_secret of the catalogue entry): check the username and secret."}, []string{"docker_build", "docker_push", "docker_pull"}},
	{Failure{"registry unreachable", "The registry could not be reached (DNS, connection, TLS); the step is worth retrying (retries:)."}, []string{"docker_build", "docker_push", "docker_pull"}},
	{Failure{"registry credential bound to another host", "A credential was asked for a host other than the one it was made for; nothing was sent. Set the credential's server: (runner file) or the catalogue entry's url to the registry's host."}, []string{"docker_build", "docker_push", "docker_pull"}},
	{Failure{"invalid k8s_config", "The k8s runner refused the step's settings after templating (a manifest that does not parse, a command that is not a string or list, …); the message says which."}, []string{"k8s"}},
	{Failure{"not allowed for this cluster", "The cluster's operator limited what steps may touch (namespaces, kinds) and the step goes beyond it: the message names the namespace or kind and the cluster setting."}, []string{"k8s"}},
	{Failure{"forbidden by RBAC", "The cluster's API server denied a request made with the cluster's credentials (the runner's, or the token_secret of the catalogue entry); the message names the verb and resource to grant."}, []string{"k8s"}},
	{Failure{"namespace not found", "The step's namespace does not exist; AnsFlow never creates one on its own: apply a Namespace manifest in an earlier step."}, []string{"k8s"}},
	{Failure{"not found", "The named resource does not exist (k8s_delete succeeds in that case)."}, []string{"k8s_scale", "k8s_wait", "k8s_exec", "k8s_logs"}},
	{Failure{"unknown resource type", "The cluster's API discovery knows no such resource type: check the kind or resource name and the CRDs installed."}, []string{"k8s"}},
	{Failure{"no matching pod", "No pod, or no running pod, matches the step's pod, pod_selector or resource."}, []string{"k8s_wait", "k8s_exec", "k8s_logs"}},
	{Failure{"rollout failed", "A Deployment, StatefulSet or DaemonSet did not finish rolling out (its progress deadline passed, or the wait ran out); the message gives the controller's reason and why pods are not ready, and the revision restored when rollback_on_failure is set."}, []string{"k8s_deploy", "k8s_wait"}},
	{Failure{"timed out", "A wait (k8s_config.timeout) ended before its condition held."}, []string{"k8s_deploy", "k8s_wait"}},
	{Failure{"condition cannot be met", "A waited-for object reached a state from which the condition can no longer hold (a failed Job, a terminated pod)."}, []string{"k8s_wait"}},
}

// Failures returns what a step of stepType can report once it runs, in
// the order of the reference, or nil for an unknown type.
func Failures(stepType string) []Failure {
	e, ok := registry[stepType]
	if !ok {
		return nil
	}
	var out []Failure
	for _, f := range failures {
		if slices.Contains(f.types, "*") || slices.Contains(f.types, e.Kind) || slices.Contains(f.types, stepType) {
			out = append(out, f.Failure)
		}
	}
	return out
}

// KindMessages returns the messages of every failure a step of the runner
// kind can report: the engines' tests check their sentinel errors against
// it.
func KindMessages(kind string) []string {
	var out []string
	for _, n := range Names(kind) {
		for _, f := range Failures(n) {
			if !slices.Contains(out, f.Message) {
				out = append(out, f.Message)
			}
		}
	}
	return out
}

// SettingsErrors returns, for stepType, examples of the errors its
// settings can get, made by checking wrong values with [Check]: a missing
// required key, a value of the wrong type, one outside its enum or bounds,
// and an unknown key. They are the messages `ansflow validate`, the API
// and the editor report (prefixed with file:line: and the config key).
func SettingsErrors(stepType string) []string {
	e, ok := registry[stepType]
	if !ok {
		return nil
	}
	var out []string
	add := func(cfg map[string]any) {
		for _, fe := range Check(stepType, cfg) {
			msg := e.ConfigKey + "." + fe.Error()
			if fe.Path == "" {
				msg = e.ConfigKey + ": " + fe.Msg
			}
			if !slices.Contains(out, msg) {
				out = append(out, msg)
			}
		}
	}
	if required := slices.ContainsFunc(e.root.fields, func(f *node) bool { return f.Required }); required {
		add(map[string]any{})
	}
	seen := map[string]bool{}
	for _, f := range e.root.fields {
		var bad any
		switch {
		case f.Type == TypeInteger && f.Min != nil && !seen["min"]:
			bad, seen["min"] = *f.Min-1, true
		case f.Type == TypeInteger && !seen[f.Type]:
			bad = "five"
		case f.Type == TypeBoolean && !seen[f.Type]:
			bad = "maybe"
		case f.Type == TypeDuration && !seen[f.Type]:
			bad = "soon"
		case f.Type == TypeEnum && !seen[f.Type]:
			bad = "bogus"
		default:
			continue
		}
		seen[f.Type] = true
		cfg := map[string]any{f.Key: bad}
		for _, r := range e.root.fields {
			if r.Required && r.Key != f.Key {
				cfg[r.Key] = sampleValue(r)
			}
		}
		add(cfg)
	}
	add(map[string]any{"colour": "blue"})
	return out
}

// sampleValue is a valid value of a required field, so that an example
// shows one error at a time.
func sampleValue(f *node) any {
	switch f.Type {
	case TypeInteger:
		if f.Min != nil {
			return *f.Min
		}
		return 1
	case TypeBoolean:
		return true
	case TypeDuration:
		return "30s"
	case TypeEnum:
		return f.Enum[0]
	case TypeList:
		return []any{"x"}
	case TypeMap, TypeObject, TypeYAML:
		return map[string]any{}
	}
	return "x"
}

// failuresMarkdown writes the errors section of stepType's reference.
func failuresMarkdown(b *strings.Builder, stepType string) {
	b.WriteString("Errors of its settings (examples; `ansflow validate`, the API and the editor prefix them with `file:line:`):\n\n")
	for _, m := range SettingsErrors(stepType) {
		fmt.Fprintf(b, "- `%s`\n", strings.ReplaceAll(m, "`", "'"))
	}
	b.WriteString("\nErrors when it runs (the step's error, or for runner_lost the attempt's reason, contains the text):\n\n| Error | When, and what to do |\n|---|---|\n")
	for _, f := range Failures(stepType) {
		fmt.Fprintf(b, "| `%s` | %s |\n", f.Message, strings.ReplaceAll(f.Help, "|", `\|`))
	}
	b.WriteString("\n")
}
