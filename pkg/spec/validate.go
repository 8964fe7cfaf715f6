package spec

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/ansflow/ansflow/pkg/spec/steps"
	"github.com/ansflow/ansflow/pkg/tmpl"
)

// Builtins are the variables every run defines.
var Builtins = []string{
	"build_number", "run_id", "pipeline_name",
	"git_commit", "git_branch", "git_tag", "git_repo_url", "git_author", "git_message",
}

// ContextVars are set by earlier steps: docker_image by a build, pull or
// push; k8s_namespace and k8s_resource_name by a Kubernetes step.
var ContextVars = []string{"docker_image", "k8s_namespace", "k8s_resource_name"}

// StepIndex returns the index of the step named (or slugged) name, or -1.
func (p *Pipeline) StepIndex(name string) int {
	for i := range p.Steps {
		if p.Steps[i].Name == name || p.Steps[i].ID() == name {
			return i
		}
	}
	return -1
}

// EffectiveOrder is the step's order, defaulting to its 1-based position.
func (p *Pipeline) EffectiveOrder(i int) int {
	if p.Steps[i].Order != 0 {
		return p.Steps[i].Order
	}
	return i + 1
}

// Deps returns, for each step, the indexes of the steps it waits for: those
// named in needs, or else every step of a lower order.
func (p *Pipeline) Deps() [][]int {
	deps := make([][]int, len(p.Steps))
	for i, s := range p.Steps {
		if s.Needs != nil {
			for _, n := range s.Needs {
				if j := p.StepIndex(n); j >= 0 {
					deps[i] = append(deps[i], j)
				}
			}
			continue
		}
		for j := range p.Steps {
			if p.EffectiveOrder(j) < p.EffectiveOrder(i) {
				deps[i] = append(deps[i], j)
			}
		}
	}
	return deps
}

// Upstream returns every step that step i transitively waits for, sorted.
func Upstream(deps [][]int, i int) []int {
	seen := map[int]bool{}
	var walk func(int)
	walk = func(k int) {
		for _, d := range deps[k] {
			if !seen[d] {
				seen[d] = true
				walk(d)
			}
		}
	}
	walk(i)
	out := make([]int, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	sort.Ints(out)
	return out
}

func (p *parser) validate(pl *Pipeline) {
	if strings.TrimSpace(pl.Name) == "" {
		p.add(p.line("pipeline.name"), "pipeline.name", "required")
	}
	switch pl.ExecutionMode {
	case "", "local", "distributed":
	default:
		p.add(p.line("pipeline.execution_mode"), "pipeline.execution_mode", "%q: want local or distributed", pl.ExecutionMode)
	}
	for name := range pl.Variables {
		if !isIdent(name) || contains(Builtins, name) {
			p.add(p.line("pipeline.variables."+name), "pipeline.variables."+name,
				"variable names are letters, digits and _ and must not shadow a built-in")
		}
	}
	if pl.Concurrency < 0 {
		p.add(p.line("pipeline.concurrency"), "pipeline.concurrency", "%d: want 0 (no limit) or more", pl.Concurrency)
	}
	if st := pl.Status; st != nil && st.TokenSecret != "" && !triggerSecretName.MatchString(st.TokenSecret) {
		p.add(p.line("pipeline.status.token_secret"), "pipeline.status.token_secret",
			"%q: want a secret name of letters, digits, '_', '.' and '-'", st.TokenSecret)
	}
	for i, t := range pl.Triggers {
		p.validateTrigger(fmt.Sprintf("pipeline.triggers[%d]", i), &t)
	}
	if pl.Repository != "" && (strings.HasPrefix(pl.Repository, "-") || strings.ContainsAny(pl.Repository, " \t\r\n\x00")) {
		p.add(p.line("pipeline.repository"), "pipeline.repository", "%q: want a Git URL such as https://git.example.com/team/app.git", pl.Repository)
	}
	if pl.PipelineFile != "" {
		clean := path.Clean("/" + pl.PipelineFile)[1:]
		switch {
		case !pl.FromRepository:
			p.add(p.line("pipeline.pipeline_file"), "pipeline.pipeline_file", "set only with from_repository: true")
		case clean == "" || clean != strings.TrimPrefix(pl.PipelineFile, "./") || strings.HasPrefix(pl.PipelineFile, "-"):
			p.add(p.line("pipeline.pipeline_file"), "pipeline.pipeline_file", "%q: want a path inside the repository, such as .ansflow.yml", pl.PipelineFile)
		}
	}
	p.validateNotify("pipeline.notify", pl.Notify)
	if len(pl.Steps) == 0 {
		if !pl.FromRepository {
			p.add(p.line("pipeline.steps"), "pipeline.steps", "at least one step is required (or from_repository: true to take them from the repository)")
		}
		return
	}
	ids := map[string]int{}
	for i := range pl.Steps {
		s := &pl.Steps[i]
		f := fmt.Sprintf("pipeline.steps[%d]", i)
		if strings.TrimSpace(s.Name) == "" || s.ID() == "" {
			p.add(p.line(f+".name"), f+".name", "required (letters or digits)")
		} else if j, dup := ids[s.ID()]; dup {
			p.add(p.line(f+".name"), f+".name", "%q collides with step %q (names must differ after lower-casing and dashing)", s.Name, pl.Steps[j].Name)
		} else {
			ids[s.ID()] = i
		}
		if s.Type == "" {
			p.add(p.line(f), f+".type", "required")
		} else if KindOf(s.Type) == "" {
			p.add(p.line(f+".type"), f+".type", "unknown step type %q; want one of %s%s", s.Type,
				strings.Join(append(append([]string{}, DockerTypes...), K8sTypes...), ", "),
				suggest(s.Type, append(append([]string{}, DockerTypes...), K8sTypes...)))
		}
		if s.Order < 0 {
			p.add(p.line(f+".order"), f+".order", "must not be negative")
		}
		switch s.When {
		case "", WhenOnSuccess, WhenOnFailure, WhenAlways:
		default:
			p.add(p.line(f+".when"), f+".when", "%q: want on_success, on_failure or always", s.When)
		}
		if rp := s.RetryPolicy; rp != nil {
			if rp.MaxRetries < 0 || rp.MaxRetries > 50 {
				p.add(p.line(f+".retry_policy.max_retries"), f+".retry_policy.max_retries", "must be between 0 and 50")
			}
			if rp.RetryDelaySeconds < 0 {
				p.add(p.line(f+".retry_policy.retry_delay_seconds"), f+".retry_policy.retry_delay_seconds", "must not be negative")
			}
			switch rp.Backoff {
			case "", BackoffExponential, BackoffFixed:
			default:
				p.add(p.line(f+".retry_policy.backoff"), f+".retry_policy.backoff", "%q: want exponential or fixed", rp.Backoff)
			}
		}
		for j, c := range s.Conditions {
			p.validateCondition(fmt.Sprintf("%s.conditions[%d]", f, j), c)
		}
		switch cmd := s.Command.(type) {
		case nil, string:
		case []any:
			for j, a := range cmd {
				if _, ok := a.(string); !ok {
					p.add(p.line(fmt.Sprintf("%s.command[%d]", f, j)), fmt.Sprintf("%s.command[%d]", f, j), "want a string")
				}
			}
		default:
			p.add(p.line(f+".command"), f+".command", "want a string or a list of strings")
		}
		p.validateConfig(f, s)
		p.validateSecrets(f, s)
	}
	before := len(p.errs)
	p.validateGraph(pl)
	if len(p.errs) == before {
		p.validateRefs(pl)
	}
}

// secretName is a secret's and an environment variable's name.
var secretName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)

func (p *parser) validateSecrets(f string, s *Step) {
	if len(s.Secrets) == 0 {
		return
	}
	if !contains(SecretTypes, s.Type) {
		p.add(p.line(f+".secrets"), f+".secrets", "a %s step cannot receive secrets; only %s steps can", s.Type, strings.Join(SecretTypes, " and "))
		return
	}
	envs := map[string]int{}
	for j, r := range s.Secrets {
		g := fmt.Sprintf("%s.secrets[%d]", f, j)
		if !secretName.MatchString(r.Name) {
			p.add(p.line(g), g+".name", "%q: want a secret name (letters, digits and _, not starting with a digit)", r.Name)
		}
		if r.Env != "" && !secretName.MatchString(r.Env) {
			p.add(p.line(g+".env"), g+".env", "%q is not a valid environment variable name", r.Env)
		}
		if k, dup := envs[r.EnvName()]; dup {
			p.add(p.line(g), g+".env", "%q is already set by secrets[%d]", r.EnvName(), k)
		} else {
			envs[r.EnvName()] = j
		}
	}
}

func (p *parser) validateTrigger(f string, t *Trigger) {
	switch t.Type {
	case "webhook":
		switch t.Provider {
		case "github", "gitlab", "gitea":
		default:
			p.add(p.line(f+".provider"), f+".provider", "%q: want github, gitlab or gitea", t.Provider)
		}
		switch {
		case t.Secret == "" && t.SecretEnv == "":
			p.add(p.line(f), f+".secret", "required: the name of the webhook secret in the secret store")
		case t.Secret != "" && t.SecretEnv != "":
			p.add(p.line(f+".secret_env"), f+".secret_env", "set secret or secret_env, not both")
		case t.Secret != "" && !triggerSecretName.MatchString(t.Secret):
			p.add(p.line(f+".secret"), f+".secret", "%q: want a secret name of letters, digits, '_', '.' and '-'", t.Secret)
		case t.SecretEnv != "" && (!strings.HasPrefix(t.SecretEnv, WebhookSecretEnvPrefix) || len(t.SecretEnv) == len(WebhookSecretEnvPrefix)):
			p.add(p.line(f+".secret_env"), f+".secret_env", "%q: only variables named %s* may hold a webhook secret; better, name a stored secret with secret:", t.SecretEnv, WebhookSecretEnvPrefix)
		}
		if pr := t.PullRequest; pr != nil {
			for _, a := range pr.Actions {
				if !slices.Contains(PullRequestActions, a) {
					p.add(p.line(f+".pull_request.actions"), f+".pull_request.actions", "%q: want one of %s", a, strings.Join(PullRequestActions, ", "))
				}
			}
			switch pr.Forks {
			case "", ForksApprove, ForksIgnore, ForksRun:
			default:
				p.add(p.line(f+".pull_request.forks"), f+".pull_request.forks", "%q: want approve, ignore or run", pr.Forks)
			}
		}
		for _, e := range t.Events {
			switch e {
			case "push", "tag", "pull_request", "merge_request":
			default:
				p.add(p.line(f+".events"), f+".events", "%q: want push, tag, pull_request or merge_request", e)
			}
		}
	case "cron":
		if t.Secret != "" || t.SecretEnv != "" || t.PullRequest != nil {
			p.add(p.line(f), f, "secret, secret_env and pull_request apply to webhook triggers only")
		}
		if len(strings.Fields(t.Schedule)) != 5 {
			p.add(p.line(f+".schedule"), f+".schedule", "%q: want a 5-field cron expression", t.Schedule)
		}
	default:
		p.add(p.line(f+".type"), f+".type", "%q: want webhook or cron", t.Type)
	}
	for _, pat := range append(append(append([]string{}, t.Branches...), t.Tags...), t.Paths...) {
		if _, err := path.Match(strings.ReplaceAll(pat, "**", "*"), ""); err != nil {
			p.add(p.line(f), f, "bad pattern %q", pat)
		}
	}
}

func (p *parser) validateCondition(f string, c Condition) {
	switch c.Type {
	case CondBranchEquals, CondEnvEquals:
		if c.Value == "" {
			p.add(p.line(f), f+".value", "required")
		}
	case CondBranchMatches:
		if _, err := path.Match(c.Value, ""); err != nil || c.Value == "" {
			p.add(p.line(f+".value"), f+".value", "%q is not a valid glob pattern", c.Value)
		}
	case CondVariableEquals:
		if c.Name == "" {
			p.add(p.line(f), f+".name", "required: the variable to compare")
		}
	default:
		p.add(p.line(f+".type"), f+".type", "unknown condition %q; want branch_equals, branch_matches, env_equals or variable_equals%s",
			c.Type, suggest(c.Type, []string{CondBranchEquals, CondBranchMatches, CondEnvEquals, CondVariableEquals}))
	}
}

// validateConfig checks the step's docker_config or k8s_config against its
// type's definition in [steps], reporting each problem at its value's line.
func (p *parser) validateConfig(f string, s *Step) {
	def, ok := steps.Lookup(s.Type)
	if !ok {
		return
	}
	for _, c := range []struct {
		key string
		cfg map[string]any
	}{{"docker_config", s.DockerConfig}, {"k8s_config", s.K8sConfig}} {
		if c.key != def.ConfigKey && len(c.cfg) > 0 {
			p.add(p.line(f+"."+c.key), f+"."+c.key, "not used by a %s step", s.Type)
		}
	}
	cfg := s.DockerConfig
	if def.ConfigKey == "k8s_config" {
		cfg = s.K8sConfig
	}
	for _, e := range steps.Check(s.Type, cfg) {
		fp := f + "." + def.ConfigKey
		if e.Path != "" {
			fp += "." + e.Path
		}
		p.add(p.line(fp), fp, "%s", e.Msg)
	}
	if s.Kind() == "docker" {
		for _, fld := range []struct {
			name string
			set  bool
		}{{"k8s_cluster", s.K8sCluster != ""}, {"k8s_namespace", s.K8sNamespace != ""}, {"k8s_resource_name", s.K8sResourceName != ""}} {
			if fld.set {
				p.add(p.line(f+"."+fld.name), f+"."+fld.name, "not used by a %s step", s.Type)
			}
		}
	}
	if s.Type == "docker_build" && s.DockerImage == "" {
		p.add(p.line(f), f+".docker_image", "required for docker_build")
	}
}

func (p *parser) validateGraph(pl *Pipeline) {
	for i, s := range pl.Steps {
		f := fmt.Sprintf("pipeline.steps[%d].needs", i)
		for _, n := range s.Needs {
			j := pl.StepIndex(n)
			switch {
			case j < 0:
				p.add(p.line(f), f, "unknown step %q", n)
			case j == i:
				p.add(p.line(f), f, "a step cannot need itself")
			}
		}
	}
	if len(p.errs) > 0 {
		return
	}
	deps := pl.Deps()
	state := make([]int, len(deps)) // 0 new, 1 visiting, 2 done
	var stack []int
	var visit func(int) bool
	visit = func(i int) bool {
		state[i] = 1
		stack = append(stack, i)
		for _, d := range deps[i] {
			if state[d] == 1 {
				k := len(stack) - 1
				for stack[k] != d {
					k--
				}
				var names []string
				for _, s := range stack[k:] {
					names = append(names, pl.Steps[s].Name)
				}
				names = append(names, pl.Steps[d].Name)
				f := fmt.Sprintf("pipeline.steps[%d].needs", i)
				p.add(p.line(f), f, "dependency cycle: %s", strings.Join(names, " -> "))
				return true
			}
			if state[d] == 0 && visit(d) {
				return true
			}
		}
		state[i] = 2
		stack = stack[:len(stack)-1]
		return false
	}
	for i := range deps {
		if state[i] == 0 && visit(i) {
			return
		}
	}
}

// KnownVars returns the template names step i may reference, without step
// outputs (which validateRefs checks by prefix).
func (pl *Pipeline) KnownVars(deps [][]int, i int) map[string]bool {
	known := map[string]bool{}
	for _, b := range Builtins {
		known[b] = true
	}
	for v := range pl.Variables {
		known[v] = true
	}
	for _, u := range Upstream(deps, i) {
		switch pl.Steps[u].Type {
		case "docker_build", "docker_pull", "docker_push":
			known["docker_image"] = true
		}
		if pl.Steps[u].Kind() == "k8s" {
			known["k8s_namespace"], known["k8s_resource_name"] = true, true
		}
	}
	return known
}

func (p *parser) validateRefs(pl *Pipeline) {
	deps := pl.Deps()
	for i := range pl.Steps {
		s := &pl.Steps[i]
		known := pl.KnownVars(deps, i)
		upstream := map[string]bool{}
		for _, u := range Upstream(deps, i) {
			upstream[pl.Steps[u].ID()] = true
		}
		f := fmt.Sprintf("pipeline.steps[%d]", i)
		fields := map[string]any{
			"docker_image": s.DockerImage, "docker_tag": s.DockerTag, "k8s_namespace": s.K8sNamespace,
			"k8s_resource_name": s.K8sResourceName, "command": s.Command,
			"docker_config": s.DockerConfig, "k8s_config": s.K8sConfig,
		}
		for _, name := range keys(fields) {
			tmpl.Strings(fields[name], func(str string) {
				refs, err := tmpl.Refs(str)
				if err != nil {
					p.add(p.line(f+"."+name), f+"."+name, "%v", err)
					return
				}
				for _, r := range refs {
					if msg := checkRef(r, known, upstream, pl); msg != "" {
						p.add(p.line(f+"."+name), f+"."+name, "%s", msg)
					}
				}
			})
		}
	}
}

func checkRef(r string, known, upstream map[string]bool, pl *Pipeline) string {
	if strings.HasPrefix(r, "steps.") {
		parts := strings.Split(r, ".")
		if len(parts) != 4 || parts[2] != "outputs" {
			return fmt.Sprintf("reference {{%s}}: want steps.<step>.outputs.<key>", r)
		}
		if pl.StepIndex(parts[1]) < 0 {
			return fmt.Sprintf("reference {{%s}}: no step %q", r, parts[1])
		}
		if !upstream[Slug(parts[1])] {
			return fmt.Sprintf("reference {{%s}}: step %q does not run before this step (add it to needs or give it a lower order)", r, parts[1])
		}
		return ""
	}
	if known[r] {
		return ""
	}
	if contains(ContextVars, r) {
		return fmt.Sprintf("unknown variable {{%s}}: no earlier step sets it", r)
	}
	return fmt.Sprintf("unknown variable {{%s}}; declare it under pipeline.variables%s", r, suggest(r, keys(known)))
}

func isIdent(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}
