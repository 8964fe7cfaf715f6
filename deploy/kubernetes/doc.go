// Package kubernetes holds the tests of AnsFlow's Kubernetes deployment,
// the kustomize base and overlays in this directory: they build every
// overlay with the kustomize API, check the k8s-runner's RBAC against its
// cluster entry, apply each overlay to the local control plane with
// server-side apply and wait for its rollout, and run the real k8s-runner
// binary with a service account token minted for the manifests' service
// account. The package has no code of its own; docs/kubernetes.md
// describes the manifests.
package kubernetes
