package forge

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/google/go-github/v84/github"

	"github.com/ansflow/ansflow/pkg/apiv1"
)

// GitHubAPI is the REST API root of github.com.
const GitHubAPI = "https://api.github.com/"

// GitHub posts statuses through GitHub's commit statuses API
// (POST /repos/{owner}/{repo}/statuses/{sha}).
type GitHub struct {
	c *github.Client
}

// NewGitHub returns a client of the GitHub REST API at apiURL (GitHubAPI,
// or https://HOST/api/v3/ for GitHub Enterprise) authenticating with
// token; hc nil means http.DefaultClient.
func NewGitHub(apiURL, token string, hc *http.Client) (*GitHub, error) {
	base, err := baseURL(apiURL)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(base)
	if err != nil {
		return nil, fmt.Errorf("github API URL: %w", err)
	}
	c := github.NewClient(hc).WithAuthToken(token)
	c.BaseURL = u
	c.UserAgent = "ansflow"
	return &GitHub{c: c}, nil
}

// githubState maps s onto GitHub's states (pending, success, error,
// failure).
func githubState(s State) string {
	switch s {
	case Skipped:
		return "success"
	case Cancelled:
		return "error"
	}
	return string(s)
}

// SetStatus posts s for commit sha of repo.
func (g *GitHub) SetStatus(ctx context.Context, repo apiv1.ForgeRepo, sha string, s Status) error {
	if err := checkRequest(repo, sha, s); err != nil {
		return err
	}
	st := github.RepoStatus{State: github.Ptr(githubState(s.State)), Context: github.Ptr(s.Context),
		Description: github.Ptr(truncate(s.Description, 140))}
	if s.TargetURL != "" {
		st.TargetURL = github.Ptr(s.TargetURL)
	}
	_, resp, err := g.c.Repositories.CreateStatus(ctx, repo.Owner, repo.Name, sha, st)
	if err != nil {
		var er *github.ErrorResponse
		if errors.As(err, &er) && er.Response != nil {
			return fmt.Errorf("github status: %w", &HTTPError{Code: er.Response.StatusCode, Message: er.Message})
		}
		if resp != nil {
			if herr := httpError(resp.Response, ""); herr != nil {
				return fmt.Errorf("github status: %w", herr)
			}
		}
		return fmt.Errorf("github status: %w", err)
	}
	return nil
}
