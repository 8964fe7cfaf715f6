package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/ansflow/ansflow/pkg/auth"
)

// localServer is the API address of a local `ansflow up` with default
// flags.
const localServer = "http://127.0.0.1:8080"

// isLocalDefault reports whether server is the API of a local `ansflow up`
// with default flags, whose data directory's admin token the CLI may use.
func isLocalDefault(server string) bool {
	switch strings.TrimSuffix(server, "/") {
	case "", localServer, "http://localhost:8080":
		return true
	}
	return false
}

// adminTokenFile is where `ansflow up` keeps its admin token, in its data
// directory.
const adminTokenFile = "admin.token"

// tokenFlags are the credential flags of a client subcommand.
type tokenFlags struct {
	token   *string
	dataDir *string
	caCert  *string
}

// addTokenFlags registers --token (default $ANSFLOW_TOKEN) and, with
// dataDir, --data-dir on fs.
func addTokenFlags(fs *flag.FlagSet, dataDir bool) *tokenFlags {
	tf := &tokenFlags{token: fs.String("token", os.Getenv("ANSFLOW_TOKEN"), "API token (default $ANSFLOW_TOKEN)"),
		caCert: fs.String("ca-cert", os.Getenv("ANSFLOW_CA_CERT"), "PEM file of the CA that signed an https server's certificate (default $ANSFLOW_CA_CERT; else the system's)")}
	if dataDir {
		tf.dataDir = fs.String("data-dir", "", "use the admin token of this `ansflow up` data directory (DIR/"+adminTokenFile+")")
	}
	return tf
}

// resolve picks the token to send: --token or $ANSFLOW_TOKEN; else the
// admin token of --data-dir; else, for the local default server, the admin
// token of the default data directory if there is one; else none.
func (tf *tokenFlags) resolve(localDefault bool) (string, error) {
	if t := strings.TrimSpace(*tf.token); t != "" {
		return t, nil
	}
	if tf.dataDir != nil && *tf.dataDir != "" {
		t, err := readAdminToken(*tf.dataDir)
		if err != nil {
			return "", invalid("--data-dir: %v", err)
		}
		return t, nil
	}
	if localDefault {
		t, err := readAdminToken(defaultDataDir())
		if err == nil {
			return t, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
	}
	return "", nil
}

// readAdminToken reads dir's admin token.
func readAdminToken(dir string) (string, error) {
	return readTokenFile(filepath.Join(dir, adminTokenFile), "admin token")
}

// readTokenFile reads the token file path, which must not be empty.
func readTokenFile(path, what string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("%s: %s is empty", what, path)
	}
	return t, nil
}

// ensureAdminToken returns the admin token of the data directory dir,
// making it (mode 0600) on the first start; created says it did.
func ensureAdminToken(dir string) (secret string, created bool, err error) {
	return ensureTokenFile(filepath.Join(dir, adminTokenFile), "admin token")
}

// natsTokenFile is the file of the data directory holding the token the
// embedded nats-server of `ansflow up` asks of its clients.
const natsTokenFile = "nats.token"

// ensureNATSToken returns the NATS token of the data directory dir,
// making it (mode 0600) on the first start.
func ensureNATSToken(dir string) (string, error) {
	t, _, err := ensureTokenFile(filepath.Join(dir, natsTokenFile), "NATS token")
	return t, err
}

// ensureTokenFile reads the token file path, or makes it when it does not
// exist; created says it did.
func ensureTokenFile(path, what string) (string, bool, error) {
	t, err := readTokenFile(path, what)
	if err == nil {
		return t, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", false, err
	}
	return createTokenFile(path, what)
}

// createTokenFile writes a new random token to path (mode 0600), failing
// if the file exists.
func createTokenFile(path, what string) (string, bool, error) {
	t, err := auth.NewTokenSecret()
	if err != nil {
		return "", false, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", false, fmt.Errorf("%s: %w", what, err)
	}
	if _, err := f.WriteString(t + "\n"); err != nil {
		f.Close()
		return "", false, fmt.Errorf("%s: write %s: %w", what, path, err)
	}
	if err := f.Close(); err != nil {
		return "", false, fmt.Errorf("%s: write %s: %w", what, path, err)
	}
	return t, true, nil
}

// httpClient returns an HTTP client that sends token and, with --ca-cert,
// trusts only that CA for https servers.
func (tf *tokenFlags) httpClient(token string) (*http.Client, error) {
	var base http.RoundTripper = http.DefaultTransport
	if tf.caCert != nil && *tf.caCert != "" {
		pem, err := os.ReadFile(*tf.caCert)
		if err != nil {
			return nil, invalid("--ca-cert: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, invalid("--ca-cert %s: no PEM certificate in it", *tf.caCert)
		}
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		base = t
	}
	return &http.Client{Transport: &auth.BearerTransport{Token: token, Base: base}}, nil
}
