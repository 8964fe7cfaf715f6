package spec

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSeedExampleValidatesAsIs(t *testing.T) {
	b, err := os.ReadFile("testdata/seed.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// When the original report sits beside the checkout, the copy must be
	// verbatim.
	if seeds, _ := filepath.Glob("../../../shared/seed/*.txt"); len(seeds) > 0 {
		orig, _ := os.ReadFile(seeds[0])
		if !strings.Contains(string(orig), string(b)) {
			t.Fatal("testdata/seed.yaml is not a verbatim copy of the seed's example")
		}
	}
	p, err := Parse("seed.yaml", b)
	if err != nil {
		t.Fatalf("seed example does not validate: %v", err)
	}
	if len(p.Steps) != 7 || p.Steps[2].DockerRegistry != "1" || p.Steps[3].K8sCluster != "1" {
		t.Fatalf("unexpected parse: %d steps, registry %q, cluster %q", len(p.Steps), p.Steps[2].DockerRegistry, p.Steps[3].K8sCluster)
	}
	if got := p.Steps[6].Conditions[0]; got.Type != CondBranchEquals || got.Value != "main" {
		t.Errorf("scale condition = %+v", got)
	}
	deps := p.Deps()
	if len(deps[6]) != 6 || len(deps[0]) != 0 {
		t.Errorf("order deps = %v", deps)
	}
}

func TestErrorsNameFileLineAndField(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string // substrings, each expected in one error line
	}{
		{"malformed yaml", "pipeline:\n  name: x\n  steps: [\n", []string{"f.yaml:"}},
		{"empty", "", []string{"f.yaml:1: file is empty"}},
		{"no pipeline key", "name: x\n", []string{"f.yaml:1: name: unknown field"}},
		{"unknown step type", "pipeline:\n  name: x\n  steps:\n    - name: a\n      type: docker_bild\n",
			[]string{`f.yaml:5: pipeline.steps[0].type: unknown step type "docker_bild"`, `did you mean "docker_build"`}},
		{"typo field", "pipeline:\n  name: x\n  steps:\n    - name: a\n      type: docker_run\n      comand: ls\n",
			[]string{`f.yaml:6: pipeline.steps[0].comand: unknown field (did you mean "command"?)`}},
		{"unknown variable", "pipeline:\n  name: x\n  steps:\n    - name: a\n      type: docker_run\n      command: echo {{nope}}\n",
			[]string{`f.yaml:6: pipeline.steps[0].command: unknown variable {{nope}}`}},
		{"docker_image before a build", "pipeline:\n  name: x\n  steps:\n    - name: a\n      type: k8s_deploy\n      k8s_config:\n        deployment_spec:\n          image: \"{{docker_image}}\"\n",
			[]string{`pipeline.steps[0].k8s_config: unknown variable {{docker_image}}: no earlier step sets it`}},
		{"cycle", "pipeline:\n  name: x\n  steps:\n    - name: a\n      type: docker_run\n      needs: [b]\n    - name: b\n      type: docker_run\n      needs: [a]\n",
			[]string{"dependency cycle: "}},
		{"order and needs cycle", "pipeline:\n  name: x\n  steps:\n    - name: a\n      type: docker_run\n      order: 1\n      needs: [b]\n    - name: b\n      type: docker_run\n      order: 2\n",
			[]string{"dependency cycle"}},
		{"wrongly typed setting", "pipeline:\n  name: x\n  steps:\n    - name: a\n      type: k8s_scale\n      k8s_config:\n        wait: true\n        replicas: five\n",
			[]string{`f.yaml:8: pipeline.steps[0].k8s_config.replicas: must be an integer, got "five"`}},
		{"required setting", "pipeline:\n  name: x\n  steps:\n    - name: a\n      type: k8s_scale\n",
			[]string{`f.yaml:4: pipeline.steps[0].k8s_config.replicas: required`}},
		{"unknown setting", "pipeline:\n  name: x\n  steps:\n    - name: a\n      type: docker_run\n      docker_config:\n        privileged: true\n        cap_add: [SYS_ADMIN]\n",
			[]string{`f.yaml:8: pipeline.steps[0].docker_config.cap_add: unknown key for docker_run; known keys: command, entrypoint`}},
		{"nested setting", "pipeline:\n  name: x\n  steps:\n    - name: a\n      type: k8s_deploy\n      k8s_config:\n        deployment_spec:\n          image: web\n          ports:\n            - container_port: 80\n            - {container_port: 70000}\n",
			[]string{`f.yaml:11: pipeline.steps[0].k8s_config.deployment_spec.ports[1].container_port: must be between 1 and 65535, got 70000`}},
		{"two things to deploy", "pipeline:\n  name: x\n  steps:\n    - name: a\n      type: k8s_deploy\n      k8s_config:\n        manifest_file: k8s/\n        manifest: \"kind: List\"\n",
			[]string{`f.yaml:6: pipeline.steps[0].k8s_config: takes one of deployment_spec, manifest or manifest_file, not manifest and manifest_file`}},
		{"templated setting", "pipeline:\n  name: x\n  variables: {n: \"3\"}\n  steps:\n    - name: a\n      type: k8s_scale\n      k8s_config: {replicas: \"{{n}}\", wait: \"{{nope}}\"}\n",
			[]string{`f.yaml:7: pipeline.steps[0].k8s_config: unknown variable {{nope}}`}},
		{"unknown need", "pipeline:\n  name: x\n  steps:\n    - name: a\n      type: docker_run\n      needs: [zz]\n", []string{`f.yaml:6: pipeline.steps[0].needs: unknown step "zz"`}},
		{"bad config key", "pipeline:\n  name: x\n  steps:\n    - name: a\n      type: docker_build\n      docker_image: x\n      docker_config:\n        dockerfil: D\n",
			[]string{`f.yaml:8: pipeline.steps[0].docker_config.dockerfil: unknown key for docker_build (did you mean "dockerfile"?)`}},
		{"output of a later step", "pipeline:\n  name: x\n  steps:\n    - name: a\n      type: docker_run\n      command: echo {{steps.b.outputs.x}}\n    - name: b\n      type: docker_run\n",
			[]string{`step "b" does not run before this step`}},
		{"bad retry and when", "pipeline:\n  name: x\n  steps:\n    - name: a\n      type: docker_run\n      when: sometimes\n      retry_policy: {max_retries: -1, backoff: linear}\n",
			[]string{"f.yaml:6: pipeline.steps[0].when", "retry_policy.max_retries", "retry_policy.backoff"}},
		{"bad timeout", "pipeline:\n  name: x\n  steps:\n    - name: a\n      type: docker_run\n      timeout: soon\n", []string{`f.yaml:6: pipeline.steps[0].timeout: duration "soon"`}},
		{"bad timeout in a flow mapping", "pipeline:\n  name: x\n  steps:\n    - {name: a, type: docker_run, timeout: soon}\n", []string{`f.yaml:4: duration "soon"`}},
		{"duplicate names", "pipeline:\n  name: x\n  steps:\n    - name: Build it\n      type: docker_run\n    - name: build-it\n      type: docker_run\n", []string{"collides with step"}},
		{"unknown condition", "pipeline:\n  name: x\n  steps:\n    - name: a\n      type: docker_run\n      conditions:\n        - type: branch_equal\n          value: main\n",
			[]string{`did you mean "branch_equals"`}},
		{"bad secrets", "pipeline:\n  name: x\n  steps:\n    - name: a\n      type: docker_run\n      secrets:\n        - name: 1TOKEN\n        - name: OK\n          env: HAS-DASH\n        - name: OK\n        - name: T\n          env: OK\n",
			[]string{`f.yaml:7: pipeline.steps[0].secrets[0].name: "1TOKEN"`, `f.yaml:9: pipeline.steps[0].secrets[1].env: "HAS-DASH"`, `f.yaml:11: pipeline.steps[0].secrets[3].env: "OK" is already set by secrets[2]`}},
		{"secrets on a push", "pipeline:\n  name: x\n  steps:\n    - name: a\n      type: docker_push\n      secrets: [{name: T}]\n",
			[]string{`f.yaml:6: pipeline.steps[0].secrets: a docker_push step cannot receive secrets; only docker_run and k8s_exec steps can`}},
		{"no steps", "pipeline:\n  name: x\n", []string{"pipeline.steps: at least one step is required (or from_repository: true"}},
		{"pipeline file without from_repository", "pipeline:\n  name: x\n  pipeline_file: ci.yml\n  steps: [{name: a, type: docker_run}]\n",
			[]string{"f.yaml:3: pipeline.pipeline_file: set only with from_repository: true"}},
		{"pipeline file outside the repository", "pipeline:\n  name: x\n  from_repository: true\n  pipeline_file: ../ci.yml\n",
			[]string{`f.yaml:4: pipeline.pipeline_file: "../ci.yml": want a path inside the repository`}},
		{"repository option", "pipeline:\n  name: x\n  repository: --upload-pack=x\n  from_repository: true\n",
			[]string{`f.yaml:3: pipeline.repository: "--upload-pack=x": want a Git URL`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("f.yaml", []byte(c.yaml))
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("want Errors, got %v", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("errors\n%v\nlack %q", err, w)
				}
			}
		})
	}
}

// TestFromRepositoryNeedsNoSteps: a pipeline taking its steps from the
// repository is valid without any, and names its file.
func TestFromRepositoryNeedsNoSteps(t *testing.T) {
	p, err := Parse("f.yaml", []byte("pipeline:\n  name: x\n  repository: https://git.example.com/a/b.git\n  from_repository: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if p.File() != DefaultPipelineFile || !p.FromRepository || p.Repository == "" {
		t.Errorf("parsed %+v", p)
	}
}

func TestEveryErrorIsReported(t *testing.T) {
	_, err := Parse("f.yaml", []byte("pipeline:\n  name: x\n  steps:\n    - name: a\n      type: nope\n    - name: b\n      type: docker_run\n      colour: red\n"))
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 2 {
		t.Fatalf("want 2 errors, got %v", err)
	}
}

func TestRetryDelay(t *testing.T) {
	s := Step{RetryPolicy: &RetryPolicy{MaxRetries: 3, RetryDelaySeconds: 2, Backoff: BackoffExponential}}
	for n, want := range map[int]float64{1: 2, 2: 4, 3: 8} {
		if got := s.RetryDelay(n).Seconds(); got != want {
			t.Errorf("delay after attempt %d = %v, want %v", n, got, want)
		}
	}
	s.RetryPolicy.Backoff = BackoffFixed
	if s.RetryDelay(3).Seconds() != 2 || s.MaxAttempts() != 4 {
		t.Error("fixed backoff or max attempts wrong")
	}
}

func FuzzParse(f *testing.F) {
	seed, _ := os.ReadFile("testdata/seed.yaml")
	f.Add(seed)
	f.Add([]byte("pipeline:\n  name: x\n  steps:\n    - name: a\n      type: docker_run\n      needs: [a]\n"))
	f.Add([]byte("pipeline: [1, 2"))
	f.Add([]byte("pipeline:\n  steps:\n    - &a {name: x, type: docker_run}\n    - *a\n"))
	f.Add([]byte("pipeline:\n  name: x\n  steps:\n    - name: a\n      type: k8s_deploy\n      k8s_config:\n        deployment_spec: {ports: [{container_port: 80}], probes: {readiness: {http_get: {port: 80}}}}\n"))
	f.Add([]byte("pipeline:\n  name: x\n  steps:\n    - name: a\n      type: docker_run\n      docker_config: {environment: [A=1], command: [ls, 1], 1: x}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("fuzz.yaml", data)
		if err == nil {
			if p == nil || p.Name == "" || len(p.Steps) == 0 {
				t.Fatalf("accepted a pipeline without name or steps: %+v", p)
			}
			return
		}
		var errs Errors
		if !errors.As(err, &errs) || len(errs) == 0 {
			t.Fatalf("error is not a non-empty Errors: %v", err)
		}
	})
}
