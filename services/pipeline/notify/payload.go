package notify

import (
	"fmt"
	"strings"
	"time"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// EventType is the type of the generic webhook's payload.
const EventType = "run.completed"

// Payload is the JSON body of a generic webhook, in the Standard Webhooks
// form: a type, a timestamp and the data.
type Payload struct {
	Type      string    `json:"type"`
	Timestamp time.Time `json:"timestamp"`
	Data      Message   `json:"data"`
}

// Message is what a notification says about a finished run.
type Message struct {
	Pipeline    string `json:"pipeline"`
	RunID       string `json:"run_id"`
	BuildNumber int    `json:"build_number"`
	Branch      string `json:"branch,omitempty"`
	Tag         string `json:"tag,omitempty"`
	Commit      string `json:"commit,omitempty"`
	// Status is the run's: succeeded, failed or cancelled.
	Status string `json:"status"`
	// PreviousStatus is the status of the previous finished run of the
	// pipeline and branch ("" when there is none).
	PreviousStatus string `json:"previous_status,omitempty"`
	// Reasons are the rule's conditions this run met (failure, change...).
	Reasons     []string     `json:"reasons"`
	Error       string       `json:"error,omitempty"`
	URL         string       `json:"url"`
	CreatedAt   time.Time    `json:"created_at"`
	FinishedAt  *time.Time   `json:"finished_at,omitempty"`
	FailedSteps []FailedStep `json:"failed_steps"`
}

// FailedStep is a step that failed, with the last lines of its output.
type FailedStep struct {
	Name     string `json:"name"`
	ID       string `json:"id"`
	Error    string `json:"error,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
	Stdout   string `json:"stdout_tail,omitempty"`
	Stderr   string `json:"stderr_tail,omitempty"`
}

// message builds the message of run r.
func message(r *store.Run, prev string, reasons []string, externalURL string, logLines int) Message {
	m := Message{Pipeline: r.Pipeline, RunID: r.ID, BuildNumber: r.BuildNumber, Branch: r.Branch(),
		Tag: r.Vars["git_tag"].Value, Commit: r.Vars["git_commit"].Value, Status: r.Status, PreviousStatus: prev,
		Reasons: reasons, Error: r.Error, URL: RunURL(externalURL, r.ID), CreatedAt: r.CreatedAt, FinishedAt: r.FinishedAt,
		FailedSteps: []FailedStep{}}
	for _, s := range r.Steps {
		if s.Status != event.StatusFailed {
			continue
		}
		m.FailedSteps = append(m.FailedSteps, FailedStep{Name: s.Name, ID: s.ID, Error: s.Error, ExitCode: s.ExitCode,
			Stdout: lastLines(s.Logs.Stdout, logLines), Stderr: lastLines(s.Logs.Stderr, logLines)})
	}
	return m
}

// RunURL is the link to run id's page under the service's external URL.
func RunURL(externalURL, id string) string {
	return strings.TrimRight(externalURL, "/") + "/runs/" + id
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	if n <= 0 || s == "" {
		return s
	}
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Title is the one-line summary of m: "web #12 failed on main (abc1234)".
func (m Message) Title() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s #%d %s", m.Pipeline, m.BuildNumber, m.Status)
	if m.Status == event.StatusSucceeded && m.PreviousStatus == event.StatusFailed {
		b.WriteString(" (fixed)")
	}
	if m.Branch != "" {
		fmt.Fprintf(&b, " on %s", m.Branch)
	} else if m.Tag != "" {
		fmt.Fprintf(&b, " at tag %s", m.Tag)
	}
	if m.Commit != "" {
		fmt.Fprintf(&b, " (%s)", short(m.Commit))
	}
	return b.String()
}

func short(commit string) string {
	if len(commit) > 12 {
		return commit[:12]
	}
	return commit
}

// Text is the plain-text body of m, as an email carries it.
func (m Message) Text() string {
	var b strings.Builder
	b.WriteString(m.Title() + "\n\n")
	fmt.Fprintf(&b, "Pipeline: %s\nRun:      %s (build %d)\nStatus:   %s\n", m.Pipeline, m.RunID, m.BuildNumber, m.Status)
	if m.PreviousStatus != "" {
		fmt.Fprintf(&b, "Previous: %s\n", m.PreviousStatus)
	}
	if m.Branch != "" {
		fmt.Fprintf(&b, "Branch:   %s\n", m.Branch)
	}
	if m.Tag != "" {
		fmt.Fprintf(&b, "Tag:      %s\n", m.Tag)
	}
	if m.Commit != "" {
		fmt.Fprintf(&b, "Commit:   %s\n", m.Commit)
	}
	if m.Error != "" {
		fmt.Fprintf(&b, "Error:    %s\n", m.Error)
	}
	fmt.Fprintf(&b, "Link:     %s\n", m.URL)
	for _, s := range m.FailedSteps {
		fmt.Fprintf(&b, "\nStep %q failed", s.Name)
		if s.ExitCode != nil {
			fmt.Fprintf(&b, " with exit code %d", *s.ExitCode)
		}
		if s.Error != "" {
			fmt.Fprintf(&b, ": %s", s.Error)
		}
		b.WriteString("\n")
		for _, l := range []struct{ name, text string }{{"stdout", s.Stdout}, {"stderr", s.Stderr}} {
			if l.text == "" {
				continue
			}
			fmt.Fprintf(&b, "--- last lines of %s ---\n%s\n", l.name, l.text)
		}
	}
	return b.String()
}

// Slack is the body of a Slack-compatible incoming webhook: a text
// fallback and Block Kit blocks.
type Slack struct {
	Text   string       `json:"text"`
	Blocks []SlackBlock `json:"blocks"`
}

// SlackBlock is one Block Kit block: a section or a context.
type SlackBlock struct {
	Type     string      `json:"type"`
	Text     *SlackText  `json:"text,omitempty"`
	Elements []SlackText `json:"elements,omitempty"`
}

// SlackText is a Block Kit text object.
type SlackText struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

// slackMaxText is the longest text of a section block Slack accepts.
const slackMaxText = 3000

// SlackMessage renders m for a Slack-compatible incoming webhook.
func SlackMessage(m Message) Slack {
	icon := map[string]string{event.StatusSucceeded: ":white_check_mark:", event.StatusFailed: ":x:", event.StatusCancelled: ":no_entry_sign:"}[m.Status]
	head := fmt.Sprintf("%s *<%s|%s>*", icon, m.URL, slackEscape(m.Title()))
	if m.Error != "" {
		head += "\n" + slackEscape(m.Error)
	}
	s := Slack{Text: m.Title() + " " + m.URL, Blocks: []SlackBlock{{Type: "section", Text: &SlackText{Type: "mrkdwn", Text: clip(head, slackMaxText)}}}}
	for _, f := range m.FailedSteps {
		t := fmt.Sprintf("*%s* failed", slackEscape(f.Name))
		if f.ExitCode != nil {
			t += fmt.Sprintf(" (exit code %d)", *f.ExitCode)
		}
		if f.Error != "" {
			t += ": " + slackEscape(f.Error)
		}
		if tail := strings.TrimSpace(strings.Join(nonEmpty(f.Stdout, f.Stderr), "\n")); tail != "" {
			t += "\n```" + strings.ReplaceAll(slackEscape(tail), "```", "'''") + "```"
		}
		s.Blocks = append(s.Blocks, SlackBlock{Type: "section", Text: &SlackText{Type: "mrkdwn", Text: clipTail(t, slackMaxText)}})
	}
	var ctx []string
	ctx = append(ctx, "run "+m.RunID)
	if m.Branch != "" {
		ctx = append(ctx, "branch "+slackEscape(m.Branch))
	}
	if m.Commit != "" {
		ctx = append(ctx, "commit "+short(m.Commit))
	}
	s.Blocks = append(s.Blocks, SlackBlock{Type: "context", Elements: []SlackText{{Type: "mrkdwn", Text: strings.Join(ctx, " · ")}}})
	return s
}

func nonEmpty(ss ...string) []string {
	var out []string
	for _, s := range ss {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

// slackEscape escapes the three characters Slack's mrkdwn treats as
// control characters.
func slackEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n-4], "") + "…"
}

// clipTail keeps the head line and the end of s within n bytes, closing a
// code block it cut into.
func clipTail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	head, rest, _ := strings.Cut(s, "\n")
	keep := n - len(head) - 16
	if keep < 0 {
		return clip(head, n)
	}
	return head + "\n```…" + strings.ToValidUTF8(rest[len(rest)-keep:], "")
}
