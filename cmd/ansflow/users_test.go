package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/services/pipeline/login"
)

// loginServer serves the login package's routes on a real JetStream, every
// request as the system identity (the API's guard is not this test's).
func loginServer(t *testing.T) string {
	t.Helper()
	svc, err := login.New(context.Background(), login.Config{PasswordCost: bcrypt.MinCost}, natstest.Run(t).JS, nil)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	for _, rt := range svc.Routes() {
		h := rt.Handler
		mux.Handle(rt.Pattern, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h.ServeHTTP(w, r.WithContext(auth.WithIdentity(r.Context(), auth.System)))
		}))
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

// withStdin runs fn with standard input reading text.
func withStdin(t *testing.T, text string, fn func()) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	go func() { w.WriteString(text); w.Close() }()
	old := os.Stdin
	os.Stdin = r
	defer func() { os.Stdin = old; r.Close() }()
	fn()
}

func TestUsersCommands(t *testing.T) {
	base := loginServer(t)
	var code int
	var out string
	withStdin(t, "kims-password\n", func() {
		code, out = capture(t, "users", "add", "kim", "--role", "operator", "--pipelines", "web-*,api-*", "--server", base)
	})
	if code != exitOK || !strings.Contains(out, "user kim created (operator)") {
		t.Fatalf("users add: exit %d: %s", code, out)
	}
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte("lees-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out := capture(t, "users", "add", "lee", "--role", "admin", "--password-file", pwFile, "--server", base, "--output", "json"); code != exitOK {
		t.Fatalf("users add --password-file: exit %d: %s", code, out)
	} else if got := (apiv1.User{}); json.Unmarshal([]byte(out), &got) != nil || got.Name != "lee" || got.Role != auth.RoleAdmin {
		t.Errorf("users add --output json = %s", out)
	}

	// The passwords arrived whole: each user logs in with theirs.
	for name, pw := range map[string]string{"kim": "kims-password", "lee": "lees-password"} {
		body, _ := json.Marshal(apiv1.LoginRequest{Username: name, Password: pw})
		resp, err := http.Post(base+"/api/v1/login", "application/json", strings.NewReader(string(body)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("login as %s: HTTP %d", name, resp.StatusCode)
		}
	}

	code, out = capture(t, "users", "list", "--output", "json", "--server", base)
	var us []apiv1.User
	if code != exitOK || json.Unmarshal([]byte(out), &us) != nil || len(us) != 2 || us[0].Name != "kim" ||
		strings.Join(us[0].Pipelines, ",") != "web-*,api-*" || us[1].Name != "lee" {
		t.Errorf("users list --output json: exit %d: %s", code, out)
	}
	code, out = capture(t, "users", "list", "--server", base)
	if code != exitOK || !strings.Contains(out, "NAME") || !strings.Contains(out, "kim") || !strings.Contains(out, "web-*,api-*") {
		t.Errorf("users list: exit %d: %s", code, out)
	}

	if code, out := capture(t, "users", "delete", "kim", "--server", base); code != exitOK {
		t.Errorf("users delete: exit %d: %s", code, out)
	}
	for _, args := range [][]string{
		{"users", "delete", "kim"},                  // gone: 404
		{"users", "add", "max", "--role", "root"},   // no such role
		{"users", "add", "--role", "viewer"},        // no name
		{"users", "add", "max", "--role", "viewer"}, // no password on stdin
		{"users", "add", "max", "--role", "viewer", "--password-file", filepath.Join(t.TempDir(), "missing")},
		{"users", "rename", "x"},
		{"users"},
	} {
		var code int
		withStdin(t, "", func() { code, _ = capture(t, append(args, "--server", base)...) })
		if code != exitInvalid {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
	withStdin(t, "short\n", func() { code, _ = capture(t, "users", "add", "max", "--role", "viewer", "--server", base) })
	if code != exitInvalid {
		t.Errorf("a too short password: exit %d, want 2 (the server's 400)", code)
	}
}
