package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/registry"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/spec/steps"
)

// namedRef parses a step's image and tag: tag, when set, replaces a tag in
// image; no tag at all means "latest".
func namedRef(img, tag string) (reference.Named, error) {
	if img == "" {
		return nil, fmt.Errorf("%w: the step names no docker_image", ErrInvalidStep)
	}
	named, err := reference.ParseNormalizedNamed(img)
	if err != nil {
		return nil, fmt.Errorf("%w: docker_image %q: %w", ErrInvalidStep, img, err)
	}
	if tag != "" {
		if named, err = reference.WithTag(reference.TrimNamed(named), tag); err != nil {
			return nil, fmt.Errorf("%w: docker_tag %q: %w", ErrInvalidStep, tag, err)
		}
	}
	return reference.TagNameOnly(named), nil
}

// registryTarget is the registry a push or pull names.
type registryTarget struct {
	name   string // catalogue name, or the host when there is none
	id     string
	url    string
	host   string // host[:port]
	prefix string // repository path prefix under host, e.g. "team"
	// ignored is a docker_config.registry_url on another host than the
	// catalogue entry's URL, which wins.
	ignored string
}

// note tells the step's log about an ignored registry_url.
func (r *registryTarget) note(t stepIO) {
	if r != nil && r.ignored != "" {
		fmt.Fprintf(t.Stdout(), "docker_config.registry_url %s is ignored: registry %s has the URL %s\n", r.ignored, firstNonEmpty(r.name, r.id), r.url)
	}
}

func (r *registryTarget) String() string {
	if r.name != "" && r.name != r.host {
		return fmt.Sprintf("%s (%s)", r.name, r.host)
	}
	return r.host
}

// targetRegistry returns the registry named by the step's docker_registry
// (catalogue entry) or else its docker_config.registry_url, or nil when it
// names none. A catalogue entry without URL is resolved through the
// runner's credentials.
func (e *Engine) targetRegistry(req *event.StepRequested, u string, creds Credentials) (*registryTarget, error) {
	t := &registryTarget{}
	if req.Registry != nil {
		t.name, t.id, t.url = req.Registry.Name, req.Registry.ID, req.Registry.URL
	}
	if t.url != "" && u != "" && registryHost(u) != registryHost(t.url) {
		// the catalogue's URL wins, as it always did: the registry's
		// credential goes to its own host, never to registry_url's
		t.ignored = u
	}
	if t.url == "" {
		t.url = u
	}
	if t.url == "" && (t.name != "" || t.id != "") {
		if c, ok := creds.Lookup(t.name, t.id); ok && c.Server != "" {
			t.url = c.Server
		} else {
			return nil, fmt.Errorf("%w: registry %q has no URL", ErrInvalidStep, firstNonEmpty(t.name, t.id))
		}
	}
	if t.url == "" {
		return nil, nil
	}
	rest := t.url
	if i := strings.Index(rest, "://"); i >= 0 {
		rest = rest[i+3:]
	}
	host, prefix, _ := strings.Cut(strings.Trim(rest, "/"), "/")
	t.host, t.prefix = strings.ToLower(host), strings.Trim(prefix, "/")
	if t.host == "" {
		return nil, fmt.Errorf("%w: registry URL %q has no host", ErrInvalidStep, t.url)
	}
	if t.name == "" {
		t.name = t.host
	}
	return t, nil
}

// qualify places ref in registry t: "myapp:1.0" in 127.0.0.1:5000 becomes
// "127.0.0.1:5000/myapp:1.0"; a reference already in t is kept; repo, when
// set, replaces the repository path.
func qualify(ref reference.Named, t *registryTarget, repo string) (reference.Named, error) {
	path := reference.Path(ref)
	domain := reference.Domain(ref)
	switch {
	case repo != "":
		path = repo
	case domain == t.host:
	default:
		if domain == "docker.io" {
			path = strings.TrimPrefix(path, "library/")
		}
		if t.prefix != "" {
			path = t.prefix + "/" + path
		}
	}
	named, err := reference.ParseNormalizedNamed(t.host + "/" + path)
	if err != nil {
		return nil, fmt.Errorf("%w: image %s in registry %s: %w", ErrInvalidStep, path, t.host, err)
	}
	if tagged, ok := ref.(reference.Tagged); ok {
		return reference.WithTag(named, tagged.Tag())
	}
	return reference.TagNameOnly(named), nil
}

// serverAddress is the address Docker keys a registry's credentials by.
func serverAddress(host string) string {
	if host == "docker.io" {
		return "https://index.docker.io/v1/"
	}
	return host
}

// registryAuth returns the encoded X-Registry-Auth for host, from the
// step's credential (creds) for the registry named by keys (catalogue name, id,
// URL) or for host itself, registering the password with the step's masker.
// ok reports whether a credential was found; without one the auth is
// anonymous. A credential the keys find that was made for another host is
// an error wrapping [ErrCredentialHost]: it is not sent.
func (e *Engine) registryAuth(t stepIO, creds Credentials, host string, keys ...string) (auth string, ok bool, err error) {
	cred, ok, err := creds.For(host, keys...)
	if err != nil {
		return "", false, err
	}
	var ac registry.AuthConfig
	if ok {
		t.Mask(cred.Password)
		ac = registry.AuthConfig{Username: cred.Username, Password: cred.Password, ServerAddress: serverAddress(host)}
	}
	auth, err = registry.EncodeAuthConfig(ac)
	if err != nil {
		return "", ok, fmt.Errorf("encode registry auth for %s", host) // never wrap: it could quote the config
	}
	return auth, ok, nil
}

// push executes docker_push: tag the step's image into the registry and push
// it with the runner's credentials.
func (e *Engine) push(ctx context.Context, req *event.StepRequested, t stepIO, creds Credentials) (_ map[string]string, pushErr error) {
	ref, err := namedRef(req.Image, req.Tag)
	if err != nil {
		return nil, fmt.Errorf("docker_push: %w", err)
	}
	local := reference.FamiliarString(ref)
	c, err := decodeConfig[steps.DockerPushConfig](req.DockerConfig)
	if err != nil {
		return nil, fmt.Errorf("docker_push %s: %w", local, err)
	}
	reg, err := e.targetRegistry(req, c.RegistryURL, creds)
	if err != nil {
		return nil, fmt.Errorf("docker_push %s: %w", local, err)
	}
	if reg == nil {
		if reference.Domain(ref) == "docker.io" {
			return nil, fmt.Errorf("docker_push %s: %w: name a registry with docker_registry or docker_config.registry_url", local, ErrInvalidStep)
		}
		reg = &registryTarget{host: reference.Domain(ref), name: reference.Domain(ref)}
	}
	reg.note(t)
	target, err := qualify(ref, reg, c.Repository)
	if err != nil {
		return nil, fmt.Errorf("docker_push %s: %w", local, err)
	}
	remote := reference.FamiliarString(target)
	auth, haveCreds, err := e.registryAuth(t, creds, reg.host, reg.name, reg.id, reg.url)
	if err != nil {
		return nil, fmt.Errorf("docker_push %s: %w", local, err)
	}
	if remote != local {
		if _, err := e.cli.ImageInspect(ctx, remote); cerrdefs.IsNotFound(err) {
			// a tag made only for this push goes again if the push fails
			defer func() {
				if pushErr != nil {
					cctx, cancel := e.cleanupContext(ctx)
					defer cancel()
					e.cli.ImageRemove(cctx, remote, image.RemoveOptions{})
				}
			}()
		}
		if err := e.cli.ImageTag(ctx, local, remote); err != nil {
			if cerrdefs.IsNotFound(err) {
				return nil, fmt.Errorf("docker_push: image %s is not on this runner's Docker Engine: build or pull it first: %w", local, err)
			}
			return nil, fmt.Errorf("docker_push: tag %s as %s: %w", local, remote, err)
		}
	}
	fmt.Fprintf(t.Stdout(), "Pushing %s to registry %s\n", remote, reg)
	rc, err := e.cli.ImagePush(ctx, remote, image.PushOptions{RegistryAuth: auth})
	if err != nil {
		if ctx.Err() != nil {
			return nil, stopped(ctx, "docker_push "+remote)
		}
		return nil, fmt.Errorf("docker_push %s: %w", remote, registryErr(err, reg.String(), haveCreds))
	}
	defer rc.Close()
	var digest string
	err = readProgress(rc, t.Stdout(), func(raw json.RawMessage) {
		var r struct{ Digest string }
		if json.Unmarshal(raw, &r) == nil && r.Digest != "" {
			digest = r.Digest
		}
	})
	if ctx.Err() != nil {
		return nil, stopped(ctx, "docker_push "+remote)
	}
	if err != nil {
		return nil, fmt.Errorf("docker_push %s: %w", remote, registryErr(err, reg.String(), haveCreds))
	}
	return map[string]string{"image": remote, "digest": digest}, nil
}

// pull executes docker_pull, qualifying the image with the step's registry
// when it names one.
func (e *Engine) pull(ctx context.Context, req *event.StepRequested, t stepIO, creds Credentials) (map[string]string, error) {
	ref, err := namedRef(req.Image, req.Tag)
	if err != nil {
		return nil, fmt.Errorf("docker_pull: %w", err)
	}
	c, err := decodeConfig[steps.DockerPullConfig](req.DockerConfig)
	if err != nil {
		return nil, fmt.Errorf("docker_pull %s: %w", reference.FamiliarString(ref), err)
	}
	reg, err := e.targetRegistry(req, c.RegistryURL, creds)
	if err != nil {
		return nil, fmt.Errorf("docker_pull %s: %w", reference.FamiliarString(ref), err)
	}
	keys := []string{}
	reg.note(t)
	if reg != nil {
		if ref, err = qualify(ref, reg, c.Repository); err != nil {
			return nil, fmt.Errorf("docker_pull: %w", err)
		}
		keys = append(keys, reg.name, reg.id, reg.url)
	}
	name := reference.FamiliarString(ref)
	digest, err := e.pullImage(ctx, ref, c.Platform, t, creds, keys...)
	if err != nil {
		return nil, err
	}
	img, err := e.cli.ImageInspect(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("docker_pull %s: inspect the pulled image: %w", name, err)
	}
	if digest == "" {
		repo := reference.FamiliarName(ref) + "@"
		for _, d := range img.RepoDigests {
			if strings.HasPrefix(d, repo) {
				digest = strings.TrimPrefix(d, repo)
			}
		}
	}
	return map[string]string{"image": name, "image_id": img.ID, "digest": digest}, nil
}

// pullImage pulls ref with the runner's credentials for its registry (found
// by keys or its host) and returns the manifest digest the daemon reports.
func (e *Engine) pullImage(ctx context.Context, ref reference.Named, platform string, t stepIO, creds Credentials, keys ...string) (string, error) {
	name := reference.FamiliarString(ref)
	host := reference.Domain(ref)
	regName := host
	if len(keys) > 0 && keys[0] != "" && keys[0] != host {
		regName = fmt.Sprintf("%s (%s)", keys[0], host)
	}
	auth, haveCreds, err := e.registryAuth(t, creds, host, keys...)
	if err != nil {
		return "", fmt.Errorf("docker_pull %s: %w", name, err)
	}
	fmt.Fprintf(t.Stdout(), "Pulling %s\n", name)
	rc, err := e.cli.ImagePull(ctx, name, image.PullOptions{RegistryAuth: auth, Platform: platform})
	if err != nil {
		if ctx.Err() != nil {
			return "", stopped(ctx, "docker_pull "+name)
		}
		return "", fmt.Errorf("docker_pull %s: %w", name, registryErr(err, regName, haveCreds))
	}
	defer rc.Close()
	var digest string
	err = readProgress(rc, &digestSniffer{w: t.Stdout(), digest: &digest}, nil)
	if ctx.Err() != nil {
		return "", stopped(ctx, "docker_pull "+name)
	}
	if err != nil {
		return "", fmt.Errorf("docker_pull %s: %w", name, registryErr(err, regName, haveCreds))
	}
	return digest, nil
}

// digestSniffer passes pull output through and remembers the "Digest:
// sha256:..." status line.
type digestSniffer struct {
	w      io.Writer
	digest *string
}

func (d *digestSniffer) Write(p []byte) (int, error) {
	if s, ok := strings.CutPrefix(string(p), "Digest: "); ok {
		*d.digest = strings.TrimSpace(s)
	}
	return d.w.Write(p)
}

// registryErr classifies an error from a registry operation. Its message
// comes from the daemon and the registry and holds no password.
func registryErr(err error, reg string, haveCreds bool) error {
	msg := strings.ToLower(err.Error())
	has := func(words ...string) bool {
		for _, w := range words {
			if strings.Contains(msg, w) {
				return true
			}
		}
		return false
	}
	forReg, atReg := "", ""
	if reg != "" {
		forReg, atReg = " for registry "+reg, ": "+reg
	}
	switch {
	case cerrdefs.IsUnauthorized(err) || has("unauthorized", "authentication required", "no basic auth credentials",
		"requested access to the resource is denied", "401 unauthorized", "incorrect username or password"):
		if !haveCreds {
			return fmt.Errorf("%w%s: the runner holds no credentials for it: %w", ErrAuthFailed, forReg, err)
		}
		return fmt.Errorf("%w%s: %w", ErrAuthFailed, forReg, err)
	case has("connection refused", "no such host", "i/o timeout", "network is unreachable", "no route to host",
		"server gave http response to https client", "tls: ", "x509: ", "connection reset by peer", "context deadline exceeded"):
		return fmt.Errorf("%w%s: %w", ErrRegistryUnreachable, atReg, err)
	}
	return err
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}
