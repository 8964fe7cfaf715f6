// Package policy is the Docker runner's policy: what a step may ask of the
// runner's host. It is owned by whoever operates the runner, never by the
// pipeline: a pipeline that may be applied by any operator must not be able
// to mount the host's filesystem or its Docker socket, run privileged, or
// join the host's network, because each of these hands the runner's host to
// the step.
//
// The zero [Policy] is strict: it refuses every host bind mount, the Docker
// socket, privileged containers and host (or another container's) network
// namespaces. The operator relaxes it explicitly with a policy file
// ([Load]) or flags ([RegisterFlags]); [Policy.Relaxations] says what was
// relaxed, for the runner to state at start.
//
// [Policy.Check] is a pure decision over a [Step]: the engine describes what
// the step asks for, and Check returns a [*Denied] naming the setting that
// would allow it. Running as root inside the container is not restricted,
// as in GitLab Runner and Woodpecker: the danger is host access, which the
// policy controls.
package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// DefaultDockerSockets are the host paths of the Docker socket on common
// installations; [Policy.Check] treats a bind mount of any of them, or of a
// directory holding one, as a mount of the Docker socket.
var DefaultDockerSockets = []string{"/var/run/docker.sock", "/run/docker.sock"}

// Policy is what the runner's operator allows steps to ask of the host. The
// zero value refuses everything a step could use to reach the host.
type Policy struct {
	// AllowedHostPaths are absolute host paths that docker_run volumes may
	// bind-mount: the path itself or anything under it.
	AllowedHostPaths []string `yaml:"allowed_host_paths"`
	// AllowDockerSocket lets a step mount the Docker socket (or a host
	// directory holding it); the path must also be in AllowedHostPaths.
	AllowDockerSocket bool `yaml:"allow_docker_socket"`
	// AllowPrivileged lets a docker_run step set privileged: true.
	AllowPrivileged bool `yaml:"allow_privileged"`
	// AllowHostNetwork lets a step use network: host, or join another
	// container's network namespace (network: container:NAME).
	AllowHostNetwork bool `yaml:"allow_host_network"`
	// AllowedImages, when set, limits every relaxation above to steps whose
	// image matches one of these globs (path.Match syntax, matched against
	// the image reference with and without its tag).
	AllowedImages []string `yaml:"allowed_images"`
	// TrustedPipelines, when set, limits every relaxation above to steps of
	// pipelines whose name matches one of these globs.
	TrustedPipelines []string `yaml:"trusted_pipelines"`
	// DockerSockets are the host paths of the Docker socket; empty means
	// [DefaultDockerSockets]. The engine adds the socket it talks to.
	DockerSockets []string `yaml:"docker_sockets"`
}

// Validate checks p: host paths and sockets must be absolute, globs must
// parse. It cleans the paths it keeps.
func (p *Policy) Validate() error {
	for i, h := range p.AllowedHostPaths {
		if !filepath.IsAbs(h) {
			return fmt.Errorf("allowed_host_paths: %q is not an absolute path", h)
		}
		p.AllowedHostPaths[i] = filepath.Clean(h)
	}
	for i, s := range p.DockerSockets {
		if !filepath.IsAbs(s) {
			return fmt.Errorf("docker_sockets: %q is not an absolute path", s)
		}
		p.DockerSockets[i] = filepath.Clean(s)
	}
	for field, globs := range map[string][]string{"allowed_images": p.AllowedImages, "trusted_pipelines": p.TrustedPipelines} {
		for _, g := range globs {
			if _, err := path.Match(g, ""); err != nil || g == "" {
				return fmt.Errorf("%s: %q is not a valid glob pattern", field, g)
			}
		}
	}
	return nil
}

// Load reads a policy file (YAML; unknown keys are errors) and validates it.
func Load(file string) (Policy, error) {
	var p Policy
	b, err := os.ReadFile(file)
	if err != nil {
		return p, fmt.Errorf("runner policy: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&p); err != nil && !errors.Is(err, io.EOF) {
		return p, fmt.Errorf("runner policy %s: %w", file, err)
	}
	if err := p.Validate(); err != nil {
		return p, fmt.Errorf("runner policy %s: %w", file, err)
	}
	return p, nil
}

// Relaxations lists, one sentence each, what p allows beyond the strict
// default, for the runner to log at start. It is empty for a strict policy.
func (p *Policy) Relaxations() []string {
	var out []string
	for _, h := range p.AllowedHostPaths {
		out = append(out, fmt.Sprintf("steps may bind-mount host path %s and anything under it", h))
	}
	if p.AllowDockerSocket {
		out = append(out, "steps may mount the Docker socket (full control of the runner's Docker Engine and host)")
	}
	if p.AllowPrivileged {
		out = append(out, "steps may run privileged containers (full access to the runner's host)")
	}
	if p.AllowHostNetwork {
		out = append(out, "steps may use the host's network, or another container's")
	}
	if len(out) > 0 && len(p.TrustedPipelines) > 0 {
		out = append(out, "these relaxations apply only to pipelines matching "+strings.Join(p.TrustedPipelines, ", "))
	}
	if len(out) > 0 && len(p.AllowedImages) > 0 {
		out = append(out, "these relaxations apply only to images matching "+strings.Join(p.AllowedImages, ", "))
	}
	return out
}

// HostPath is a bind mount's host path as the step gave it and, when it
// differs, with its symbolic links resolved: the Docker Engine follows them,
// so both must be allowed. A relative Given is a path of the run's source
// (always allowed) whose Resolved leaves the source.
type HostPath struct {
	Given    string
	Resolved string
}

// Step is what a step asks of the host, as far as the policy decides.
type Step struct {
	// Type is the step type, for messages.
	Type string
	// Pipeline and Image are matched against TrustedPipelines and
	// AllowedImages.
	Pipeline string
	Image    string
	// HostPaths are the step's bind mounts from outside the run's source.
	HostPaths []HostPath
	// Privileged is docker_run's privileged: true.
	Privileged bool
	// Network is the network mode the step asks for.
	Network string
	// Unsupported lists docker_config keys that would give the container
	// host access the engine never grants on its own (cap_add, devices,
	// pid, ipc, ...).
	Unsupported []string
}

// ErrDenied is the sentinel every [*Denied] matches with errors.Is.
var ErrDenied = errors.New("refused by the runner's policy")

// Denied is a step refused by the policy. Its message names the setting of
// the step and the runner setting (flag and policy file field) that would
// allow it.
type Denied struct {
	// Setting is the step's setting, such as "volumes" or "privileged".
	Setting string
	// What describes what was asked, such as `host path "/"`.
	What string
	// Flag and Field are the runner flag and policy file field that would
	// allow it; Hint replaces them when no single setting does.
	Flag, Field, Hint string
	// Scope is set when the policy allows this, but not for this step's
	// pipeline or image.
	Scope string
}

func (d *Denied) Error() string {
	switch {
	case d.Scope != "":
		return fmt.Sprintf("%s: %s is allowed by this runner's policy only %s", d.Setting, d.What, d.Scope)
	case d.Hint != "":
		return fmt.Sprintf("%s: %s is not allowed by this runner's policy (%s)", d.Setting, d.What, d.Hint)
	}
	return fmt.Sprintf("%s: %s is not allowed by this runner's policy (allow it with %s or policy file %s)", d.Setting, d.What, d.Flag, d.Field)
}

// Is makes errors.Is(err, [ErrDenied]) true.
func (d *Denied) Is(target error) bool { return target == ErrDenied }

// Check decides whether the policy allows s. It returns nil or a [*Denied]
// for the first setting it refuses, checked in this order: unsupported
// keys, privileged, network, host paths (then the Docker socket).
func (p *Policy) Check(s Step) error {
	if len(s.Unsupported) > 0 {
		keys := append([]string(nil), s.Unsupported...)
		sort.Strings(keys)
		return &Denied{Setting: "docker_config." + keys[0], What: "a container setting that grants host access",
			Hint: "the runner never grants it on its own; a step that needs it must set privileged: true, which --allow-privileged or policy file allow_privileged allows"}
	}
	scope := p.scope(s)
	if s.Privileged {
		if !p.AllowPrivileged {
			return &Denied{Setting: "privileged", What: "true", Flag: "--allow-privileged", Field: "allow_privileged"}
		}
		if scope != "" {
			return &Denied{Setting: "privileged", What: "true", Scope: scope}
		}
	}
	if s.Network == "host" || strings.HasPrefix(s.Network, "container:") {
		what := fmt.Sprintf("%q", s.Network)
		if !p.AllowHostNetwork {
			return &Denied{Setting: "network", What: what, Flag: "--allow-host-network", Field: "allow_host_network"}
		}
		if scope != "" {
			return &Denied{Setting: "network", What: what, Scope: scope}
		}
	}
	for _, h := range s.HostPaths {
		for _, hp := range []string{h.Given, h.Resolved} {
			if !filepath.IsAbs(hp) {
				continue // a path of the run's source, which is allowed
			}
			what := fmt.Sprintf("host path %q", h.Given)
			if hp != h.Given {
				what = fmt.Sprintf("host path %q (a link to %q)", h.Given, hp)
			}
			if !p.hostPathAllowed(hp) {
				return &Denied{Setting: "volumes", What: what, Flag: "--allow-host-path " + hp, Field: "allowed_host_paths"}
			}
			if scope != "" {
				return &Denied{Setting: "volumes", What: what, Scope: scope}
			}
			if sock := p.exposedSocket(hp); sock != "" && !p.AllowDockerSocket {
				if sock != hp {
					what += fmt.Sprintf(", which holds the Docker socket %s,", sock)
				} else {
					what = fmt.Sprintf("the Docker socket %q", h.Given)
				}
				return &Denied{Setting: "volumes", What: what, Flag: "--allow-docker-socket", Field: "allow_docker_socket"}
			}
		}
	}
	return nil
}

// scope returns why the relaxations do not apply to s, or "" when they do.
func (p *Policy) scope(s Step) string {
	var why []string
	if len(p.TrustedPipelines) > 0 && !matchAny(p.TrustedPipelines, s.Pipeline) {
		why = append(why, fmt.Sprintf("for pipelines matching trusted_pipelines [%s], not pipeline %q",
			strings.Join(p.TrustedPipelines, ", "), s.Pipeline))
	}
	if len(p.AllowedImages) > 0 && !matchImage(p.AllowedImages, s.Image) {
		why = append(why, fmt.Sprintf("for images matching allowed_images [%s], not image %q",
			strings.Join(p.AllowedImages, ", "), s.Image))
	}
	return strings.Join(why, ", and ")
}

func (p *Policy) hostPathAllowed(h string) bool {
	h = filepath.Clean(h)
	for _, a := range p.AllowedHostPaths {
		if within(a, h) {
			return true
		}
	}
	return false
}

// exposedSocket returns the Docker socket that mounting h exposes: h itself
// or a socket under it, or a path named docker.sock.
func (p *Policy) exposedSocket(h string) string {
	h = filepath.Clean(h)
	socks := p.DockerSockets
	if len(socks) == 0 {
		socks = DefaultDockerSockets
	}
	for _, s := range socks {
		if within(h, s) {
			return s
		}
	}
	if filepath.Base(h) == "docker.sock" {
		return h
	}
	return ""
}

// within reports whether p is dir or under it.
func within(dir, p string) bool {
	if dir == "/" || dir == p {
		return true
	}
	return strings.HasPrefix(p, dir+"/")
}

func matchAny(globs []string, s string) bool {
	for _, g := range globs {
		if ok, _ := path.Match(g, s); ok {
			return true
		}
	}
	return false
}

// matchImage matches img with and without its tag or digest.
func matchImage(globs []string, img string) bool {
	if img == "" {
		return false
	}
	name := img
	if i := strings.IndexByte(name, '@'); i >= 0 {
		name = name[:i]
	}
	if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
		name = name[:i]
	}
	return matchAny(globs, img) || matchAny(globs, name)
}
