package spec

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

const triggerHead = "pipeline:\n  name: x\n  steps:\n    - name: a\n      type: docker_run\n  triggers:\n    - type: webhook\n      provider: github\n"

func TestWebhookTriggerSecretsAndPullRequestRules(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       string // "" for valid
	}{
		{"stored secret", "      secret: GH_HOOK\n", ""},
		{"prefixed env", "      secret_env: ANSFLOW_WEBHOOK_GH\n", ""},
		{"no secret", "      events: [push]\n", "f.yaml:7: pipeline.triggers[0].secret: required"},
		{"any env", "      secret_env: HOME\n", `f.yaml:9: pipeline.triggers[0].secret_env: "HOME": only variables named ANSFLOW_WEBHOOK_*`},
		{"bare prefix", "      secret_env: ANSFLOW_WEBHOOK_\n", "only variables named ANSFLOW_WEBHOOK_*"},
		{"both", "      secret: A\n      secret_env: ANSFLOW_WEBHOOK_A\n", "set secret or secret_env, not both"},
		{"bad secret name", "      secret: \"a b\"\n", `pipeline.triggers[0].secret: "a b": want a secret name`},
		{"actions and forks", "      secret: A\n      pull_request: {actions: [opened, closed], forks: run}\n", ""},
		{"bad action", "      secret: A\n      pull_request:\n        actions: [labeled]\n", `f.yaml:11: pipeline.triggers[0].pull_request.actions: "labeled": want one of`},
		{"approve", "      secret: A\n      pull_request:\n        forks: approve\n", ""},
		{"bad forks", "      secret: A\n      pull_request:\n        forks: always\n", `f.yaml:11: pipeline.triggers[0].pull_request.forks: "always": want approve, ignore or run`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := Parse("f.yaml", []byte(triggerHead+c.yaml))
			if c.want == "" {
				if err != nil {
					t.Fatalf("valid trigger refused: %v", err)
				}
				if tr := p.Triggers[0]; tr.Provider != "github" {
					t.Errorf("trigger %+v", tr)
				}
				return
			}
			var errs Errors
			if !errors.As(err, &errs) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("errors\n%v\nlack %q", err, c.want)
			}
		})
	}
}

func TestPullRequestDefaults(t *testing.T) {
	tr := &Trigger{}
	if got := tr.PullRequestActionsOf(); !slices.Equal(got, []string{"opened", "synchronize", "reopened"}) {
		t.Errorf("default actions %v", got)
	}
	if got := tr.ForkPolicy(); got != ForksApprove {
		t.Errorf("default fork policy %q, want approve", got)
	}
	tr.PullRequest = &PullRequestRules{Actions: []string{"closed"}, Forks: ForksRun}
	if got := tr.PullRequestActionsOf(); !slices.Equal(got, []string{"closed"}) || tr.ForkPolicy() != ForksRun {
		t.Errorf("actions %v forks %q", got, tr.ForkPolicy())
	}
}
