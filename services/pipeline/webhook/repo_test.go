package webhook_test

import (
	"net/http"
	"reflect"
	"testing"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/services/pipeline/webhook"
)

// Each provider's payload names the repository commit statuses go to:
// the API root, owner and name (and GitLab's project id), from the fields
// the forges send.
func TestPayloadsNameTheirRepository(t *testing.T) {
	const sha = "0123456789abcdef0123456789abcdef01234567"
	for _, tc := range []struct {
		name, provider string
		header         http.Header
		body           string
		want           *apiv1.ForgeRepo
	}{
		{"github push", "github", http.Header{"X-Github-Event": {"push"}},
			`{"ref":"refs/heads/main","after":"` + sha + `","repository":{"full_name":"octo/hello","url":"https://github.com/octo/hello","html_url":"https://github.com/octo/hello","statuses_url":"https://api.github.com/repos/octo/hello/statuses/{sha}"}}`,
			&apiv1.ForgeRepo{APIURL: "https://api.github.com/", Owner: "octo", Name: "hello"}},
		{"github enterprise pull request", "github", http.Header{"X-Github-Event": {"pull_request"}},
			`{"action":"opened","pull_request":{"title":"t","head":{"ref":"f","sha":"` + sha + `","repo":{"full_name":"fork/hello"}},"base":{"repo":{"full_name":"octo/hello"}}},"repository":{"full_name":"octo/hello","statuses_url":"https://ghe.example/api/v3/repos/octo/hello/statuses/{sha}"}}`,
			&apiv1.ForgeRepo{APIURL: "https://ghe.example/api/v3/", Owner: "octo", Name: "hello"}},
		{"github without statuses_url", "github", http.Header{"X-Github-Event": {"push"}},
			`{"ref":"refs/heads/main","after":"` + sha + `","repository":{"full_name":"octo/hello","html_url":"https://github.com/octo/hello"}}`,
			&apiv1.ForgeRepo{APIURL: "https://api.github.com/", Owner: "octo", Name: "hello"}},
		{"gitea push", "gitea", http.Header{"X-Gitea-Event": {"push"}},
			`{"ref":"refs/heads/main","after":"` + sha + `","repository":{"full_name":"alice/app","url":"http://127.0.0.1:3000/api/v1/repos/alice/app","html_url":"http://127.0.0.1:3000/alice/app"}}`,
			&apiv1.ForgeRepo{APIURL: "http://127.0.0.1:3000/", Owner: "alice", Name: "app"}},
		{"gitea under a path, html only", "gitea", http.Header{"X-Gitea-Event": {"push"}},
			`{"ref":"refs/heads/main","after":"` + sha + `","repository":{"full_name":"alice/app","html_url":"https://example.com/git/alice/app"}}`,
			&apiv1.ForgeRepo{APIURL: "https://example.com/git/", Owner: "alice", Name: "app"}},
		{"gitlab push", "gitlab", http.Header{"X-Gitlab-Event": {"Push Hook"}},
			`{"ref":"refs/heads/main","checkout_sha":"` + sha + `","project":{"id":42,"path_with_namespace":"group/sub/app","web_url":"https://gitlab.example/group/sub/app"}}`,
			&apiv1.ForgeRepo{APIURL: "https://gitlab.example/", Owner: "group/sub", Name: "app", ProjectID: 42}},
		{"no repository", "github", http.Header{"X-Github-Event": {"push"}},
			`{"ref":"refs/heads/main","after":"` + sha + `"}`, nil},
		{"not a URL", "gitea", http.Header{"X-Gitea-Event": {"push"}},
			`{"ref":"refs/heads/main","after":"` + sha + `","repository":{"full_name":"alice/app","url":"javascript:alert(1)/api/v1/repos/alice/app"}}`, nil},
		{"odd full name", "github", http.Header{"X-Github-Event": {"push"}},
			`{"ref":"refs/heads/main","after":"` + sha + `","repository":{"full_name":"a/b/c","statuses_url":"https://api.github.com/repos/a/b/c/statuses/{sha}"}}`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := webhook.Parse(tc.provider, tc.header, []byte(tc.body))
			if err != nil || p == nil {
				t.Fatalf("parse: %v %v", p, err)
			}
			if !reflect.DeepEqual(p.Repo, tc.want) {
				t.Errorf("repo %+v, want %+v", p.Repo, tc.want)
			}
		})
	}
}
