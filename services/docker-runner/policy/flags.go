package policy

import (
	"flag"
	"fmt"
	"strings"
)

// Flags are the runner flags that relax the policy, registered by
// [RegisterFlags]. Read them with [Flags.Policy] after parsing.
type Flags struct {
	// File is --policy, the policy file ("" for none: strict).
	File string
	// HostPaths are the --allow-host-path values.
	HostPaths listFlag
	// DockerSocket, Privileged and HostNetwork are --allow-docker-socket,
	// --allow-privileged and --allow-host-network.
	DockerSocket, Privileged, HostNetwork bool
}

// RegisterFlags adds --policy (default $ANSFLOW_RUNNER_POLICY),
// --allow-host-path (repeatable), --allow-docker-socket, --allow-privileged
// and --allow-host-network to fs. getenv looks up the environment.
func RegisterFlags(fs *flag.FlagSet, getenv func(string) (string, bool)) *Flags {
	f := &Flags{}
	def, _ := getenv("ANSFLOW_RUNNER_POLICY")
	fs.StringVar(&f.File, "policy", def, "runner policy file (YAML): what steps may ask of this runner's host; default strict (env ANSFLOW_RUNNER_POLICY)")
	fs.Var(&f.HostPaths, "allow-host-path", "let docker_run volumes bind-mount this absolute host path and what is under it (repeatable)")
	fs.BoolVar(&f.DockerSocket, "allow-docker-socket", false, "let steps mount the Docker socket (its path must also be an allowed host path)")
	fs.BoolVar(&f.Privileged, "allow-privileged", false, "let docker_run steps set privileged: true")
	fs.BoolVar(&f.HostNetwork, "allow-host-network", false, "let steps use network: host or network: container:NAME")
	return f
}

// Policy returns the policy file's policy (strict without one) relaxed
// further by the flags.
func (f *Flags) Policy() (Policy, error) {
	var p Policy
	if f.File != "" {
		var err error
		if p, err = Load(f.File); err != nil {
			return p, err
		}
	}
	p.AllowedHostPaths = append(p.AllowedHostPaths, f.HostPaths...)
	p.AllowDockerSocket = p.AllowDockerSocket || f.DockerSocket
	p.AllowPrivileged = p.AllowPrivileged || f.Privileged
	p.AllowHostNetwork = p.AllowHostNetwork || f.HostNetwork
	if err := p.Validate(); err != nil {
		return p, fmt.Errorf("runner policy: %w", err)
	}
	return p, nil
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(s string) error {
	*l = append(*l, s)
	return nil
}
