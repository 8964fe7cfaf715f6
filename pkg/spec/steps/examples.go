package steps

// examples are one step of each type as a pipeline's steps list holds it,
// shown in docs/steps.md and GET /api/v1/step-types. Each must pass
// spec.Parse (TestExamplesValidate), so they cannot drift from the
// definitions.
var examples = map[string]string{
	"docker_build": `- name: Build image
  type: docker_build
  docker_image: my-app
  docker_tag: "{{build_number}}"
  docker_config:
    dockerfile: Dockerfile
    context: .
    build_args:
      NODE_ENV: production
      VERSION: "{{git_commit}}"
    cache_from: [registry.example.com/my-app:latest]`,
	"docker_run": `- name: Unit tests
  type: docker_run
  command: npm test
  docker_config:
    environment:
      CI: "true"
    workdir: /app
    remove: true`,
	"docker_push": `- name: Push
  type: docker_push
  docker_image: my-app
  docker_tag: "{{build_number}}"
  docker_registry: prod`,
	"docker_pull": `- name: Pull the released image
  type: docker_pull
  docker_image: my-app
  docker_tag: "1.4.2"
  docker_registry: prod
  docker_config:
    platform: linux/amd64`,
	"k8s_deploy": `- name: Deploy
  type: k8s_deploy
  k8s_cluster: staging
  k8s_namespace: development
  k8s_resource_name: my-app
  k8s_config:
    deployment_spec:
      replicas: 2
      image: "registry.example.com/my-app:{{build_number}}"
      ports:
        - container_port: 8080
      environment:
        NODE_ENV: production`,
	"k8s_scale": `- name: Scale for production
  type: k8s_scale
  k8s_namespace: development
  k8s_resource_name: my-app
  k8s_config:
    replicas: 5
  conditions:
    - type: branch_equals
      value: main`,
	"k8s_delete": `- name: Remove the preview
  type: k8s_delete
  k8s_namespace: previews
  k8s_config:
    resource_type: deployment
    label_selector: "preview={{git_branch}}"
    timeout: 2m`,
	"k8s_wait": `- name: Wait for the rollout
  type: k8s_wait
  k8s_namespace: development
  k8s_resource_name: my-app
  k8s_config:
    resource_type: deployment
    condition: available
    timeout: 300`,
	"k8s_exec": `- name: Integration tests
  type: k8s_exec
  k8s_namespace: development
  command: python -m pytest tests/integration/
  k8s_config:
    pod_selector: app=my-app
    container: my-app`,
	"k8s_logs": `- name: Collect logs
  type: k8s_logs
  k8s_namespace: development
  k8s_config:
    pod_selector: app=my-app
    tail_lines: 200
    since: 10m`,
}
