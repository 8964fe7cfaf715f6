//go:build tools

// Package builder only pins the commands built by ../up.sh, so that
// `GOWORK=off go mod tidy` keeps their whole dependency graph in go.mod/go.sum.
package builder

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
