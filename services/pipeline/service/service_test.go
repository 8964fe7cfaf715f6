package service_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/services/pipeline/service"
)

// TestRevocationHoldsAtOnceOnEveryInstance runs two pipeline service
// instances over one nats-server with the same admin token file, creates
// a token through one and revokes it through the same, and checks the
// other refuses it on its very next request.
func TestRevocationHoldsAtOnceOnEveryInstance(t *testing.T) {
	ns := natstest.Run(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	admin, err := auth.NewTokenSecret()
	if err != nil {
		t.Fatal(err)
	}
	var urls []string
	for range 2 {
		_, js := ns.Connect(t)
		svc, err := service.New(ctx, service.Config{HTTPAddr: "127.0.0.1:0", AdminToken: admin}, js, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(svc.API)
		t.Cleanup(srv.Close)
		urls = append(urls, srv.URL)
	}
	call := func(method, url, token, body string, out any) int {
		t.Helper()
		req, _ := http.NewRequest(method, url, bytes.NewBufferString(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if out != nil {
			_ = json.NewDecoder(resp.Body).Decode(out)
		}
		return resp.StatusCode
	}
	var ct apiv1.CreatedToken
	if code := call("POST", urls[0]+"/api/v1/tokens", admin, `{"role":"viewer","name":"ci"}`, &ct); code != http.StatusCreated || ct.Secret == "" || ct.ID == "" {
		t.Fatalf("create through A: %d %+v", code, ct.TokenInfo)
	}
	if code := call("GET", urls[1]+"/api/v1/pipelines", ct.Secret, "", nil); code != http.StatusOK {
		t.Fatalf("B refuses A's new token: %d", code)
	}
	if code := call("DELETE", urls[0]+"/api/v1/tokens/"+ct.ID, admin, "", nil); code != http.StatusOK {
		t.Fatalf("revoke through A: %d", code)
	}
	start := time.Now()
	deadline := start.Add(5 * time.Second)
	tries := 0
	for {
		tries++
		if code := call("GET", urls[1]+"/api/v1/pipelines", ct.Secret, "", nil); code == http.StatusUnauthorized {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("B still accepts the revoked token")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if tries != 1 {
		t.Errorf("B accepted the revoked token %d times before refusing it, want at once", tries-1)
	}
	t.Logf("refused by the other instance after %s (%d request)", time.Since(start).Round(time.Microsecond), tries)
	var list []apiv1.TokenInfo
	if code := call("GET", urls[1]+"/api/v1/tokens", admin, "", &list); code != http.StatusOK || len(list) != 2 {
		t.Fatalf("list through B: %d, %d tokens (the admin token once, and ci)", code, len(list))
	}
	for _, tk := range list {
		if want := map[bool]string{true: "revoked", false: "active"}[tk.ID == ct.ID]; tk.State != want {
			t.Errorf("token %s (%s) is %s, want %s", tk.ID, tk.Name, tk.State, want)
		}
	}
}
