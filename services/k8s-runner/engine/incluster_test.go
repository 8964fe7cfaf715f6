package engine

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// testCA returns a self-signed CA certificate in PEM.
func testCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// writeServiceAccount writes a service account directory as the kubelet
// mounts it.
func writeServiceAccount(t *testing.T, token, ns string) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{"token": token, "ca.crt": testCA(t)}
	if ns != "" {
		files["namespace"] = ns
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestInClusterConfig(t *testing.T) {
	dir := writeServiceAccount(t, "tok-1\n", "ansflow\n")
	t.Setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
	t.Setenv("KUBERNETES_SERVICE_PORT", "443")
	rc, ns, err := InClusterConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	if rc.Host != "https://10.96.0.1:443" || ns != "ansflow" {
		t.Errorf("host %q, namespace %q; want https://10.96.0.1:443, ansflow", rc.Host, ns)
	}
	// The token file is in the configuration, so client-go's transport
	// re-reads it when the kubelet rotates it.
	if rc.BearerTokenFile != filepath.Join(dir, "token") || rc.BearerToken != "tok-1" || rc.CAFile != filepath.Join(dir, "ca.crt") {
		t.Errorf("token file %q, token %q, CA %q", rc.BearerTokenFile, rc.BearerToken, rc.CAFile)
	}

	t.Setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
	if rc, _, err := InClusterConfig(writeServiceAccount(t, "t", "")); err != nil || rc.Host != "https://[fd00::1]:443" {
		t.Errorf("IPv6 host: %v, %v", rc, err)
	}
	if _, ns, _ := InClusterConfig(writeServiceAccount(t, "t", "")); ns != "default" {
		t.Errorf("namespace without a namespace file: %q, want default", ns)
	}
	if _, _, err := InClusterConfig(t.TempDir()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("empty directory: %v, want a missing token file", err)
	}

	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, _, err := InClusterConfig(dir); !errors.Is(err, ErrNotInCluster) {
		t.Errorf("outside a pod: %v, want ErrNotInCluster", err)
	}
}

// TestNewUsesTheServiceAccount: with no kubeconfig anywhere and the pod's
// environment set, an engine talks to the service host with the service
// account of Config.ServiceAccountDir; an explicit kubeconfig wins.
func TestNewUsesTheServiceAccount(t *testing.T) {
	t.Setenv("KUBECONFIG", "")
	t.Setenv("HOME", t.TempDir())
	t.Setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
	t.Setenv("KUBERNETES_SERVICE_PORT", "6443")
	dir := writeServiceAccount(t, "tok", "apps")
	e, err := New(Config{ServiceAccountDir: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if e.Host() != "https://127.0.0.1:6443" || e.cfg.DefaultNamespace != "apps" || e.cfg.Cluster != "in-cluster" {
		t.Errorf("host %q, default namespace %q, cluster %q", e.Host(), e.cfg.DefaultNamespace, e.cfg.Cluster)
	}
	if got := e.Access().Namespaces; len(got) != 1 || got[0] != "apps" {
		t.Errorf("access namespaces %v, want the pod's namespace", got)
	}
	if _, err := New(Config{ServiceAccountDir: t.TempDir()}, nil); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("service account directory without a token: %v", err)
	}
	if _, err := New(Config{Kubeconfig: filepath.Join(t.TempDir(), "missing"), ServiceAccountDir: dir}, nil); err == nil {
		t.Error("a missing explicit kubeconfig fell back to the service account")
	}
}
