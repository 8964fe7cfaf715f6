package engine

import (
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/ansflow/ansflow/pkg/event"
)

// Credential is a username and password for one registry. Its String and
// GoString methods never reveal the password, so a Credential that slips
// into a log line or an error message leaks nothing.
type Credential struct {
	// Server is the registry's host[:port], when known. An entry keyed by a
	// catalogue name sets it so that the credential is also found by host
	// (for example for base images of a build).
	Server string
	// Username and Password authenticate the runner to the registry.
	Username string
	Password string
}

// String returns "username@server" without the password.
func (c Credential) String() string {
	if c.Server == "" {
		return c.Username
	}
	return c.Username + "@" + c.Server
}

// GoString is String, so %#v does not print the password either.
func (c Credential) GoString() string { return "engine.Credential{" + c.String() + "}" }

// Credentials maps a registry's catalogue name or its host[:port] to the
// credential the runner holds for it. Step requests never carry
// credentials: they name a registry, and the runner looks it up here.
type Credentials map[string]Credential

// Lookup returns the credential for a registry known by any of keys (a
// catalogue name or id, a host[:port], or a URL), trying them in order. A key
// matches an entry by the entry's key or, for hosts, by its Server.
func (c Credentials) Lookup(keys ...string) (Credential, bool) {
	for _, k := range keys {
		if k == "" {
			continue
		}
		if cred, ok := c[k]; ok {
			return cred, true
		}
		host := registryHost(k)
		if cred, ok := c[host]; ok {
			return cred, true
		}
		for _, name := range c.sortedKeys() {
			if cred := c[name]; cred.Server != "" && registryHost(cred.Server) == host {
				return cred, true
			}
		}
	}
	return Credential{}, false
}

// ErrCredentialHost reports that the runner holds a credential for the
// registry a step names, but for another host (or for no known host): the
// engine sends it nowhere, and the step fails before contacting the
// registry.
var ErrCredentialHost = errors.New("registry credential bound to another host")

// host returns the registry host[:port] the credential stored under key was
// made for: its Server, or the key itself when the key is a host. It is ""
// when neither says.
func (c Credential) host(key string) string {
	if c.Server != "" {
		return registryHost(c.Server)
	}
	if looksLikeHost(key) {
		return registryHost(key)
	}
	return ""
}

// looksLikeHost reports whether a credentials key is a registry host rather
// than a catalogue name.
func looksLikeHost(key string) bool {
	return strings.ContainsAny(key, ".:/") || key == "localhost"
}

// For returns the credential to send to host (host[:port]) for a registry
// the step names by names (its catalogue name, id or URL; empty ones are
// skipped), or by host alone. A credential is only ever returned for the
// host it was made for: when a name finds one made for another host, or for
// no known host, For returns an error wrapping [ErrCredentialHost] and the
// caller sends nothing. ok is false when the runner holds no credential for
// the registry (the request is then anonymous).
func (c Credentials) For(host string, names ...string) (cred Credential, ok bool, err error) {
	host = registryHost(host)
	for _, n := range names {
		if n == "" {
			continue
		}
		entry, found := c[n]
		if !found {
			continue
		}
		switch h := entry.host(n); {
		case h == "":
			return Credential{}, false, fmt.Errorf("%w: the runner's credential for registry %q names no server, so it is sent to none (set server: to the registry's host)", ErrCredentialHost, n)
		case h != host:
			return Credential{}, false, fmt.Errorf("%w: the runner's credential for registry %q is for %s, not %s: nothing was sent", ErrCredentialHost, n, h, host)
		}
		return entry, true, nil
	}
	if entry, found := c[host]; found && entry.host(host) == host {
		return entry, true, nil
	}
	for _, k := range c.sortedKeys() {
		if entry := c[k]; entry.Server != "" && registryHost(entry.Server) == host {
			return entry, true, nil
		}
	}
	return Credential{}, false, nil
}

// stepCredentials returns the credentials a step may use: the runner's,
// and, when the step's registry entry keeps its credential in the secret
// store, that one under the registry's name and id, bound to the entry's
// URL host (it replaces a runner credential of the same name for this
// step only).
func (e *Engine) stepCredentials(req *event.StepRequested, t stepIO) (Credentials, error) {
	password, ok := t.RegistryPassword()
	if req.Registry == nil || !ok {
		return e.cfg.Credentials, nil
	}
	reg := req.Registry
	host := registryHost(reg.URL)
	if host == "" || reg.Username == "" {
		return nil, fmt.Errorf("%w: registry %q: a credential from the secret store needs the entry's url and username", ErrInvalidStep, firstNonEmpty(reg.Name, reg.ID))
	}
	out := make(Credentials, len(e.cfg.Credentials)+2)
	for k, v := range e.cfg.Credentials {
		out[k] = v
	}
	c := Credential{Server: host, Username: reg.Username, Password: password}
	for _, k := range []string{reg.Name, reg.ID} {
		if k != "" {
			out[k] = c
		}
	}
	return out, nil
}

// hosts returns each host the runner holds a credential for, with it.
func (c Credentials) hosts() map[string]Credential {
	out := map[string]Credential{}
	for _, k := range c.sortedKeys() {
		if h := c[k].host(k); h != "" {
			if _, dup := out[h]; !dup {
				out[h] = c[k]
			}
		}
	}
	return out
}

func (c Credentials) sortedKeys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// registryHost reduces a registry URL or host to host[:port]:
// "https://reg.example.com/v2/" becomes "reg.example.com"; Docker Hub's
// legacy index address becomes "docker.io".
func registryHost(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.Index(s, "://"); i >= 0 {
		s = s[i+3:]
	}
	if i := strings.IndexByte(s, '/'); i >= 0 {
		s = s[:i]
	}
	s = strings.ToLower(s)
	switch s {
	case "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com":
		return "docker.io"
	}
	return s
}

// credentialsFile is the runner's credentials file. The same decoder also
// reads a Docker config.json, whose top-level "auths" it shares.
type credentialsFile struct {
	Registries   map[string]registryEntry `yaml:"registries"`
	DockerConfig string                   `yaml:"docker_config"`
	Auths        map[string]dockerAuth    `yaml:"auths"`
}

type registryEntry struct {
	Server       string `yaml:"server"`
	Username     string `yaml:"username"`
	Password     string `yaml:"password"`
	PasswordEnv  string `yaml:"password_env"`
	PasswordFile string `yaml:"password_file"`
}

type dockerAuth struct {
	Auth     string `yaml:"auth"`
	Username string `yaml:"username"`
	Password string `yaml:"password"`
}

// LoadCredentials reads the registry credentials the runner holds from path,
// a YAML or JSON file of this form:
//
//	registries:
//	  local:                        # catalogue name, or host[:port]
//	    server: 127.0.0.1:5000      # optional: also match this host
//	    username: ci
//	    password_env: LOCAL_REGISTRY_PASSWORD   # or password: / password_file:
//	  registry.example.com:
//	    username: robot
//	    password_file: /run/secrets/example     # trailing newlines dropped
//	docker_config: /root/.docker/config.json    # optional: add its "auths"
//
// An entry keyed by a catalogue name must set server: the credential is
// only ever sent to that host ([Credentials.For]). Exactly one of password,
// password_env and password_file is set per entry;
// relative paths are relative to path's directory. path may also be a Docker
// config.json itself: its "auths" entries (base64 "auth" or username and
// password) are keyed by registry host. Credential helpers (credsStore,
// credHelpers) are not consulted.
//
// Errors name the file, the entry and the variable or file involved, never a
// password.
func LoadCredentials(path string) (Credentials, error) {
	creds := Credentials{}
	if err := creds.load(path, true); err != nil {
		return nil, err
	}
	return creds, nil
}

func (c Credentials) load(path string, allowInclude bool) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read credentials: %w", err)
	}
	var f credentialsFile
	if err := yaml.Unmarshal(b, &f); err != nil {
		// the yaml error quotes the offending line, which may hold a password
		return fmt.Errorf("credentials file %s is not valid YAML or JSON", path)
	}
	base := filepath.Dir(path)
	rel := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(base, p)
	}
	for host, a := range f.Auths {
		cred, err := a.credential(host)
		if err != nil {
			return fmt.Errorf("credentials file %s: auths entry %q: %w", path, host, err)
		}
		if cred.Username == "" && cred.Password == "" {
			continue // kept by a credential helper
		}
		c[registryHost(host)] = cred
	}
	for name, e := range f.Registries {
		cred, err := e.credential(rel)
		if err != nil {
			return fmt.Errorf("credentials file %s: registry %q: %w", path, name, err)
		}
		if cred.host(name) == "" {
			return fmt.Errorf("credentials file %s: registry %q: no server: a credential is only sent to the host it was made for, so set server: to the registry's host[:port]", path, name)
		}
		c[name] = cred
	}
	if f.DockerConfig != "" {
		if !allowInclude {
			return fmt.Errorf("credentials file %s: docker_config is only read from the runner's credentials file", path)
		}
		if err := c.load(rel(f.DockerConfig), false); err != nil {
			return fmt.Errorf("credentials file %s: docker_config: %w", path, err)
		}
	}
	return nil
}

func (a dockerAuth) credential(host string) (Credential, error) {
	cred := Credential{Server: registryHost(host), Username: a.Username, Password: a.Password}
	if a.Auth != "" {
		raw, err := base64.StdEncoding.DecodeString(a.Auth)
		if err != nil {
			return cred, errors.New(`"auth" is not base64`)
		}
		user, pass, ok := strings.Cut(string(raw), ":")
		if !ok {
			return cred, errors.New(`"auth" is not base64 of user:password`)
		}
		cred.Username, cred.Password = user, pass
	}
	return cred, nil
}

func (e registryEntry) credential(rel func(string) string) (Credential, error) {
	cred := Credential{Server: e.Server, Username: e.Username}
	if cred.Server != "" {
		cred.Server = registryHost(cred.Server)
	}
	if e.Username == "" {
		return cred, errors.New("no username")
	}
	set := 0
	for _, v := range []string{e.Password, e.PasswordEnv, e.PasswordFile} {
		if v != "" {
			set++
		}
	}
	if set != 1 {
		return cred, errors.New("set exactly one of password, password_env and password_file")
	}
	switch {
	case e.Password != "":
		cred.Password = e.Password
	case e.PasswordEnv != "":
		v, ok := os.LookupEnv(e.PasswordEnv)
		if !ok || v == "" {
			return cred, fmt.Errorf("environment variable %s (password_env) is not set", e.PasswordEnv)
		}
		cred.Password = v
	default:
		b, err := os.ReadFile(rel(e.PasswordFile))
		if err != nil {
			return cred, fmt.Errorf("password_file: %w", err)
		}
		cred.Password = strings.TrimRight(string(b), "\r\n")
		if cred.Password == "" {
			return cred, fmt.Errorf("password_file %s is empty", rel(e.PasswordFile))
		}
	}
	return cred, nil
}
