package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/auth"
)

// startUp runs `ansflow up` on dir until the test ends and returns its API
// URL and what it wrote to stderr so far (read after the API answers).
func startUp(t *testing.T, dir string) (string, func() string) {
	t.Helper()
	addr := freePort(t)
	errf, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	saved := os.Stderr
	os.Stderr = errf
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- cmdUp(ctx, []string{"--data-dir", dir, "--http", addr, "--nats", "off", "--no-k8s-runner", "--log-level", "error"})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("ansflow up did not stop")
		}
		os.Stderr = saved
	})
	url := "http://" + addr
	waitFor(t, 30*time.Second, "ansflow up's API", func() (bool, string) {
		resp, err := http.Get(url + "/healthz")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
	return url, func() string { b, _ := os.ReadFile(errf.Name()); return string(b) }
}

// TestFirstStartAndTokensCLI starts `ansflow up` on a fresh data directory
// (it makes the admin token file, mode 0600, and says so without the token),
// drives `ansflow tokens` with it, checks the client credentials (--token,
// $ANSFLOW_TOKEN, --data-dir) and that a restart reuses the file.
func TestFirstStartAndTokensCLI(t *testing.T) {
	useScriptedEngines(t)
	t.Setenv("ANSFLOW_TOKEN", "")
	dir := t.TempDir()
	url, stderr := startUp(t, dir)
	file := filepath.Join(dir, adminTokenFile)
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", file, fi.Mode().Perm())
	}
	admin, err := readAdminToken(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr(), "created an admin API token in "+file) || strings.Contains(stderr(), admin) {
		t.Errorf("first start said:\n%s", stderr())
	}

	// create prints the token alone; --output json an object.
	code, out := capture(t, "tokens", "create", "--role", "viewer", "--pipelines", "web,api-*", "--expires", "30d", "--name", "ci",
		"--server", url, "--data-dir", dir)
	viewer := strings.TrimSpace(out)
	if code != exitOK || !strings.HasPrefix(viewer, auth.TokenPrefix) || strings.Count(out, "\n") != 1 {
		t.Fatalf("tokens create: exit %d, output %q", code, out)
	}
	code, out = capture(t, "tokens", "create", "--role", "operator", "--output", "json", "--server", url, "--token", admin)
	var created map[string]any
	if err := json.Unmarshal([]byte(out), &created); code != exitOK || err != nil {
		t.Fatalf("tokens create --output json: exit %d, %v\n%s", code, err, out)
	}
	for _, k := range []string{"id", "name", "role", "token", "created_at"} {
		if _, ok := created[k]; !ok {
			t.Errorf("tokens create --output json lacks %q: %s", k, out)
		}
	}
	if _, ok := created["hash"]; ok {
		t.Errorf("tokens create shows the hash: %s", out)
	}
	if code, _ := capture(t, "tokens", "create", "--role", "root", "--server", url, "--token", admin); code != exitInvalid {
		t.Errorf("--role root: exit %d", code)
	}
	if code, _ := capture(t, "tokens", "create", "--role", "viewer", "--expires", "soon", "--server", url, "--token", admin); code != exitInvalid {
		t.Errorf("--expires soon: exit %d", code)
	}

	code, out = capture(t, "tokens", "list", "--output", "json", "--server", url, "--token", admin)
	var list []apiv1.TokenInfo
	if err := json.Unmarshal([]byte(out), &list); code != exitOK || err != nil || len(list) != 3 {
		t.Fatalf("tokens list: exit %d, %v, %d tokens\n%s", code, err, len(list), out)
	}
	var ci *apiv1.TokenInfo
	for i := range list {
		if list[i].Name == "ci" {
			ci = &list[i]
		}
	}
	if ci == nil || ci.Role != auth.RoleViewer || strings.Join(ci.Pipelines, ",") != "web,api-*" || ci.ExpiresAt == nil ||
		ci.ExpiresAt.Sub(time.Now()) < 29*24*time.Hour || strings.Contains(out, viewer) {
		t.Fatalf("tokens list: ci = %+v\n%s", ci, out)
	}
	if code, out := capture(t, "tokens", "list", "--server", url, "--token", admin); code != exitOK || !strings.Contains(out, "ci") || !strings.Contains(out, "web,api-*") {
		t.Errorf("tokens list (text): exit %d\n%s", code, out)
	}

	// Client credentials: none is 401 (exit 2); $ANSFLOW_TOKEN and --token
	// are sent; a viewer may not list tokens (403, exit 2).
	if code, _ := capture(t, "pipelines", "list", "--server", url); code != exitInvalid {
		t.Errorf("pipelines list without a token: exit %d, want 2", code)
	}
	t.Setenv("ANSFLOW_TOKEN", viewer)
	if code, _ := capture(t, "pipelines", "list", "--server", url); code != exitOK {
		t.Errorf("pipelines list with $ANSFLOW_TOKEN: exit %d", code)
	}
	if code, _ := capture(t, "tokens", "list", "--server", url); code != exitInvalid {
		t.Errorf("tokens list as viewer: exit %d, want 2", code)
	}
	if code, _ := capture(t, "audit", "query", "--server", url, "--pipeline", "web"); code != exitOK {
		t.Errorf("audit query of a covered pipeline as the web viewer: exit %d", code)
	}
	if code, _ := capture(t, "audit", "query", "--server", url); code != exitInvalid {
		t.Errorf("audit query of everything as the web viewer: exit %d, want 2", code)
	}
	t.Setenv("ANSFLOW_TOKEN", "")
	if code, out := capture(t, "tokens", "revoke", ci.ID, "--server", url, "--data-dir", dir); code != exitOK || !strings.Contains(out, ci.ID) {
		t.Fatalf("tokens revoke: exit %d\n%s", code, out)
	}
	if code, _ := capture(t, "pipelines", "list", "--server", url, "--token", viewer); code != exitInvalid {
		t.Errorf("revoked token: exit %d, want 2", code)
	}

	// The local default server uses the default data directory's token.
	t.Setenv("ANSFLOW_DATA_DIR", dir)
	tf := &tokenFlags{token: new(string), dataDir: new(string)}
	if got, err := tf.resolve(true); err != nil || got != admin {
		t.Errorf("local default server: token %q, %v; want the data directory's", got[:min(8, len(got))], err)
	}
	if got, _ := tf.resolve(false); got != "" {
		t.Error("another server was sent the local admin token")
	}
	if !isLocalDefault("") || !isLocalDefault("http://127.0.0.1:8080/") || isLocalDefault(url) || isLocalDefault("http://ci.example.com:8080") {
		t.Error("isLocalDefault misjudges a server")
	}
}

// TestRestartReusesTheAdminToken checks that a second start on the same
// data directory keeps and accepts the admin token, and says nothing.
func TestRestartReusesTheAdminToken(t *testing.T) {
	useScriptedEngines(t)
	dir := t.TempDir()
	first, created, err := ensureAdminToken(dir)
	if err != nil || !created {
		t.Fatalf("first: %v %v", created, err)
	}
	url, stderr := startUp(t, dir)
	again, err := readAdminToken(dir)
	if err != nil || again != first {
		t.Fatalf("the admin token changed on restart")
	}
	// (The secrets key and identity are new here: only the token existed.)
	if strings.Contains(stderr(), "created an admin API token") {
		t.Errorf("restart said: %s", stderr())
	}
	if code, _ := capture(t, "runners", "list", "--server", url, "--data-dir", dir); code != exitOK {
		t.Errorf("runners list with --data-dir: exit %d", code)
	}
}
