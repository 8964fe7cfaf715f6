package spec

import (
	"fmt"
	"net/mail"
	"net/url"
	"reflect"
	"slices"
	"sort"
	"strings"
)

// Notification conditions of [NotifyRule.When].
const (
	// NotifyFailure fires when the run failed.
	NotifyFailure = "failure"
	// NotifySuccess fires when the run succeeded.
	NotifySuccess = "success"
	// NotifyRecovery fires on the first success after a failure of the
	// same pipeline (and branch).
	NotifyRecovery = "recovery"
	// NotifyChange fires when the run's status differs from the previous
	// finished run of the same pipeline (and branch).
	NotifyChange = "change"
	// NotifyAlways fires on every finished run, cancelled ones included.
	NotifyAlways = "always"
)

// NotifyWhens lists every condition a rule may name.
var NotifyWhens = []string{NotifyFailure, NotifySuccess, NotifyRecovery, NotifyChange, NotifyAlways}

// Notification target types of [NotifyTarget.Type].
const (
	// TargetWebhook is a generic webhook signed with the Standard
	// Webhooks scheme.
	TargetWebhook = "webhook"
	// TargetSlack is a Slack-compatible incoming webhook.
	TargetSlack = "slack"
	// TargetEmail is an email sent over the server's SMTP relay.
	TargetEmail = "email"
)

// NotifyTargetTypes lists every target type.
var NotifyTargetTypes = []string{TargetWebhook, TargetSlack, TargetEmail}

// NotifyRule says when a finished run is announced and to whom. A run
// matching any of When is sent to every target.
type NotifyRule struct {
	When    []string       `yaml:"when" json:"when"`
	Targets []NotifyTarget `yaml:"targets" json:"targets"`
}

// NotifyTarget is one receiver of a rule's notifications. Secrets are
// named, never written: Secret (webhook) names the whsec_ signing secret
// and URLSecret (slack) the incoming webhook's URL, both in the secret
// store (the pipeline's own, else a global one).
type NotifyTarget struct {
	Type      string   `yaml:"type" json:"type"`
	URL       string   `yaml:"url,omitempty" json:"url,omitempty"`
	Secret    string   `yaml:"secret,omitempty" json:"secret,omitempty"`
	URLSecret string   `yaml:"url_secret,omitempty" json:"url_secret,omitempty"`
	To        []string `yaml:"to,omitempty" json:"to,omitempty"`
}

// NotifyMatches reports whether a rule with condition when fires for a run of
// status after a previous finished run of status prev ("" when none).
// Statuses are the run statuses "succeeded", "failed" and "cancelled".
func NotifyMatches(when, status, prev string) bool {
	switch when {
	case NotifyAlways:
		return true
	case NotifyFailure:
		return status == "failed"
	case NotifySuccess:
		return status == "succeeded"
	case NotifyRecovery:
		return status == "succeeded" && prev == "failed"
	case NotifyChange:
		return status != "cancelled" && prev != "" && status != prev
	}
	return false
}

// Fires reports whether rule r fires for status after prev ([NotifyMatches]
// for any of its conditions).
func (r *NotifyRule) Fires(status, prev string) bool {
	for _, w := range r.When {
		if NotifyMatches(w, status, prev) {
			return true
		}
	}
	return false
}

// ParseNotifyRules reads a server-wide list of notification rules: a YAML
// file holding a list in the form of a pipeline's notify: key. Errors name
// the file, line and field (notify[0].targets[1].url).
func ParseNotifyRules(file string, data []byte) ([]NotifyRule, error) {
	p, doc, err := readDocument(file, data)
	if err != nil || doc == nil {
		return nil, err
	}
	p.check(doc, reflect.TypeOf([]NotifyRule{}), "notify", 0)
	var rules []NotifyRule
	if len(p.errs) == 0 {
		if err := doc.Decode(&rules); err != nil {
			p.yamlErr(err)
		} else {
			p.validateNotify("notify", rules)
		}
	}
	if len(p.errs) > 0 {
		sort.SliceStable(p.errs, func(i, j int) bool { return p.errs[i].Line < p.errs[j].Line })
		return nil, p.errs
	}
	return rules, nil
}

func (p *parser) validateNotify(path string, rules []NotifyRule) {
	for i, r := range rules {
		f := fmt.Sprintf("%s[%d]", path, i)
		if len(r.When) == 0 {
			p.add(p.line(f), f+".when", "required: one or more of %s", strings.Join(NotifyWhens, ", "))
		}
		for _, w := range r.When {
			if !slices.Contains(NotifyWhens, w) {
				p.add(p.line(f+".when"), f+".when", "%q: want %s%s", w, strings.Join(NotifyWhens, ", "), suggest(w, NotifyWhens))
			}
		}
		if len(r.Targets) == 0 {
			p.add(p.line(f), f+".targets", "required: at least one webhook, slack or email target")
		}
		for j, t := range r.Targets {
			p.validateTarget(fmt.Sprintf("%s.targets[%d]", f, j), &t)
		}
	}
}

func (p *parser) validateTarget(f string, t *NotifyTarget) {
	unused := func(name string, set bool) {
		if set {
			p.add(p.line(f+"."+name), f+"."+name, "not used by %s targets", t.Type)
		}
	}
	secretField := func(name, value, what string) {
		switch {
		case value == "":
			p.add(p.line(f), f+"."+name, "required: the name of the %s in the secret store", what)
		case !triggerSecretName.MatchString(value):
			p.add(p.line(f+"."+name), f+"."+name, "%q: want a secret name of letters, digits, '_', '.' and '-'", value)
		}
	}
	switch t.Type {
	case TargetWebhook:
		if t.URL == "" {
			p.add(p.line(f), f+".url", "required")
		} else if u, err := url.Parse(t.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			p.add(p.line(f+".url"), f+".url", "%q: want an http or https URL", t.URL)
		} else if u.User != nil {
			p.add(p.line(f+".url"), f+".url", "must not hold credentials; sign with secret: instead")
		}
		secretField("secret", t.Secret, "signing secret (whsec_...)")
		unused("url_secret", t.URLSecret != "")
		unused("to", len(t.To) > 0)
	case TargetSlack:
		if t.URL != "" {
			p.add(p.line(f+".url"), f+".url", "a Slack webhook URL is a secret: store it and name it with url_secret:")
		}
		secretField("url_secret", t.URLSecret, "incoming webhook URL")
		unused("secret", t.Secret != "")
		unused("to", len(t.To) > 0)
	case TargetEmail:
		if len(t.To) == 0 {
			p.add(p.line(f), f+".to", "required: one or more email addresses")
		}
		for k, a := range t.To {
			if addr, err := mail.ParseAddress(a); err != nil || addr.Name != "" || strings.ContainsAny(a, "\r\n") {
				p.add(p.line(fmt.Sprintf("%s.to[%d]", f, k)), fmt.Sprintf("%s.to[%d]", f, k), "%q: want an email address such as dev@example.com", a)
			}
		}
		unused("url", t.URL != "")
		unused("secret", t.Secret != "")
		unused("url_secret", t.URLSecret != "")
	case "":
		p.add(p.line(f), f+".type", "required: %s", strings.Join(NotifyTargetTypes, ", "))
	default:
		p.add(p.line(f+".type"), f+".type", "%q: want %s%s", t.Type, strings.Join(NotifyTargetTypes, ", "), suggest(t.Type, NotifyTargetTypes))
	}
}
