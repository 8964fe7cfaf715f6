package api_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/services/pipeline/pipelinetest"
)

func TestTokenRoutes(t *testing.T) {
	env := pipelinetest.Start(t)
	base := env.Srv.URL
	do := func(token, method, path, body string, out any) int {
		t.Helper()
		bearerFor[base] = token
		defer delete(bearerFor, base)
		return call(t, method, base+path, "application/json", body, out)
	}
	var eb apiv1.ErrorBody
	for _, bad := range []string{`{`, `{"role":"root"}`, `{"role":"viewer","expires_in":"soon"}`, `{"role":"viewer","expires_in":"-3d"}`,
		`{"role":"viewer","pipelines":["[x"]}`, `{"role":"viewer","pipelines":[""]}`} {
		if code := do(env.AdminToken, "POST", "/api/v1/tokens", bad, &eb); code != http.StatusBadRequest || eb.Error == "" {
			t.Errorf("create %s: %d %q, want 400", bad, code, eb.Error)
		}
	}
	var ct apiv1.CreatedToken
	if code := do(env.AdminToken, "POST", "/api/v1/tokens", `{"role":"admin","name":"web admin","pipelines":["web-*"],"expires_in":"2h"}`, &ct); code != http.StatusCreated {
		t.Fatalf("create: %d", code)
	}
	if ct.ExpiresAt == nil || time.Until(*ct.ExpiresAt) < 119*time.Minute || ct.CreatedBy != "token:"+auth.TokenID(env.AdminToken)+" (admin)" {
		t.Errorf("created %+v", ct.TokenInfo)
	}
	// A limited admin grants within itself only.
	for body, want := range map[string]int{
		`{"role":"viewer","pipelines":["web-front"],"expires_in":"1h"}`: http.StatusCreated,
		`{"role":"viewer","pipelines":["*"],"expires_in":"1h"}`:         http.StatusForbidden,
		`{"role":"viewer","expires_in":"1h"}`:                           http.StatusForbidden,
		`{"role":"viewer","pipelines":["web-front"],"expires_in":"3h"}`: http.StatusForbidden,
		`{"role":"viewer","pipelines":["web-front"]}`:                   http.StatusForbidden,
	} {
		if code := do(ct.Secret, "POST", "/api/v1/tokens", body, &eb); code != want {
			t.Errorf("limited admin creates %s: %d %q, want %d", body, code, eb.Error, want)
		}
	}
	if code := do(env.AdminToken, "DELETE", "/api/v1/tokens/0123456789abcdef", "", &eb); code != http.StatusNotFound {
		t.Errorf("revoke unknown: %d", code)
	}
	if code := do(env.AdminToken, "DELETE", "/api/v1/tokens/not-an-id", "", &eb); code != http.StatusNotFound {
		t.Errorf("revoke malformed id: %d", code)
	}
	var list []apiv1.TokenInfo
	if code := do(env.AdminToken, "GET", "/api/v1/tokens", "", &list); code != http.StatusOK || len(list) != 3 || list[0].State != "active" {
		t.Fatalf("list: %d, %d tokens", code, len(list))
	}
	var out string
	do(env.AdminToken, "GET", "/api/v1/tokens", "", &out)
	if strings.Contains(out, "sha256:") || strings.Contains(out, ct.Secret) {
		t.Errorf("the list shows hashes or secrets:\n%s", out)
	}
}
