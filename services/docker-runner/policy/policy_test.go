package policy

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	relaxed := Policy{AllowedHostPaths: []string{"/srv/cache", "/var/run"}, AllowDockerSocket: true, AllowPrivileged: true,
		AllowHostNetwork: true}
	scoped := relaxed
	scoped.TrustedPipelines, scoped.AllowedImages = []string{"infra-*"}, []string{"registry.example.com/ci/*"}
	paths := func(p ...string) []HostPath {
		var out []HostPath
		for _, x := range p {
			out = append(out, HostPath{Given: x})
		}
		return out
	}
	for _, tc := range []struct {
		name string
		p    Policy
		s    Step
		want string // "" for allowed
	}{
		{"strict allows a plain step", Policy{}, Step{Image: "alpine", Network: "bridge"}, ""},
		{"strict allows named networks", Policy{}, Step{Network: "ci-net"}, ""},
		{"strict refuses a host path", Policy{}, Step{HostPaths: paths("/")}, `volumes: host path "/" is not allowed by this runner's policy (allow it with --allow-host-path / or policy file allowed_host_paths)`},
		{"strict refuses privileged", Policy{}, Step{Privileged: true}, "privileged: true is not allowed"},
		{"strict refuses host network", Policy{}, Step{Network: "host"}, `network: "host" is not allowed`},
		{"unsupported keys", relaxed, Step{Unsupported: []string{"pid", "cap_add"}}, "docker_config.cap_add: "},
		{"an allowed path and under it", relaxed, Step{HostPaths: paths("/srv/cache", "/srv/cache/go")}, ""},
		{"a sibling prefix is not under", relaxed, Step{HostPaths: paths("/srv/cache2")}, `host path "/srv/cache2" is not allowed`},
		{"a link out of an allowed path", relaxed, Step{HostPaths: []HostPath{{Given: "/srv/cache/l", Resolved: "/etc"}}},
			`host path "/srv/cache/l" (a link to "/etc") is not allowed by this runner's policy (allow it with --allow-host-path /etc`},
		{"socket needs its own setting", Policy{AllowedHostPaths: []string{"/"}}, Step{HostPaths: paths("/")},
			`host path "/", which holds the Docker socket /var/run/docker.sock, is not allowed by this runner's policy (allow it with --allow-docker-socket`},
		{"any docker.sock", Policy{AllowedHostPaths: []string{"/"}}, Step{HostPaths: paths("/home/u/docker.sock")}, `the Docker socket "/home/u/docker.sock"`},
		{"relaxed allows all", relaxed, Step{Privileged: true, Network: "host", HostPaths: paths("/var/run/docker.sock")}, ""},
		{"scoped: trusted pipeline and image", scoped, Step{Pipeline: "infra-deploy", Image: "registry.example.com/ci/dind:27", Privileged: true}, ""},
		{"scoped: other pipeline", scoped, Step{Pipeline: "web", Image: "registry.example.com/ci/dind:27", Privileged: true},
			`privileged: true is allowed by this runner's policy only for pipelines matching trusted_pipelines [infra-*], not pipeline "web"`},
		{"scoped: other image", scoped, Step{Pipeline: "infra-x", Image: "docker:dind", Network: "host"},
			`only for images matching allowed_images [registry.example.com/ci/*], not image "docker:dind"`},
		{"scoped: host path", scoped, Step{Pipeline: "web", HostPaths: paths("/srv/cache")}, `volumes: host path "/srv/cache" is allowed by this runner's policy only for pipelines`},
		{"source path without link is not checked", Policy{}, Step{HostPaths: []HostPath{{Given: "./data"}}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.p.Check(tc.s)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrDenied) {
				t.Fatalf("error %v, want ErrDenied", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q lacks %q", err, tc.want)
			}
		})
	}
}

func TestLoadAndFlags(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "policy.yaml")
	os.WriteFile(file, []byte("allowed_host_paths: [/srv/cache/]\nallow_privileged: true\ntrusted_pipelines: [\"infra-*\"]\n"), 0o600)
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	f := RegisterFlags(fs, func(k string) (string, bool) {
		return map[string]string{"ANSFLOW_RUNNER_POLICY": file}[k], k == "ANSFLOW_RUNNER_POLICY"
	})
	if err := fs.Parse([]string{"--allow-host-path", "/data", "--allow-host-network"}); err != nil {
		t.Fatal(err)
	}
	p, err := f.Policy()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(p.AllowedHostPaths, ",") != "/srv/cache,/data" || !p.AllowPrivileged || !p.AllowHostNetwork || p.AllowDockerSocket {
		t.Errorf("policy %+v", p)
	}
	rel := strings.Join(p.Relaxations(), "\n")
	for _, want := range []string{"host path /srv/cache", "host path /data", "privileged", "host's network", "only to pipelines matching infra-*"} {
		if !strings.Contains(rel, want) {
			t.Errorf("relaxations lack %q:\n%s", want, rel)
		}
	}
	if r := (&Policy{}).Relaxations(); len(r) != 0 {
		t.Errorf("strict policy relaxes %v", r)
	}

	for body, want := range map[string]string{
		"allow_everything: true\n":         "field allow_everything not found",
		"allowed_host_paths: [relative]\n": `allowed_host_paths: "relative" is not an absolute path`,
		"trusted_pipelines: [\"[\"]\n":     `trusted_pipelines: "[" is not a valid glob`,
	} {
		os.WriteFile(file, []byte(body), 0o600)
		if _, err := Load(file); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want %q", body, err, want)
		}
	}
	os.WriteFile(file, nil, 0o600)
	if p, err := Load(file); err != nil || len(p.Relaxations()) != 0 {
		t.Errorf("empty file: %+v, %v", p, err)
	}
}
