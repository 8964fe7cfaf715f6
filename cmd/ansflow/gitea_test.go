package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// giteaEnv names the folder deploy/forge/gitea.sh builds Gitea into.
const giteaEnv = "ANSFLOW_TEST_GITEA"

// giteaServer is a real Gitea on loopback, serving HTTPS with a
// certificate of its own, with one admin user and an API token.
type giteaServer struct {
	t *testing.T
	// URL is the server's root (https://127.0.0.1:PORT).
	URL string
	// CAFile is the PEM certificate git and AnsFlow must trust for it.
	CAFile         string
	User, Password string
	// Token is an API token of User with every scope.
	Token  string
	client *http.Client
	dir    string
}

// startGitea starts Gitea from $ANSFLOW_TEST_GITEA (deploy/forge/gitea.sh)
// in a fresh folder and stops it when the test ends. Without the variable
// the test is skipped, except in CI, where it fails.
func startGitea(t *testing.T) *giteaServer {
	t.Helper()
	home := os.Getenv(giteaEnv)
	if home == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not set: run deploy/ci/setup.sh (it builds Gitea with deploy/forge/gitea.sh)", giteaEnv)
		}
		t.Skipf("%s is not set (deploy/forge/gitea.sh builds Gitea and prints it)", giteaEnv)
	}
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	g := &giteaServer{t: t, URL: fmt.Sprintf("https://127.0.0.1:%d", port), User: "ansflow", Password: "gitea-test-password-1", dir: dir}
	g.CAFile = filepath.Join(dir, "cert.pem")
	pool := selfSignedCert(t, g.CAFile, filepath.Join(dir, "key.pem"))
	g.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	ini := fmt.Sprintf(`APP_NAME = AnsFlow test forge
RUN_MODE = prod
WORK_PATH = %[1]s
; the tests run as root on CI machines; the git hooks Gitea runs read this too
I_AM_BEING_UNSAFE_RUNNING_AS_ROOT = true

[server]
PROTOCOL = https
HTTP_ADDR = 127.0.0.1
HTTP_PORT = %[2]d
ROOT_URL = %[3]s/
CERT_FILE = %[1]s/cert.pem
KEY_FILE = %[1]s/key.pem
STATIC_ROOT_PATH = %[4]s
APP_DATA_PATH = %[1]s/data
DISABLE_SSH = true
START_SSH_SERVER = false
OFFLINE_MODE = true
LFS_START_SERVER = false

[database]
DB_TYPE = sqlite3
PATH = %[1]s/gitea.db

[repository]
ROOT = %[1]s/repos

[security]
INSTALL_LOCK = true
SECRET_KEY = ansflow-test-secret-key
PASSWORD_COMPLEXITY = off
MIN_PASSWORD_LENGTH = 8

[service]
DISABLE_REGISTRATION = true
REQUIRE_SIGNIN_VIEW = false

[webhook]
ALLOWED_HOST_LIST = loopback
DELIVER_TIMEOUT = 10

[mailer]
ENABLED = false

[indexer]
REPO_INDEXER_ENABLED = false

[cron]
ENABLED = false

[log]
MODE = console
LEVEL = Info
ROOT_PATH = %[1]s/log
`, dir, port, g.URL, home)
	conf := filepath.Join(dir, "app.ini")
	if err := os.WriteFile(conf, []byte(ini), 0o600); err != nil {
		t.Fatal(err)
	}
	gitea := func(args ...string) *exec.Cmd {
		cmd := exec.Command(filepath.Join(home, "gitea"), append(args, "--config", conf, "--work-path", dir, "--custom-path", filepath.Join(dir, "custom"))...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "HOME="+dir, "GITEA_WORK_DIR="+dir, "GITEA_I_AM_BEING_UNSAFE_RUNNING_AS_ROOT=true")
		return cmd
	}
	for _, args := range [][]string{
		{"migrate"},
		{"admin", "user", "create", "--admin", "--username", g.User, "--password", g.Password, "--email", "ansflow@example.com", "--must-change-password=false"},
	} {
		if out, err := gitea(args...).CombinedOutput(); err != nil {
			t.Fatalf("gitea %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	logFile, err := os.Create(filepath.Join(dir, "gitea.out"))
	if err != nil {
		t.Fatal(err)
	}
	web := gitea("web")
	web.Stdout, web.Stderr = logFile, logFile
	if err := web.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- web.Wait() }()
	t.Cleanup(func() {
		web.Process.Kill()
		<-exited
		logFile.Close()
		if t.Failed() {
			out, _ := os.ReadFile(filepath.Join(dir, "gitea.out"))
			t.Logf("gitea output (last 4 KiB):\n%s", tail(out, 4096))
		}
	})
	deadline := time.Now().Add(90 * time.Second)
	for {
		resp, err := g.client.Get(g.URL + "/api/v1/version")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("gitea did not answer %s/api/v1/version within 90s: %v", g.URL, err)
		}
		select {
		case err := <-exited:
			out, _ := os.ReadFile(filepath.Join(dir, "gitea.out"))
			t.Fatalf("gitea web exited: %v\n%s", err, tail(out, 4096))
		case <-time.After(100 * time.Millisecond): // poll again until the deadline
		}
	}
	var tok struct {
		SHA1 string `json:"sha1"`
	}
	g.call(http.MethodPost, "/api/v1/users/"+g.User+"/tokens", map[string]any{"name": "ansflow-test", "scopes": []string{"all"}}, &tok, true)
	if tok.SHA1 == "" {
		t.Fatal("gitea answered no token")
	}
	g.Token = tok.SHA1
	return g
}

// API calls Gitea's REST API with the token and decodes the answer into
// out (when not nil); a status of 300 or more fails the test.
func (g *giteaServer) API(method, path string, body, out any) {
	g.t.Helper()
	g.call(method, path, body, out, false)
}

func (g *giteaServer) call(method, path string, body, out any, basic bool) {
	g.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			g.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, g.URL+path, rd)
	if err != nil {
		g.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if basic {
		req.SetBasicAuth(g.User, g.Password)
	} else {
		req.Header.Set("Authorization", "token "+g.Token)
	}
	resp, err := g.client.Do(req)
	if err != nil {
		g.t.Fatalf("gitea %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		g.t.Fatalf("gitea %s %s: %s: %s", method, path, resp.Status, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			g.t.Fatalf("gitea %s %s: %v: %s", method, path, err, b)
		}
	}
}

// WaitBranch waits until Gitea has processed a push: its API shows branch
// of repo at commit (Gitea updates a repository after the push, in the
// background).
func (g *giteaServer) WaitBranch(repo, branch, commit string) {
	g.t.Helper()
	waitFor(g.t, time.Minute, fmt.Sprintf("gitea to show %s/%s at %.8s", repo, branch, commit), func() (bool, string) {
		req, _ := http.NewRequest(http.MethodGet, g.URL+"/api/v1/repos/"+g.User+"/"+repo+"/branches/"+branch, nil)
		req.Header.Set("Authorization", "token "+g.Token)
		resp, err := g.client.Do(req)
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		var b struct {
			Commit struct {
				ID string `json:"id"`
			} `json:"commit"`
		}
		if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&b) != nil {
			return false, resp.Status
		}
		return b.Commit.ID == commit, "at " + b.Commit.ID
	})
}

// CloneURL is the HTTPS URL of a repository of User.
func (g *giteaServer) CloneURL(repo string) string { return g.URL + "/" + g.User + "/" + repo + ".git" }

// Git runs git in dir, trusting the server's certificate and pushing with
// User's password.
func (g *giteaServer) Git(dir string, args ...string) string {
	g.t.Helper()
	cmd := exec.Command("git", append([]string{"-C", dir, "-c", "user.name=Ansflow Test", "-c", "user.email=ansflow@example.com",
		"-c", "init.defaultBranch=main"}, args...)...)
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0", "GIT_CONFIG_GLOBAL=/dev/null", "GIT_SSL_CAINFO="+g.CAFile)
	out, err := cmd.CombinedOutput()
	if err != nil {
		g.t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// PushURL is CloneURL with User's password in it, for git push.
func (g *giteaServer) PushURL(repo string) string {
	return strings.Replace(g.CloneURL(repo), "https://", "https://"+g.User+":"+g.Password+"@", 1)
}

// selfSignedCert writes a certificate for 127.0.0.1 and its key and
// returns a pool trusting it.
func selfSignedCert(t *testing.T, certFile, keyFile string) *x509.CertPool {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ansflow test forge"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return pool
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// TestGiteaStarts: the harness brings up a real Gitea whose API, token
// and Git over HTTPS work (the forge-loop tests build on it).
func TestGiteaStarts(t *testing.T) {
	g := startGitea(t)
	var repo struct {
		CloneURL string `json:"clone_url"`
	}
	g.API(http.MethodPost, "/api/v1/user/repos", map[string]any{"name": "probe", "default_branch": "main"}, &repo)
	if repo.CloneURL != g.CloneURL("probe") {
		t.Errorf("clone_url %q, want %q", repo.CloneURL, g.CloneURL("probe"))
	}
	work := t.TempDir()
	g.Git(work, "init", "-q")
	os.WriteFile(filepath.Join(work, "README"), []byte("hi\n"), 0o644)
	g.Git(work, "add", ".")
	g.Git(work, "commit", "-q", "-m", "first")
	g.Git(work, "push", "-q", g.PushURL("probe"), "HEAD:main")
	g.WaitBranch("probe", "main", g.Git(work, "rev-parse", "HEAD"))
}
