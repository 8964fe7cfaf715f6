package engine

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// DefaultServiceAccountDir is where the kubelet mounts a pod's service
// account token, the cluster's CA and the pod's namespace.
const DefaultServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// ErrNotInCluster is returned (wrapped) by [InClusterConfig] when
// KUBERNETES_SERVICE_HOST or KUBERNETES_SERVICE_PORT is unset: the process
// does not run in a pod.
var ErrNotInCluster = errors.New("not running in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are unset")

// InClusterConfig returns the client configuration of a pod's service
// account, as client-go's rest.InClusterConfig does, but read from dir
// (default [DefaultServiceAccountDir]): the API server is
// https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT, trusted with
// dir/ca.crt, authenticated with the bearer token in dir/token. The token
// file is named in the configuration (rest.Config.BearerTokenFile), so the
// transport re-reads it as the kubelet rotates it (client-go caches it for a
// minute); a token that expired is never kept. ns is the content of
// dir/namespace, or "default" when the file is missing.
//
// It fails with [ErrNotInCluster] outside a pod, and names the file when
// the token or the CA cannot be read.
func InClusterConfig(dir string) (rc *rest.Config, ns string, err error) {
	if dir == "" {
		dir = DefaultServiceAccountDir
	}
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, "", fmt.Errorf("in-cluster configuration: %w", ErrNotInCluster)
	}
	tokenFile, caFile := filepath.Join(dir, "token"), filepath.Join(dir, "ca.crt")
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, "", fmt.Errorf("in-cluster configuration: service account token: %w", err)
	}
	if _, err := os.Stat(caFile); err != nil {
		return nil, "", fmt.Errorf("in-cluster configuration: cluster CA: %w", err)
	}
	ns = "default"
	if b, err := os.ReadFile(filepath.Join(dir, "namespace")); err == nil && strings.TrimSpace(string(b)) != "" {
		ns = strings.TrimSpace(string(b))
	}
	return &rest.Config{
		Host:            "https://" + net.JoinHostPort(host, port),
		TLSClientConfig: rest.TLSClientConfig{CAFile: caFile},
		BearerToken:     strings.TrimSpace(string(token)),
		BearerTokenFile: tokenFile,
	}, ns, nil
}

// inClusterEnv tells whether the process runs in a pod.
func inClusterEnv() bool {
	return os.Getenv("KUBERNETES_SERVICE_HOST") != "" && os.Getenv("KUBERNETES_SERVICE_PORT") != ""
}

// kubeconfigFound tells whether kubectl's loading rules ($KUBECONFIG, then
// ~/.kube/config) find a kubeconfig file.
func kubeconfigFound() bool {
	for _, p := range clientcmd.NewDefaultClientConfigLoadingRules().GetLoadingPrecedence() {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	return false
}
