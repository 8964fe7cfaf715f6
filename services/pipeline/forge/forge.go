// Package forge posts commit statuses back to the forge (GitHub, GitLab,
// Gitea) for every run a forge webhook started: pending when the run is
// created, then success, failure or error for the run and, when enabled,
// for each step, each linking to the run's page.
//
// A [Reporter] follows the run events on the bus (a durable consumer, so
// any number of pipeline service instances share the work), reads the run
// from the store, and posts what changed through a [Setter], one per forge.
// The last state posted per run and status context is kept in a key-value
// bucket, so a redelivered or duplicated event never posts an older state
// after a newer one. Failed calls are retried with bounded backoff and
// never fail the run; every call's outcome is an audit record. The forge
// token comes from the secret store and never reaches a log, a bucket or
// an audit record.
package forge

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/ansflow/ansflow/pkg/apiv1"
)

// State is a commit status state in AnsFlow's vocabulary; each [Setter]
// maps it onto its forge's.
type State string

// Commit status states.
const (
	// Pending: the run (or step) has not finished.
	Pending State = "pending"
	// Success: it succeeded.
	Success State = "success"
	// Failure: it failed.
	Failure State = "failure"
	// Cancelled: it was cancelled (GitHub and Gitea show "error", GitLab
	// "canceled").
	Cancelled State = "cancelled"
	// Skipped: a step that did not run (GitLab shows "skipped", GitHub and
	// Gitea "success").
	Skipped State = "skipped"
)

// Final reports whether s is a state a run or step does not leave.
func (s State) Final() bool { return s != Pending }

// rank orders states: a final state is never followed by pending.
func (s State) rank() int {
	if s.Final() {
		return 1
	}
	return 0
}

// Status is one commit status.
type Status struct {
	State State
	// Context names the status, such as ansflow/build or
	// ansflow/build/test.
	Context string
	// Description is a short summary (forges cut it at 140 characters).
	Description string
	// TargetURL links to the run's page; empty for none.
	TargetURL string
}

// Setter posts a commit status to one forge. Implementations must be safe
// for concurrent use and never put their token in an error.
type Setter interface {
	SetStatus(ctx context.Context, repo apiv1.ForgeRepo, sha string, s Status) error
}

// HTTPError is a forge's answer other than 2xx.
type HTTPError struct {
	Code int
	// Message is the forge's message, when it gave one.
	Message string
}

func (e *HTTPError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("forge answered %d %s", e.Code, http.StatusText(e.Code))
	}
	return fmt.Sprintf("forge answered %d %s: %s", e.Code, http.StatusText(e.Code), e.Message)
}

// Retryable reports whether err may succeed when tried again: anything but
// a forge's 4xx answer other than 408 and 429.
func Retryable(err error) bool {
	var h *HTTPError
	if errors.As(err, &h) {
		return h.Code >= 500 || h.Code == http.StatusTooManyRequests || h.Code == http.StatusRequestTimeout
	}
	return !errors.Is(err, errBadRequest)
}

// errBadRequest marks a status that cannot be posted however often it is
// tried (a repository or commit the payload did not name).
var errBadRequest = errors.New("bad status request")

// httpError returns the HTTPError of resp when its status is not 2xx; nil
// for a 2xx answer or no answer.
func httpError(resp *http.Response, msg string) error {
	if resp == nil || resp.StatusCode/100 == 2 {
		return nil
	}
	return &HTTPError{Code: resp.StatusCode, Message: msg}
}

// checkRequest rejects a status no forge accepts.
func checkRequest(repo apiv1.ForgeRepo, sha string, s Status) error {
	switch {
	case repo.Owner == "" || repo.Name == "":
		return fmt.Errorf("%w: no repository owner and name", errBadRequest)
	case sha == "" || strings.ContainsAny(sha, "/?#% "):
		return fmt.Errorf("%w: commit %q", errBadRequest, sha)
	case s.Context == "":
		return fmt.Errorf("%w: no status context", errBadRequest)
	}
	switch s.State {
	case Pending, Success, Failure, Cancelled, Skipped:
		return nil
	}
	return fmt.Errorf("%w: unknown state %q", errBadRequest, s.State)
}

// baseURL returns u with exactly one trailing slash, checking it is an
// http(s) URL.
func baseURL(u string) (string, error) {
	if !strings.HasPrefix(u, "https://") && !strings.HasPrefix(u, "http://") {
		return "", fmt.Errorf("%w: forge API URL %q is not http(s)", errBadRequest, u)
	}
	return strings.TrimRight(u, "/") + "/", nil
}

// truncate cuts s to at most n runes.
func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
