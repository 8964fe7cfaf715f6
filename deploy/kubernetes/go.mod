module github.com/ansflow/ansflow/deploy/kubernetes

go 1.26.0

require (
	github.com/ansflow/ansflow/pkg v0.0.0
	github.com/ansflow/ansflow/services/k8s-runner v0.0.0
	k8s.io/api v0.37.2
	k8s.io/apimachinery v0.37.2
	k8s.io/client-go v0.37.2
	sigs.k8s.io/kustomize/api v0.21.1
	sigs.k8s.io/kustomize/kyaml v0.21.1
)

replace (
	github.com/ansflow/ansflow/pkg => ../../pkg
	github.com/ansflow/ansflow/services/k8s-runner => ../../services/k8s-runner
)
