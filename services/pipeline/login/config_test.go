package login

import (
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/ansflow/ansflow/pkg/auth"
)

func TestMapClaim(t *testing.T) {
	roles := map[string]auth.Role{"admins": auth.RoleAdmin, "ops": auth.RoleOperator, "web": auth.RoleOperator, "api": auth.RoleOperator, "all": auth.RoleViewer}
	pipelines := map[string][]string{"web": {"web-*"}, "api": {"api-*", "web-*"}}
	for _, c := range []struct {
		values    []string
		role      auth.Role
		pipelines string
		ok        bool
	}{
		{nil, "", "", false},
		{[]string{"marketing"}, "", "", false},
		{[]string{"all"}, auth.RoleViewer, "", true},
		{[]string{"all", "admins"}, auth.RoleAdmin, "", true},
		{[]string{"admins", "all"}, auth.RoleAdmin, "", true},
		{[]string{"web"}, auth.RoleOperator, "web-*", true},
		{[]string{"web", "api"}, auth.RoleOperator, "api-*,web-*", true},
		{[]string{"web", "ops"}, auth.RoleOperator, "", true},
		{[]string{"ops", "web"}, auth.RoleOperator, "", true},
		{[]string{"all", "web", "marketing"}, auth.RoleOperator, "web-*", true},
		{[]string{"web", "admins"}, auth.RoleAdmin, "", true},
	} {
		role, globs, ok := mapClaim(c.values, roles, pipelines)
		if role != c.role || strings.Join(globs, ",") != c.pipelines || ok != c.ok {
			t.Errorf("mapClaim(%v) = %s %v %v, want %s %q %v", c.values, role, globs, ok, c.role, c.pipelines, c.ok)
		}
	}
}

func TestClaimValues(t *testing.T) {
	claims := map[string]any{
		"groups":                   []any{"a", "b", 3},
		"role":                     "admin",
		"realm_access":             map[string]any{"roles": []any{"x"}},
		"https://example.io/teams": []any{"t"},
		"flag":                     true,
	}
	for name, want := range map[string]string{
		"groups": "a,b", "role": "admin", "realm_access.roles": "x", "https://example.io/teams": "t",
		"flag": "", "missing": "", "realm_access.missing": "", "role.x": "",
	} {
		if got := strings.Join(claimValues(claims, name), ","); got != want {
			t.Errorf("claimValues(%q) = %q, want %q", name, got, want)
		}
	}
}

func TestFlags(t *testing.T) {
	fs := flag.NewFlagSet("pipeline", flag.ContinueOnError)
	cfg := RegisterFlags(fs)
	err := fs.Parse([]string{"--session-lifetime", "1h", "--secure-cookies", "--oidc-issuer", "https://id.example.test",
		"--oidc-client-id", "ansflow", "--oidc-client-secret-file", "/run/secrets/oidc", "--oidc-redirect-url", "https://ci.example.test/auth/oidc/callback",
		"--oidc-role-claim", "realm_access.roles", "--oidc-roles", "admin=ci-admins,operator=ci-ops", "--oidc-roles", "viewer=staff",
		"--oidc-pipelines", "ci-ops=web-*|api-*", "--oidc-scopes", "profile,groups"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.SessionLifetime != time.Hour || !cfg.SecureCookies || cfg.OIDC.RoleClaim != "realm_access.roles" ||
		len(cfg.OIDC.Roles) != 3 || cfg.OIDC.Roles["ci-ops"] != auth.RoleOperator || strings.Join(cfg.OIDC.Pipelines["ci-ops"], ",") != "web-*,api-*" ||
		strings.Join(cfg.OIDC.Scopes, ",") != "profile,groups" {
		t.Errorf("config = %+v", cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	for _, bad := range [][]string{
		{"--oidc-roles", "root=x"},
		{"--oidc-roles", "admin"},
		{"--oidc-roles", "admin=x,viewer=x"},
		{"--oidc-pipelines", "x"},
		{"--oidc-pipelines", "x=["},
	} {
		fs := flag.NewFlagSet("pipeline", flag.ContinueOnError)
		fs.SetOutput(new(strings.Builder))
		RegisterFlags(fs)
		if err := fs.Parse(bad); err == nil {
			t.Errorf("%v: parsed", bad)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	ok := OIDCConfig{Issuer: "https://id", ClientID: "c", ClientSecretFile: "f", RedirectURL: "https://ci/cb", Roles: map[string]auth.Role{"g": auth.RoleViewer}}
	for _, c := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"password only", Config{}, ""},
		{"oidc", Config{OIDC: ok}, ""},
		{"bad cost", Config{PasswordCost: 99}, "password cost"},
		{"no client id", Config{OIDC: func() OIDCConfig { o := ok; o.ClientID = ""; return o }()}, "--oidc-client-id"},
		{"no roles", Config{OIDC: func() OIDCConfig { o := ok; o.Roles = nil; return o }()}, "--oidc-roles"},
		{"globs of an unmapped value", Config{OIDC: func() OIDCConfig { o := ok; o.Pipelines = map[string][]string{"h": {"x"}}; return o }()}, "no role"},
		{"open redirect", Config{OIDC: func() OIDCConfig { o := ok; o.AfterLogin = "//evil.example"; return o }()}, "after-login"},
	} {
		err := c.cfg.Validate()
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: Validate = %v, want %q", c.name, err, c.want)
		}
	}
}

func TestThrottle(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	th := newThrottle(3, 10*time.Minute)
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	steps := []struct {
		min  int
		fail bool
		want time.Duration // blocked after the step
	}{
		{0, true, 0},
		{1, true, 0},
		{2, true, 8 * time.Minute}, // three in the window: until the first is 10 min old
		{5, false, 5 * time.Minute},
		{9, false, time.Minute},
		{10, false, 0}, // the first failure left the window
		{10, true, time.Minute},
		{11, false, 0},
	}
	for _, s := range steps {
		if s.fail {
			th.fail(at(s.min), "k")
		}
		if got := th.blocked(at(s.min), "k"); got != s.want {
			t.Errorf("minute %d: blocked %s, want %s", s.min, got, s.want)
		}
	}
	th.fail(at(14), "k")
	th.reset("k")
	if got := th.blocked(at(14), "k"); got != 0 {
		t.Errorf("after reset: blocked %s", got)
	}
	// Keys whose failures all left the window are forgotten.
	for i := range 100 {
		th.fail(at(20), "spray"+string(rune('a'+i%26))+string(rune('a'+i/26)))
	}
	th.fail(at(40), "late")
	th.mu.Lock()
	n := len(th.failures)
	th.mu.Unlock()
	if n != 1 {
		t.Errorf("%d keys kept, want only the live one", n)
	}
}
