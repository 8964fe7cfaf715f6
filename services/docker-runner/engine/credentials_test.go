package engine_test

import (
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ansflow/ansflow/services/docker-runner/engine"
)

func TestLoadCredentials(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("example.pw", "from-a-file\n")
	t.Setenv("ANSFLOW_TEST_REG_PW", "from-the-env")
	write("config.json", fmt.Sprintf(`{"auths": {
		"https://index.docker.io/v1/": {"auth": %q},
		"ghcr.example.com": {"username": "gh", "password": "from-docker-config"},
		"helper.example.com": {}
	}, "credsStore": "desktop"}`, base64.StdEncoding.EncodeToString([]byte("hubuser:hub:pass"))))
	path := write("creds.yaml", `
registries:
  local:
    server: http://127.0.0.1:5000/
    username: ci
    password_env: ANSFLOW_TEST_REG_PW
  registry.example.com:
    username: robot
    password_file: example.pw
  inline:
    server: inline.example.com
    username: me
    password: inline-secret
docker_config: config.json
`)
	creds, err := engine.LoadCredentials(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		keys     []string
		user, pw string
	}{
		{[]string{"local"}, "ci", "from-the-env"},
		{[]string{"unknown", "127.0.0.1:5000"}, "ci", "from-the-env"},      // by server
		{[]string{"http://127.0.0.1:5000/v2/"}, "ci", "from-the-env"},      // by URL
		{[]string{"registry.example.com"}, "robot", "from-a-file"},         // newline dropped
		{[]string{"https://registry.example.com"}, "robot", "from-a-file"}, // by URL
		{[]string{"inline"}, "me", "inline-secret"},
		{[]string{"docker.io"}, "hubuser", "hub:pass"},
		{[]string{"ghcr.example.com"}, "gh", "from-docker-config"},
	} {
		c, ok := creds.Lookup(tc.keys...)
		if !ok || c.Username != tc.user || c.Password != tc.pw {
			t.Errorf("Lookup(%q) = %v %v, want %s", tc.keys, c, ok, tc.user)
		}
	}
	if _, ok := creds.Lookup("helper.example.com"); ok {
		t.Error("an auths entry without credentials (kept by a helper) was loaded")
	}
	if _, ok := creds.Lookup("", "nowhere.example.com"); ok {
		t.Error("found credentials for an unknown registry")
	}
	c, _ := creds.Lookup("local")
	for _, s := range []string{c.String(), fmt.Sprintf("%v %+v %#v %s", c, c, c, c)} {
		if strings.Contains(s, "from-the-env") {
			t.Errorf("formatting a credential shows its password: %s", s)
		}
	}

	// a Docker config.json alone
	dc, err := engine.LoadCredentials(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if c, ok := dc.Lookup("index.docker.io"); !ok || c.Username != "hubuser" {
		t.Errorf("docker config alone: %v %v", c, ok)
	}
}

func TestLoadCredentialsErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, content, want string
	}{
		{"two passwords", "registries: {r: {username: u, password: secret-1, password_env: X}}", `registry "r": set exactly one`},
		{"no password", "registries: {r: {username: u, pasword: typo-secret}}", `registry "r": set exactly one`},
		{"no username", "registries: {r: {password: secret-1}}", `registry "r": no username`},
		{"unset env", "registries: {r: {username: u, password_env: ANSFLOW_TEST_UNSET_VAR}}", "ANSFLOW_TEST_UNSET_VAR (password_env) is not set"},
		{"missing file", "registries: {r: {username: u, password_file: nope.pw}}", "password_file"},
		{"bad auth", `{"auths": {"h": {"auth": "!!secret!!"}}}`, "not base64"},
		{"not yaml", "registries: [secret-in-bad-yaml: {", "is not valid YAML or JSON"},
		{"catalogue name without server", "registries: {prod: {username: u, password: pw-1}}", `registry "prod": no server: a credential is only sent to the host it was made for`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".yaml")
			if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := engine.LoadCredentials(p)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error quotes a secret: %v", err)
			}
		})
	}
	if _, err := engine.LoadCredentials(filepath.Join(dir, "absent.yaml")); err == nil {
		t.Error("no error for a missing file")
	}
}

// TestExampleCredentialsFile keeps the service's example file loadable.
func TestExampleCredentialsFile(t *testing.T) {
	b, err := os.ReadFile("../registries.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("robot-password\n"), 0o600)
	path := filepath.Join(dir, "registries.yaml")
	os.WriteFile(path, []byte(strings.ReplaceAll(string(b), "/run/secrets/registry-example", pw)), 0o600)
	t.Setenv("LOCAL_REGISTRY_PASSWORD", "local-password")
	creds, err := engine.LoadCredentials(path)
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{"local": "local-password", "127.0.0.1:5000": "local-password",
		"registry.example.com": "robot-password"} {
		if c, ok := creds.Lookup(key); !ok || c.Password != want {
			t.Errorf("Lookup(%q) = %v %v", key, c, ok)
		}
	}
}

// TestCredentialsFor: a credential is returned only for the host it was made
// for.
func TestCredentialsFor(t *testing.T) {
	creds := engine.Credentials{
		"prod":                 {Server: "prod.example.com", Username: "p", Password: "pw-prod"},
		"1":                    {Server: "https://prod.example.com/v2/", Username: "p", Password: "pw-prod"},
		"registry.example.com": {Username: "r", Password: "pw-r"},
		"nameonly":             {Username: "n", Password: "pw-n"},
	}
	for _, tc := range []struct {
		host  string
		names []string
		user  string // "" for none
		err   string
	}{
		{"prod.example.com", []string{"prod"}, "p", ""},
		{"prod.example.com", []string{"", "1"}, "p", ""},
		{"prod.example.com", nil, "p", ""}, // by host
		{"registry.example.com", []string{"registry.example.com"}, "r", ""},
		{"other.example", []string{"prod"}, "", `the runner's credential for registry "prod" is for prod.example.com, not other.example: nothing was sent`},
		{"other.example", []string{"unknown", "1"}, "", `registry "1" is for prod.example.com, not other.example`},
		{"other.example", []string{"nameonly"}, "", `registry "nameonly" names no server`},
		{"other.example", []string{"unknown"}, "", ""},
		{"other.example", nil, "", ""},
	} {
		c, ok, err := creds.For(tc.host, tc.names...)
		switch {
		case tc.err != "":
			if !errors.Is(err, engine.ErrCredentialHost) || !strings.Contains(err.Error(), tc.err) || ok || c.Password != "" {
				t.Errorf("For(%s, %q) = %v %v %v, want error %q", tc.host, tc.names, c, ok, err, tc.err)
			}
			if err != nil && strings.Contains(err.Error(), "pw-") {
				t.Errorf("error quotes a password: %v", err)
			}
		case err != nil || ok != (tc.user != "") || c.Username != tc.user:
			t.Errorf("For(%s, %q) = %v %v %v, want user %q", tc.host, tc.names, c, ok, err, tc.user)
		}
	}
}
