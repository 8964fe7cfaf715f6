package login

import (
	"errors"
	"flag"
	"fmt"
	"sort"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/topology"
)

// Defaults of [Config].
const (
	DefaultSessionLifetime = 12 * time.Hour
	DefaultMaxFailures     = 5
	DefaultFailureWindow   = 15 * time.Minute
	// DefaultPasswordCost is bcrypt's cost factor for new password
	// hashes: about a quarter of a second on a current core.
	DefaultPasswordCost = 12
	// DefaultRoleClaim is the ID token claim the role mapping reads.
	DefaultRoleClaim = "groups"
	// DefaultUsernameClaim names an OIDC user (falling back to "email",
	// then "sub").
	DefaultUsernameClaim = "preferred_username"
)

// Config configures human login. The zero value enables password login with
// the defaults above; OpenID Connect is enabled by [OIDCConfig.Issuer].
type Config struct {
	// SessionLifetime is how long a session lasts from its login.
	SessionLifetime time.Duration
	// SecureCookies marks the cookies Secure on every request, for a server
	// behind a TLS-terminating proxy; without it they are Secure only on
	// requests that came over TLS.
	SecureCookies bool
	// MaxFailures failed logins within FailureWindow, for one user name or
	// from one client address, block further attempts (429) until the
	// oldest failure leaves the window.
	MaxFailures   int
	FailureWindow time.Duration
	// PasswordCost is bcrypt's cost for new password hashes.
	PasswordCost int
	// Replicas is the replication factor of the users and sessions buckets.
	Replicas int
	OIDC     OIDCConfig
}

// OIDCConfig configures OpenID Connect login.
type OIDCConfig struct {
	// Issuer is the provider's issuer URL; empty disables OIDC login.
	Issuer   string
	ClientID string
	// ClientSecretFile holds the client secret (read at [New]; a secret is
	// never a flag value).
	ClientSecretFile string
	// RedirectURL is this service's callback as registered at the
	// provider: https://HOST/auth/oidc/callback.
	RedirectURL string
	// Scopes requested besides "openid" (default "profile", "email").
	Scopes []string
	// RoleClaim names the claim the mapping reads, a string or a list of
	// strings; a dotted name reads a nested object ("realm_access.roles").
	RoleClaim string
	// UsernameClaim names the claim that becomes the user's name.
	UsernameClaim string
	// Roles maps a claim value to a role. A login whose claim has no
	// mapped value is refused.
	Roles map[string]auth.Role
	// Pipelines limits the grant of a mapped claim value to pipelines
	// matching these globs; a value absent here grants every pipeline.
	Pipelines map[string][]string
	// AfterLogin is where the browser goes once logged in (default "/").
	AfterLogin string
}

// Enabled reports whether OIDC login is configured.
func (c OIDCConfig) Enabled() bool { return c.Issuer != "" }

func (c *Config) withDefaults() {
	if c.SessionLifetime <= 0 {
		c.SessionLifetime = DefaultSessionLifetime
	}
	if c.MaxFailures <= 0 {
		c.MaxFailures = DefaultMaxFailures
	}
	if c.FailureWindow <= 0 {
		c.FailureWindow = DefaultFailureWindow
	}
	if c.PasswordCost == 0 {
		c.PasswordCost = DefaultPasswordCost
	}
	if c.Replicas < 1 {
		c.Replicas = 1
	}
	if c.OIDC.RoleClaim == "" {
		c.OIDC.RoleClaim = DefaultRoleClaim
	}
	if c.OIDC.UsernameClaim == "" {
		c.OIDC.UsernameClaim = DefaultUsernameClaim
	}
	if c.OIDC.Scopes == nil {
		c.OIDC.Scopes = []string{"profile", "email"}
	}
	if c.OIDC.AfterLogin == "" {
		c.OIDC.AfterLogin = "/"
	}
}

// Validate reports what is wrong with the configuration, defaults applied.
func (c Config) Validate() error {
	c.withDefaults()
	var errs []error
	if c.SessionLifetime > topology.SessionsTTL {
		errs = append(errs, fmt.Errorf("session lifetime %s: at most %s (the sessions bucket's time to live)", c.SessionLifetime, topology.SessionsTTL))
	}
	if c.PasswordCost < bcrypt.MinCost || c.PasswordCost > bcrypt.MaxCost {
		errs = append(errs, fmt.Errorf("password cost %d: want %d to %d", c.PasswordCost, bcrypt.MinCost, bcrypt.MaxCost))
	}
	if o := c.OIDC; o.Enabled() {
		for flag, v := range map[string]string{"--oidc-client-id": o.ClientID, "--oidc-client-secret-file": o.ClientSecretFile, "--oidc-redirect-url": o.RedirectURL} {
			if v == "" {
				errs = append(errs, fmt.Errorf("--oidc-issuer needs %s", flag))
			}
		}
		if len(o.Roles) == 0 {
			errs = append(errs, errors.New("--oidc-issuer needs --oidc-roles: without a mapping nobody could log in"))
		}
		for v, globs := range o.Pipelines {
			if _, ok := o.Roles[v]; !ok {
				errs = append(errs, fmt.Errorf("--oidc-pipelines %s: the value has no role in --oidc-roles", v))
			}
			if err := auth.ValidatePipelineGlobs(globs); err != nil {
				errs = append(errs, fmt.Errorf("--oidc-pipelines %s: %w", v, err))
			}
		}
		if !strings.HasPrefix(o.AfterLogin, "/") || strings.HasPrefix(o.AfterLogin, "//") {
			errs = append(errs, fmt.Errorf("after-login path %q: want a path on this server", o.AfterLogin))
		}
	}
	return errors.Join(errs...)
}

// RegisterFlags registers the login flags on fs and returns the Config they
// fill when fs is parsed: --session-lifetime, --secure-cookies and the
// --oidc-* flags.
func RegisterFlags(fs *flag.FlagSet) *Config {
	c := &Config{OIDC: OIDCConfig{Roles: map[string]auth.Role{}, Pipelines: map[string][]string{}}}
	fs.DurationVar(&c.SessionLifetime, "session-lifetime", DefaultSessionLifetime, "how long a login session lasts")
	fs.BoolVar(&c.SecureCookies, "secure-cookies", false, "mark session cookies Secure even on plain-HTTP requests (behind a TLS proxy)")
	fs.StringVar(&c.OIDC.Issuer, "oidc-issuer", "", "OpenID Connect issuer URL (enables OIDC login)")
	fs.StringVar(&c.OIDC.ClientID, "oidc-client-id", "", "OpenID Connect client id")
	fs.StringVar(&c.OIDC.ClientSecretFile, "oidc-client-secret-file", "", "file holding the OpenID Connect client secret")
	fs.StringVar(&c.OIDC.RedirectURL, "oidc-redirect-url", "", "this server's OIDC callback URL, https://HOST/auth/oidc/callback")
	fs.StringVar(&c.OIDC.RoleClaim, "oidc-role-claim", DefaultRoleClaim, "ID token claim mapped to a role (dotted for nested claims)")
	fs.StringVar(&c.OIDC.UsernameClaim, "oidc-username-claim", DefaultUsernameClaim, "ID token claim that names the user")
	fs.Var((*listFlag)(&c.OIDC.Scopes), "oidc-scopes", "scopes requested besides openid, comma-separated (default profile,email)")
	fs.Var((*rolesFlag)(&c.OIDC.Roles), "oidc-roles", "claim values mapped to roles: ROLE=VALUE,... e.g. admin=ansflow-admins,operator=ci")
	fs.Var((*pipelinesFlag)(&c.OIDC.Pipelines), "oidc-pipelines", "pipeline globs of a mapped claim value: VALUE=GLOB|GLOB,...")
	return c
}

// listFlag is a comma-separated list.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error {
	*l = nil
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

// rolesFlag is ROLE=VALUE,... into a value → role map.
type rolesFlag map[string]auth.Role

func (f *rolesFlag) String() string {
	if f == nil || *f == nil {
		return ""
	}
	var parts []string
	for v, r := range *f {
		parts = append(parts, string(r)+"="+v)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func (f *rolesFlag) Set(s string) error {
	if *f == nil {
		*f = map[string]auth.Role{}
	}
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		role, value, ok := strings.Cut(p, "=")
		if !ok || value == "" {
			return fmt.Errorf("%q: want ROLE=VALUE", p)
		}
		r, err := auth.ParseRole(role)
		if err != nil {
			return err
		}
		if prev, dup := (*f)[value]; dup && prev != r {
			return fmt.Errorf("%q: value %q is already mapped to %s", p, value, prev)
		}
		(*f)[value] = r
	}
	return nil
}

// pipelinesFlag is VALUE=GLOB|GLOB,... into a value → globs map.
type pipelinesFlag map[string][]string

func (f *pipelinesFlag) String() string {
	if f == nil || *f == nil {
		return ""
	}
	var parts []string
	for v, g := range *f {
		parts = append(parts, v+"="+strings.Join(g, "|"))
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func (f *pipelinesFlag) Set(s string) error {
	if *f == nil {
		*f = map[string][]string{}
	}
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		value, globs, ok := strings.Cut(p, "=")
		if !ok || value == "" || globs == "" {
			return fmt.Errorf("%q: want VALUE=GLOB|GLOB", p)
		}
		gs := strings.Split(globs, "|")
		if err := auth.ValidatePipelineGlobs(gs); err != nil {
			return fmt.Errorf("%q: %w", p, err)
		}
		(*f)[value] = append((*f)[value], gs...)
	}
	return nil
}

// mapClaim is the role mapping, a pure function: the highest role any of
// values maps to, and the pipelines it covers — every pipeline if a value
// mapped to that role has no globs, else the union of their globs. ok is
// false when no value is mapped (the login is refused).
func mapClaim(values []string, roles map[string]auth.Role, pipelines map[string][]string) (role auth.Role, globs []string, ok bool) {
	all := false
	for _, v := range values {
		r, mapped := roles[v]
		if !mapped {
			continue
		}
		switch {
		case !ok || (r.Allows(role) && r != role):
			role, ok, all, globs = r, true, false, nil
		case r != role:
			continue // lower than the role already found
		}
		if g := pipelines[v]; len(g) == 0 {
			all = true
		} else {
			globs = append(globs, g...)
		}
	}
	if !ok || all {
		return role, nil, ok
	}
	sort.Strings(globs)
	return role, compactStrings(globs), true
}

func compactStrings(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// claimValues reads the claim named name (dotted for nested objects) as a
// list of strings: a string is one value, a list keeps its strings.
func claimValues(claims map[string]any, name string) []string {
	var v any = claims
	for part := range strings.SplitSeq(name, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		if v, ok = m[part]; !ok {
			// A claim whose own name has dots ("https://x.io/groups").
			if whole, ok := claims[name]; ok {
				v = whole
				break
			}
			return nil
		}
	}
	switch t := v.(type) {
	case string:
		return []string{t}
	case []any:
		var out []string
		for _, e := range t {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}
