package spec

import (
	"os"
	"strings"
	"testing"
)

func TestNotifyRulesParse(t *testing.T) {
	b, err := os.ReadFile("testdata/notify.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := Parse("notify.yaml", b)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Notify) != 2 || len(p.Notify[0].Targets) != 2 || p.Notify[0].Targets[1].URLSecret != "SLACK_BUILDS_URL" ||
		p.Notify[1].Targets[0].To[1] != "ops@example.com" {
		t.Fatalf("rules %+v", p.Notify)
	}
}

const notifyHead = "pipeline:\n  name: x\n  steps:\n    - name: a\n      type: docker_run\n  notify:\n"

func TestNotifyRuleErrors(t *testing.T) {
	cases := []struct{ name, yaml, want string }{
		{"no when", "    - targets: [{type: email, to: [a@b.c]}]\n", "f.yaml:7: pipeline.notify[0].when: required"},
		{"bad when", "    - when: [broken]\n      targets: [{type: email, to: [a@b.c]}]\n", `f.yaml:7: pipeline.notify[0].when: "broken": want failure, success, recovery, change, always`},
		{"no targets", "    - when: [always]\n", "f.yaml:7: pipeline.notify[0].targets: required"},
		{"bad type", "    - when: [always]\n      targets:\n        - type: slak\n", `f.yaml:9: pipeline.notify[0].targets[0].type: "slak": want webhook, slack, email (did you mean "slack"?)`},
		{"webhook without secret", "    - when: [always]\n      targets:\n        - type: webhook\n          url: https://x.example/h\n", "f.yaml:9: pipeline.notify[0].targets[0].secret: required"},
		{"webhook bad url", "    - when: [always]\n      targets:\n        - type: webhook\n          url: ftp://x\n          secret: S\n", `f.yaml:10: pipeline.notify[0].targets[0].url: "ftp://x": want an http or https URL`},
		{"webhook url credentials", "    - when: [always]\n      targets:\n        - type: webhook\n          url: https://u:p@x.example/h\n          secret: S\n", "pipeline.notify[0].targets[0].url: must not hold credentials"},
		{"slack url in yaml", "    - when: [always]\n      targets:\n        - type: slack\n          url: https://hooks.slack.com/services/T/B/X\n          url_secret: S\n", "f.yaml:10: pipeline.notify[0].targets[0].url: a Slack webhook URL is a secret"},
		{"email bad address", "    - when: [always]\n      targets:\n        - type: email\n          to: [\"not an address\"]\n", `f.yaml:10: pipeline.notify[0].targets[0].to[0]: "not an address": want an email address`},
		{"email header injection", "    - when: [always]\n      targets:\n        - type: email\n          to: [\"a@b.c\\r\\nBcc: x@y.z\"]\n", "pipeline.notify[0].targets[0].to[0]"},
		{"unused field", "    - when: [always]\n      targets:\n        - type: email\n          to: [a@b.c]\n          secret: S\n", "f.yaml:11: pipeline.notify[0].targets[0].secret: not used by email targets"},
		{"unknown field", "    - when: [always]\n      targets:\n        - type: email\n          too: [a@b.c]\n", "f.yaml:10: pipeline.notify[0].targets[0].too: unknown field (did you mean \"to\"?)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("f.yaml", []byte(notifyHead+c.yaml))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want %q", err, c.want)
			}
		})
	}
}

func TestParseNotifyRulesFile(t *testing.T) {
	rules, err := ParseNotifyRules("default.yaml", []byte("- when: [failure]\n  targets:\n    - type: email\n      to: [ops@example.com]\n"))
	if err != nil || len(rules) != 1 || rules[0].Targets[0].To[0] != "ops@example.com" {
		t.Fatalf("rules %+v, %v", rules, err)
	}
	_, err = ParseNotifyRules("default.yaml", []byte("- when: [failure]\n  targets:\n    - type: webhook\n      url: https://x.example\n"))
	if err == nil || err.Error() != "default.yaml:3: notify[0].targets[0].secret: required: the name of the signing secret (whsec_...) in the secret store" {
		t.Fatalf("got %v", err)
	}
	if _, err := ParseNotifyRules("default.yaml", []byte("when: failure\n")); err == nil || !strings.Contains(err.Error(), "default.yaml:1: notify: want a list") {
		t.Fatalf("got %v", err)
	}
}

func TestNotifyMatches(t *testing.T) {
	const ok, bad, cancel = "succeeded", "failed", "cancelled"
	cases := []struct {
		when, status, prev string
		want               bool
	}{
		{NotifyFailure, bad, "", true}, {NotifyFailure, ok, bad, false},
		{NotifySuccess, ok, "", true}, {NotifySuccess, bad, ok, false},
		{NotifyRecovery, ok, bad, true}, {NotifyRecovery, ok, ok, false}, {NotifyRecovery, ok, "", false}, {NotifyRecovery, bad, bad, false},
		{NotifyChange, bad, ok, true}, {NotifyChange, ok, bad, true}, {NotifyChange, ok, ok, false}, {NotifyChange, ok, "", false}, {NotifyChange, cancel, ok, false},
		{NotifyAlways, cancel, "", true}, {NotifyAlways, ok, ok, true},
	}
	for _, c := range cases {
		if got := NotifyMatches(c.when, c.status, c.prev); got != c.want {
			t.Errorf("%s on %s after %q: %v, want %v", c.when, c.status, c.prev, got, c.want)
		}
	}
}
