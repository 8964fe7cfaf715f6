package forge

import (
	"context"
	"fmt"
	"net/http"

	"code.gitea.io/sdk/gitea"

	"github.com/ansflow/ansflow/pkg/apiv1"
)

// Gitea posts statuses through Gitea's status API
// (POST /api/v1/repos/{owner}/{repo}/statuses/{sha}).
type Gitea struct {
	base, token string
	hc          *http.Client
}

// NewGitea returns a client of the Gitea instance at instanceURL (its web
// root, such as http://127.0.0.1:3000/) authenticating with token; hc nil
// means a plain http.Client.
func NewGitea(instanceURL, token string, hc *http.Client) (*Gitea, error) {
	base, err := baseURL(instanceURL)
	if err != nil {
		return nil, err
	}
	if hc == nil {
		hc = &http.Client{}
	}
	return &Gitea{base: base, token: token, hc: hc}, nil
}

// giteaState maps s onto Gitea's states (pending, success, error,
// failure, warning).
func giteaState(s State) gitea.StatusState {
	switch s {
	case Success, Skipped:
		return gitea.StatusSuccess
	case Failure:
		return gitea.StatusFailure
	case Cancelled:
		return gitea.StatusError
	}
	return gitea.StatusPending
}

// SetStatus posts s for commit sha of repo.
func (g *Gitea) SetStatus(ctx context.Context, repo apiv1.ForgeRepo, sha string, s Status) error {
	if err := checkRequest(repo, sha, s); err != nil {
		return err
	}
	// The SDK's client keeps one context, so each call gets its own
	// client; SetGiteaVersion("") skips its version probe.
	c, err := gitea.NewClient(g.base, gitea.SetHTTPClient(g.hc), gitea.SetToken(g.token), gitea.SetContext(ctx),
		gitea.SetGiteaVersion(""), gitea.SetUserAgent("ansflow"))
	if err != nil {
		return fmt.Errorf("gitea client: %w", err)
	}
	_, resp, err := c.CreateStatus(repo.Owner, repo.Name, sha, gitea.CreateStatusOption{State: giteaState(s.State),
		TargetURL: s.TargetURL, Description: truncate(s.Description, 140), Context: s.Context})
	if err != nil {
		if resp != nil {
			if herr := httpError(resp.Response, err.Error()); herr != nil {
				return fmt.Errorf("gitea status: %w", herr)
			}
		}
		return fmt.Errorf("gitea status: %w", err)
	}
	return nil
}
