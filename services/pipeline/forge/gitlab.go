package forge

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	gitlab "gitlab.com/gitlab-org/api/client-go"

	"github.com/ansflow/ansflow/pkg/apiv1"
)

// GitLabURL is gitlab.com.
const GitLabURL = "https://gitlab.com/"

// GitLab posts statuses through GitLab's commit status API
// (POST /api/v4/projects/{id}/statuses/{sha}).
type GitLab struct {
	c *gitlab.Client
}

// NewGitLab returns a client of the GitLab instance at instanceURL (its web
// root, such as GitLabURL) authenticating with token (PRIVATE-TOKEN); hc
// nil means http.DefaultClient. The client does not retry: the
// [Reporter] does.
func NewGitLab(instanceURL, token string, hc *http.Client) (*GitLab, error) {
	base, err := baseURL(instanceURL)
	if err != nil {
		return nil, err
	}
	if hc == nil {
		hc = http.DefaultClient
	}
	c, err := gitlab.NewClient(token, gitlab.WithBaseURL(base+"api/v4"), gitlab.WithHTTPClient(hc), gitlab.WithoutRetries())
	if err != nil {
		return nil, fmt.Errorf("gitlab client: %w", err)
	}
	return &GitLab{c: c}, nil
}

// gitlabState maps s onto GitLab's states.
func gitlabState(s State) gitlab.BuildStateValue {
	switch s {
	case Success:
		return gitlab.Success
	case Failure:
		return gitlab.Failed
	case Cancelled:
		return gitlab.Canceled
	case Skipped:
		return gitlab.Skipped
	}
	return gitlab.Pending
}

// SetStatus posts s for commit sha of repo (by its project id, else its
// path).
func (g *GitLab) SetStatus(ctx context.Context, repo apiv1.ForgeRepo, sha string, s Status) error {
	if err := checkRequest(repo, sha, s); err != nil {
		return err
	}
	var pid any = repo.FullName()
	if repo.ProjectID > 0 {
		pid = repo.ProjectID
	}
	opt := &gitlab.SetCommitStatusOptions{State: gitlabState(s.State), Name: gitlab.Ptr(s.Context),
		Description: gitlab.Ptr(truncate(s.Description, 140))}
	if s.TargetURL != "" {
		opt.TargetURL = gitlab.Ptr(s.TargetURL)
	}
	_, resp, err := g.c.Commits.SetCommitStatus(pid, sha, opt, gitlab.WithContext(ctx))
	if err != nil {
		var er *gitlab.ErrorResponse
		if errors.As(err, &er) && er.Response != nil {
			return fmt.Errorf("gitlab status: %w", &HTTPError{Code: er.Response.StatusCode, Message: er.Message})
		}
		if resp != nil {
			if herr := httpError(resp.Response, ""); herr != nil {
				return fmt.Errorf("gitlab status: %w", herr)
			}
		}
		return fmt.Errorf("gitlab status: %w", err)
	}
	return nil
}
