package forge_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/services/pipeline/forge"
)

// call is one request a recorder received.
type call struct {
	Method, Path string
	Header       http.Header
	Body         map[string]any
}

// recorder is a real HTTP server standing where a forge's API is: it
// records every request and answers failFirst of them (or all, when
// failFirst < 0) with failCode, the rest with 201.
type recorder struct {
	srv       *httptest.Server
	mu        sync.Mutex
	calls     []call
	failFirst int
	failCode  int
}

func newRecorder(t *testing.T) *recorder {
	rc := &recorder{failCode: http.StatusInternalServerError}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		c := call{Method: r.Method, Path: r.URL.EscapedPath(), Header: r.Header.Clone()}
		if len(b) > 0 {
			if err := json.Unmarshal(b, &c.Body); err != nil {
				c.Body = map[string]any{"unparsable": string(b)}
			}
		}
		rc.mu.Lock()
		rc.calls = append(rc.calls, c)
		fail := rc.failFirst < 0 || len(rc.calls) <= rc.failFirst
		rc.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if fail {
			w.WriteHeader(rc.failCode)
			_, _ = io.WriteString(w, `{"message":"forge trouble"}`)
			return
		}
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"id":1}`)
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *recorder) URL() string { return rc.srv.URL + "/" }

func (rc *recorder) Calls() []call {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]call(nil), rc.calls...)
}

func (rc *recorder) setFail(first, code int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.failFirst, rc.failCode = first, code
}

const sha = "0123456789abcdef0123456789abcdef01234567"

// Each client makes the request its forge documents: method, path, auth
// header and JSON body, with AnsFlow's states mapped onto the forge's.
func TestClientsSendTheirForgesRequests(t *testing.T) {
	st := forge.Status{Context: "ansflow/app", Description: "Run #3 succeeded", TargetURL: "https://ci.example/runs/r1"}
	for _, tc := range []struct {
		name, provider, token string
		repo                  apiv1.ForgeRepo
		state                 forge.State
		path, authHeader      string
		authValue             string
		body                  map[string]any
	}{
		{name: "github success", provider: "github", token: "ghp_secret", repo: apiv1.ForgeRepo{Owner: "octo", Name: "hello"},
			state: forge.Success, path: "/repos/octo/hello/statuses/" + sha, authHeader: "Authorization", authValue: "Bearer ghp_secret",
			body: map[string]any{"state": "success", "context": "ansflow/app", "description": "Run #3 succeeded", "target_url": "https://ci.example/runs/r1"}},
		{name: "github cancelled is error", provider: "github", token: "ghp_secret", repo: apiv1.ForgeRepo{Owner: "octo", Name: "hello"},
			state: forge.Cancelled, path: "/repos/octo/hello/statuses/" + sha, authHeader: "Authorization", authValue: "Bearer ghp_secret",
			body: map[string]any{"state": "error", "context": "ansflow/app", "description": "Run #3 succeeded", "target_url": "https://ci.example/runs/r1"}},
		{name: "gitlab by project id", provider: "gitlab", token: "glpat-secret", repo: apiv1.ForgeRepo{Owner: "group", Name: "app", ProjectID: 42},
			state: forge.Failure, path: "/api/v4/projects/42/statuses/" + sha, authHeader: "Private-Token", authValue: "glpat-secret",
			body: map[string]any{"state": "failed", "name": "ansflow/app", "description": "Run #3 succeeded", "target_url": "https://ci.example/runs/r1"}},
		{name: "gitlab by path, cancelled", provider: "gitlab", token: "glpat-secret", repo: apiv1.ForgeRepo{Owner: "group/sub", Name: "app"},
			state: forge.Cancelled, path: "/api/v4/projects/group%2Fsub%2Fapp/statuses/" + sha, authHeader: "Private-Token", authValue: "glpat-secret",
			body: map[string]any{"state": "canceled", "name": "ansflow/app", "description": "Run #3 succeeded", "target_url": "https://ci.example/runs/r1"}},
		{name: "gitea pending", provider: "gitea", token: "gitea-secret", repo: apiv1.ForgeRepo{Owner: "octo", Name: "hello"},
			state: forge.Pending, path: "/api/v1/repos/octo/hello/statuses/" + sha, authHeader: "Authorization", authValue: "token gitea-secret",
			body: map[string]any{"state": "pending", "context": "ansflow/app", "description": "Run #3 succeeded", "target_url": "https://ci.example/runs/r1"}},
		{name: "gitea cancelled is error", provider: "gitea", token: "gitea-secret", repo: apiv1.ForgeRepo{Owner: "octo", Name: "hello"},
			state: forge.Cancelled, path: "/api/v1/repos/octo/hello/statuses/" + sha, authHeader: "Authorization", authValue: "token gitea-secret",
			body: map[string]any{"state": "error", "context": "ansflow/app", "description": "Run #3 succeeded", "target_url": "https://ci.example/runs/r1"}},
		{name: "gitea skipped is success", provider: "gitea", token: "gitea-secret", repo: apiv1.ForgeRepo{Owner: "octo", Name: "hello"},
			state: forge.Skipped, path: "/api/v1/repos/octo/hello/statuses/" + sha, authHeader: "Authorization", authValue: "token gitea-secret",
			body: map[string]any{"state": "success", "context": "ansflow/app", "description": "Run #3 succeeded", "target_url": "https://ci.example/runs/r1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := newRecorder(t)
			s, err := forge.NewSetter(tc.provider, rc.URL(), tc.token, nil)
			if err != nil {
				t.Fatal(err)
			}
			st := st
			st.State = tc.state
			if err := s.SetStatus(context.Background(), tc.repo, sha, st); err != nil {
				t.Fatal(err)
			}
			calls := rc.Calls()
			if len(calls) != 1 {
				t.Fatalf("%d calls, want 1: %+v", len(calls), calls)
			}
			c := calls[0]
			if c.Method != http.MethodPost || c.Path != tc.path {
				t.Errorf("request %s %s, want POST %s", c.Method, c.Path, tc.path)
			}
			if got := c.Header.Get(tc.authHeader); got != tc.authValue {
				t.Errorf("%s: %q, want %q", tc.authHeader, got, tc.authValue)
			}
			if ct := c.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type %q, want JSON", ct)
			}
			if !reflect.DeepEqual(c.Body, tc.body) {
				t.Errorf("body %v, want %v", c.Body, tc.body)
			}
		})
	}
}

// A forge's 5xx is worth retrying, its 4xx is not, and neither error
// carries the token.
func TestClientErrorsSayWhetherToRetry(t *testing.T) {
	for _, p := range forge.Providers {
		for _, tc := range []struct {
			code  int
			retry bool
		}{{500, true}, {503, true}, {429, true}, {422, false}, {404, false}, {401, false}} {
			rc := newRecorder(t)
			rc.setFail(-1, tc.code)
			s, err := forge.NewSetter(p, rc.URL(), "tok-never-shown", nil)
			if err != nil {
				t.Fatal(err)
			}
			err = s.SetStatus(context.Background(), apiv1.ForgeRepo{Owner: "o", Name: "r", ProjectID: 1}, sha,
				forge.Status{State: forge.Success, Context: "ansflow/x"})
			var he *forge.HTTPError
			if !errors.As(err, &he) || he.Code != tc.code {
				t.Errorf("%s %d: error %v, want an HTTPError %d", p, tc.code, err, tc.code)
				continue
			}
			if forge.Retryable(err) != tc.retry {
				t.Errorf("%s %d: retryable %v, want %v", p, tc.code, !tc.retry, tc.retry)
			}
			if strings.Contains(err.Error(), "tok-never-shown") {
				t.Errorf("%s %d: the error shows the token: %v", p, tc.code, err)
			}
		}
	}
}

// Bad input gets a clear error, before any request.
func TestClientsRefuseIncompleteRequests(t *testing.T) {
	rc := newRecorder(t)
	for _, p := range forge.Providers {
		s, err := forge.NewSetter(p, rc.URL(), "tok", nil)
		if err != nil {
			t.Fatal(err)
		}
		for name, tc := range map[string]struct {
			repo apiv1.ForgeRepo
			sha  string
			st   forge.Status
		}{
			"no owner":      {apiv1.ForgeRepo{Name: "r"}, sha, forge.Status{State: forge.Success, Context: "c"}},
			"no commit":     {apiv1.ForgeRepo{Owner: "o", Name: "r"}, "", forge.Status{State: forge.Success, Context: "c"}},
			"path in sha":   {apiv1.ForgeRepo{Owner: "o", Name: "r"}, "../x", forge.Status{State: forge.Success, Context: "c"}},
			"no context":    {apiv1.ForgeRepo{Owner: "o", Name: "r"}, sha, forge.Status{State: forge.Success}},
			"unknown state": {apiv1.ForgeRepo{Owner: "o", Name: "r"}, sha, forge.Status{State: "great", Context: "c"}},
		} {
			if err := s.SetStatus(context.Background(), tc.repo, tc.sha, tc.st); err == nil || forge.Retryable(err) {
				t.Errorf("%s %s: %v, want a permanent error", p, name, err)
			}
		}
	}
	if n := len(rc.Calls()); n != 0 {
		t.Errorf("%d requests made for bad input", n)
	}
	if _, err := forge.NewSetter("bitbucket", rc.URL(), "tok", nil); err == nil {
		t.Error("unknown forge accepted")
	}
	if _, err := forge.NewSetter("gitea", "ftp://x/", "tok", nil); err == nil {
		t.Error("non-http API URL accepted")
	}
}
