package webhook

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/spec"
)

// Push is what a delivery says happened, normalised across providers. All
// of it is untrusted input.
type Push struct {
	Event   string // push, tag, pull_request
	Branch  string
	Tag     string
	Commit  string
	RepoURL string
	Author  string
	Message string
	Changed []string
	// Action is a pull request's normalised action (opened, synchronize,
	// reopened, closed, merged, edited, ...); empty for pushes.
	Action string
	// Fork is set for a pull request whose head repository is not its
	// base repository (or is gone): its code is anyone's.
	Fork bool
	// HeadRepo names a pull request's head repository.
	HeadRepo string
	// Repo is the repository the delivery is about (a pull request's base
	// repository), where its commit statuses go; nil when the payload
	// does not name one.
	Repo *apiv1.ForgeRepo
}

// prRepo is the part of a GitHub/Gitea pull request branch that names its
// repository.
type prRepo struct {
	Ref  string `json:"ref"`
	SHA  string `json:"sha"`
	Repo *struct {
		FullName string `json:"full_name"`
	} `json:"repo"`
}

func (b prRepo) name() string {
	if b.Repo == nil {
		return ""
	}
	return b.Repo.FullName
}

// gitlabActions maps GitLab merge request actions onto GitHub's names.
var gitlabActions = map[string]string{"open": "opened", "update": "synchronize", "reopen": "reopened", "close": "closed", "merge": "merged"}

// Parse reads a provider payload. Events AnsFlow does not trigger on
// (e.g. "ping") return a nil Push and no error.
func Parse(provider string, h http.Header, body []byte) (*Push, error) {
	kind := h.Get("X-GitHub-Event")
	switch provider {
	case "gitea":
		kind = h.Get("X-Gitea-Event")
	case "gitlab":
		kind = map[string]string{"Push Hook": "push", "Tag Push Hook": "push", "Merge Request Hook": "pull_request"}[h.Get("X-Gitlab-Event")]
	}
	var p struct {
		Ref         string `json:"ref"`
		After       string `json:"after"`
		CheckoutSHA string `json:"checkout_sha"`
		Repository  struct {
			CloneURL    string `json:"clone_url"`
			GitHTTP     string `json:"git_http_url"`
			FullName    string `json:"full_name"`
			URL         string `json:"url"`
			HTMLURL     string `json:"html_url"`
			StatusesURL string `json:"statuses_url"`
		} `json:"repository"`
		Project struct {
			ID                int64  `json:"id"`
			GitHTTP           string `json:"git_http_url"`
			WebURL            string `json:"web_url"`
			PathWithNamespace string `json:"path_with_namespace"`
		} `json:"project"`
		HeadCommit *struct {
			Message string `json:"message"`
			Author  struct {
				Name string `json:"name"`
			} `json:"author"`
		} `json:"head_commit"`
		Commits []struct {
			ID      string `json:"id"`
			Message string `json:"message"`
			Author  struct {
				Name string `json:"name"`
			} `json:"author"`
			Added    []string `json:"added"`
			Modified []string `json:"modified"`
			Removed  []string `json:"removed"`
		} `json:"commits"`
		Action      string `json:"action"`
		PullRequest *struct {
			Title string `json:"title"`
			Head  prRepo `json:"head"`
			Base  prRepo `json:"base"`
		} `json:"pull_request"`
		ObjectAttributes *struct {
			Title           string `json:"title"`
			Action          string `json:"action"`
			SourceBranch    string `json:"source_branch"`
			SourceProjectID int64  `json:"source_project_id"`
			TargetProjectID int64  `json:"target_project_id"`
			Source          struct {
				PathWithNamespace string `json:"path_with_namespace"`
			} `json:"source"`
			LastCommit struct {
				ID string `json:"id"`
			} `json:"last_commit"`
		} `json:"object_attributes"`
	}
	switch kind {
	case "push", "pull_request":
	default:
		return nil, nil
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("payload: %w", err)
	}
	out := &Push{Event: kind, Commit: p.After, RepoURL: p.Repository.CloneURL}
	if out.RepoURL == "" {
		out.RepoURL = p.Repository.GitHTTP
	}
	if out.RepoURL == "" {
		out.RepoURL = p.Project.GitHTTP
	}
	if p.CheckoutSHA != "" {
		out.Commit = p.CheckoutSHA
	}
	switch {
	case strings.HasPrefix(p.Ref, "refs/tags/"):
		out.Event, out.Tag = "tag", strings.TrimPrefix(p.Ref, "refs/tags/")
	case strings.HasPrefix(p.Ref, "refs/heads/"):
		out.Branch = strings.TrimPrefix(p.Ref, "refs/heads/")
	}
	if p.HeadCommit != nil {
		out.Message, out.Author = p.HeadCommit.Message, p.HeadCommit.Author.Name
	}
	for _, c := range p.Commits {
		out.Changed = append(append(append(out.Changed, c.Added...), c.Modified...), c.Removed...)
		if out.Message == "" && c.ID == out.Commit {
			out.Message, out.Author = c.Message, c.Author.Name
		}
	}
	if pr := p.PullRequest; pr != nil && kind == "pull_request" {
		out.Branch, out.Commit, out.Message = pr.Head.Ref, pr.Head.SHA, pr.Title
		out.Action, out.HeadRepo = p.Action, pr.Head.name()
		if out.Action == "synchronized" { // Gitea
			out.Action = "synchronize"
		}
		out.Fork = out.HeadRepo == "" || out.HeadRepo != pr.Base.name()
	}
	if mr := p.ObjectAttributes; mr != nil && kind == "pull_request" {
		out.Branch, out.Commit, out.Message = mr.SourceBranch, mr.LastCommit.ID, mr.Title
		out.Action, out.HeadRepo = gitlabActions[mr.Action], mr.Source.PathWithNamespace
		if out.Action == "" {
			out.Action = mr.Action
		}
		out.Fork = mr.SourceProjectID == 0 || mr.SourceProjectID != mr.TargetProjectID
	}
	if kind == "pull_request" && p.PullRequest == nil && p.ObjectAttributes == nil {
		return nil, errors.New("payload: pull request event without a pull request")
	}
	if out.Commit == "" || strings.Trim(out.Commit, "0") == "" {
		return nil, nil // branch deletion
	}
	r := p.Repository
	switch provider {
	case "gitlab":
		out.Repo = gitlabRepo(p.Project.ID, p.Project.PathWithNamespace, p.Project.WebURL)
	case "gitea":
		out.Repo = ownedRepo(r.FullName, trimSuffix(r.URL, "api/v1/repos/"+r.FullName), trimSuffix(r.HTMLURL, r.FullName))
	default:
		api := trimSuffix(r.StatusesURL, "repos/"+r.FullName+"/statuses/{sha}")
		if api == "" && strings.HasPrefix(r.HTMLURL, "https://github.com/") {
			api = "https://api.github.com/"
		}
		out.Repo = ownedRepo(r.FullName, api)
	}
	return out, nil
}

// ownedRepo is the repository full name (owner/name) at the first of
// apiURLs that is set; nil unless both are known.
func ownedRepo(fullName string, apiURLs ...string) *apiv1.ForgeRepo {
	owner, name, ok := strings.Cut(fullName, "/")
	if !ok || owner == "" || name == "" || strings.Contains(name, "/") {
		return nil
	}
	for _, u := range apiURLs {
		if u != "" {
			return &apiv1.ForgeRepo{APIURL: u, Owner: owner, Name: name}
		}
	}
	return nil
}

// gitlabRepo is a GitLab project: its id, namespace and name, at the
// instance serving webURL.
func gitlabRepo(id int64, path, webURL string) *apiv1.ForgeRepo {
	i := strings.LastIndex(path, "/")
	base := trimSuffix(webURL, path)
	if i <= 0 || i == len(path)-1 || base == "" {
		return nil
	}
	return &apiv1.ForgeRepo{APIURL: base, Owner: path[:i], Name: path[i+1:], ProjectID: id}
}

// trimSuffix returns s without suffix, or "" when s is not an http(s) URL
// ending in "/"+suffix.
func trimSuffix(s, suffix string) string {
	if suffix == "" || !strings.HasSuffix(s, "/"+suffix) {
		return ""
	}
	base := strings.TrimSuffix(s, suffix)
	if !strings.HasPrefix(base, "https://") && !strings.HasPrefix(base, "http://") {
		return ""
	}
	return base
}

// Match reports whether trigger t fires for push p, and why not.
func Match(t *spec.Trigger, p *Push) (bool, string) {
	events := t.Events
	if len(events) == 0 {
		events = []string{"push"}
	}
	ok := false
	for _, e := range events {
		if e == p.Event || (e == "merge_request" && p.Event == "pull_request") {
			ok = true
		}
	}
	if !ok {
		return false, fmt.Sprintf("event %q is not in %v", p.Event, events)
	}
	if p.Event == "pull_request" {
		if actions := t.PullRequestActionsOf(); !slices.Contains(actions, p.Action) {
			return false, fmt.Sprintf("pull request action %q is not in %v", p.Action, actions)
		}
		if p.Fork && t.ForkPolicy() == spec.ForksIgnore {
			return false, fmt.Sprintf("pull request from fork %q: the trigger's pull_request.forks is %s", p.HeadRepo, t.ForkPolicy())
		}
	}
	if p.Event == "tag" {
		if len(t.Tags) > 0 && !anyMatch(t.Tags, p.Tag) {
			return false, fmt.Sprintf("tag %q matches none of %v", p.Tag, t.Tags)
		}
	} else if len(t.Branches) > 0 && !anyMatch(t.Branches, p.Branch) {
		return false, fmt.Sprintf("branch %q matches none of %v", p.Branch, t.Branches)
	}
	if len(t.Paths) > 0 {
		hit := false
		for _, f := range p.Changed {
			if anyMatch(t.Paths, f) {
				hit = true
				break
			}
		}
		if !hit {
			return false, fmt.Sprintf("no changed path matches %v", t.Paths)
		}
	}
	return true, ""
}

func anyMatch(patterns []string, s string) bool {
	for _, p := range patterns {
		if Glob(p, s) {
			return true
		}
	}
	return false
}

// Glob matches s against a pattern where "*" and "?" stay within a path
// segment and "**" spans segments ("src/**" matches everything under src).
func Glob(pattern, s string) bool {
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(pattern); i++ {
		switch c := pattern[i]; {
		case c == '*' && i+1 < len(pattern) && pattern[i+1] == '*':
			b.WriteString(".*")
			i++
			if i+1 < len(pattern) && pattern[i+1] == '/' {
				b.WriteString("/?")
				i++
			}
		case c == '*':
			b.WriteString("[^/]*")
		case c == '?':
			b.WriteString("[^/]")
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString("$")
	re, err := regexp.Compile(b.String())
	return err == nil && re.MatchString(s)
}
