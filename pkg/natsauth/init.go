package natsauth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"

	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/pkg/topology"
)

// ErrExists is returned by [Init] when the directory already holds keys and
// Force is not set: silently replacing them would lock every service out.
var ErrExists = errors.New("secure directory already initialized")

// InitConfig configures [Init].
type InitConfig struct {
	// Dir receives nats.conf, tls/ and creds/.
	Dir string
	// Pools are the runner pools and clusters to issue identities for.
	Pools topology.Pools
	// Hosts are extra DNS names or IP addresses of the server certificate,
	// besides 127.0.0.1, ::1 and localhost.
	Hosts []string
	// Listen is the server's client address (default 0.0.0.0:4222).
	Listen string
	// Force replaces an existing initialization: new keys, new CA; every
	// credentials file issued before stops working.
	Force bool
	// Validity is how long the certificates are valid (default 2 years).
	Validity time.Duration
}

// Files written by [Init], relative to its directory.
const (
	ConfFile  = "nats.conf"
	CAFile    = "tls/ca.pem"
	caKeyFile = "tls/ca-key.pem"
	// ServerCert and ServerKey are the server certificate (for NATS, and
	// usable for the HTTPS API on the same host) and its key.
	ServerCert   = "tls/server.pem"
	ServerKey    = "tls/server-key.pem"
	operatorSeed = "keys/operator.nk"
	accountSeed  = "keys/account.nk"
	accountJWT   = "keys/account.jwt"
)

// CredsFile is the credentials file of identity, relative to the
// directory of [Init].
func CredsFile(identity string) string { return filepath.Join("creds", identity+".creds") }

// AccountName is the name of the account every AnsFlow identity belongs to.
const AccountName = "ANSFLOW"

// Init writes a nats-server configuration with decentralized JWT
// authentication (an operator, a system account and the AnsFlow account
// with JetStream, preloaded into a memory resolver) and TLS with a CA it
// generates, and one credentials file per identity of [Permissions], mode
// 0600. It returns [ErrExists] when cfg.Dir was initialized before and
// cfg.Force is not set.
func Init(cfg InitConfig) error {
	if cfg.Dir == "" {
		return errors.New("secure init: no directory")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return fmt.Errorf("secure init: %w", err)
	}
	if cfg.Listen == "" {
		cfg.Listen = "0.0.0.0:4222"
	}
	if cfg.Validity <= 0 {
		cfg.Validity = 2 * 365 * 24 * time.Hour
	}
	if _, err := os.Stat(filepath.Join(dir, ConfFile)); err == nil && !cfg.Force {
		return fmt.Errorf("%s: %w (pass --force to replace every key and credential)", dir, ErrExists)
	}
	// tls/ holds the public CA too (its keys are 0600); creds/ and keys/
	// hold only secrets.
	for sub, mode := range map[string]os.FileMode{"tls": 0o755, "creds": 0o700, "keys": 0o700} {
		if err := os.MkdirAll(filepath.Join(dir, sub), mode); err != nil {
			return fmt.Errorf("secure init: %w", err)
		}
	}
	if err := writeTLS(dir, cfg.Hosts, cfg.Validity); err != nil {
		return err
	}

	op, err := nkeys.CreateOperator()
	if err != nil {
		return fmt.Errorf("operator key: %w", err)
	}
	sys, err := nkeys.CreateAccount()
	if err != nil {
		return fmt.Errorf("system account key: %w", err)
	}
	acc, err := nkeys.CreateAccount()
	if err != nil {
		return fmt.Errorf("account key: %w", err)
	}
	opPub, _ := op.PublicKey()
	sysPub, _ := sys.PublicKey()
	accPub, _ := acc.PublicKey()

	oc := jwt.NewOperatorClaims(opPub)
	oc.Name = "ansflow"
	oc.SystemAccount = sysPub
	opJWT, err := oc.Encode(op)
	if err != nil {
		return fmt.Errorf("operator JWT: %w", err)
	}
	sc := jwt.NewAccountClaims(sysPub)
	sc.Name = "SYS"
	sysJWT, err := sc.Encode(op)
	if err != nil {
		return fmt.Errorf("system account JWT: %w", err)
	}
	ac := jwt.NewAccountClaims(accPub)
	ac.Name = AccountName
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1, MaxAckPending: -1}
	accJWT, err := ac.Encode(op)
	if err != nil {
		return fmt.Errorf("account JWT: %w", err)
	}
	for path, kp := range map[string]nkeys.KeyPair{operatorSeed: op, accountSeed: acc} {
		seed, _ := kp.Seed()
		if err := writeSecret(filepath.Join(dir, path), seed); err != nil {
			return err
		}
	}

	if err := writeSecret(filepath.Join(dir, accountJWT), []byte(accJWT)); err != nil {
		return err
	}

	perms := Permissions(cfg.Pools)
	ids := make([]string, 0, len(perms))
	for id := range perms {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		creds, err := IssueUser(acc, id, perms[id])
		if err != nil {
			return err
		}
		if err := writeSecret(filepath.Join(dir, CredsFile(id)), creds); err != nil {
			return err
		}
	}

	conf := fmt.Sprintf(`# AnsFlow nats-server configuration, written by "ansflow secure init".
# Run it with "ansflow nats --config %[1]s" (or nats-server -c).
server_name: ansflow
listen: %[2]q
max_payload: 8MB
# The user JWTs carry their permission lists in CONNECT.
max_control_line: 64KB

jetstream {
  store_dir: %[3]q
}

tls {
  cert_file: %[4]q
  key_file: %[5]q
  timeout: 5
}

operator: %[6]q
system_account: %[7]s
resolver: MEMORY
resolver_preload: {
  %[7]s: %[8]q
  %[9]s: %[10]q
}
`, filepath.Join(dir, ConfFile), cfg.Listen, filepath.Join(dir, "data"), filepath.Join(dir, ServerCert), filepath.Join(dir, ServerKey),
		opJWT, sysPub, sysJWT, accPub, accJWT)
	if err := os.WriteFile(filepath.Join(dir, ConfFile), []byte(conf), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", ConfFile, err)
	}
	if err := writeAdminToken(filepath.Join(dir, AdminTokenFile)); err != nil {
		return err
	}
	if _, _, err := secret.LoadOrCreateKey(filepath.Join(dir, SecretsKeyFile)); err != nil {
		return fmt.Errorf("secrets key: %w", err)
	}
	return nil
}

// SecretsKeyFile is the file, relative to the directory of [Init], holding
// the key that encrypts the secret store, for the pipeline service's
// --secrets-key-file. Like the admin token, an existing one is kept.
const SecretsKeyFile = "secrets.key"

// AdminTokenFile is the file, relative to the directory of [Init], holding a
// random admin API token for the pipeline service's --admin-token-file. An
// existing one is kept: it is not a NATS credential.
const AdminTokenFile = "admin.token"

func writeAdminToken(path string) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return fmt.Errorf("admin token: %w", err)
	}
	return writeSecret(path, []byte(base64.RawURLEncoding.EncodeToString(b)+"\n"))
}

// IssueUser returns the credentials file content of a new user named
// identity in the account whose key is acc, with perms.
func IssueUser(acc nkeys.KeyPair, identity string, perms Perms) ([]byte, error) {
	u, err := nkeys.CreateUser()
	if err != nil {
		return nil, fmt.Errorf("user key %s: %w", identity, err)
	}
	uPub, _ := u.PublicKey()
	uc := jwt.NewUserClaims(uPub)
	uc.Name = identity
	uc.Pub.Allow.Add(perms.PubAllow...)
	uc.Pub.Deny.Add(perms.PubDeny...)
	uc.Sub.Allow.Add(perms.SubAllow...)
	tok, err := uc.Encode(acc)
	if err != nil {
		return nil, fmt.Errorf("user JWT %s: %w", identity, err)
	}
	seed, _ := u.Seed()
	creds, err := jwt.FormatUserConfig(tok, seed)
	if err != nil {
		return nil, fmt.Errorf("credentials %s: %w", identity, err)
	}
	return creds, nil
}

// Reissue replaces the credentials of identity in the directory dir of an
// earlier [Init]: a new user key signed by the same account key, written to
// its creds file, and the old user key revoked in the account JWT, which is
// re-signed with the operator key and rewritten into nats.conf. A running
// server applies the revocation on a configuration reload (SIGHUP to
// `ansflow nats`), disconnecting the old key's connections; the new file
// works at once.
func Reissue(dir, identity string, pools topology.Pools) error {
	perms, ok := Permissions(pools)[identity]
	if !ok {
		return fmt.Errorf("reissue: unknown identity %q (pass the pools and clusters given to init)", identity)
	}
	acc, err := readSeed(filepath.Join(dir, accountSeed))
	if err != nil {
		return fmt.Errorf("reissue %s: %w", identity, err)
	}
	op, err := readSeed(filepath.Join(dir, operatorSeed))
	if err != nil {
		return fmt.Errorf("reissue %s: %w", identity, err)
	}
	credsPath := filepath.Join(dir, CredsFile(identity))
	oldPub := ""
	if b, err := os.ReadFile(credsPath); err == nil {
		if tok, err := jwt.ParseDecoratedJWT(b); err == nil {
			if uc, err := jwt.DecodeUserClaims(tok); err == nil {
				oldPub = uc.Subject
			}
		}
	}
	creds, err := IssueUser(acc, identity, perms)
	if err != nil {
		return err
	}
	if oldPub != "" {
		if err := revoke(dir, op, oldPub); err != nil {
			return fmt.Errorf("reissue %s: %w", identity, err)
		}
	}
	return writeSecret(credsPath, creds)
}

// revoke adds user key pub to the account's revocations and rewrites the
// account JWT in nats.conf.
func revoke(dir string, op nkeys.KeyPair, pub string) error {
	jwtPath := filepath.Join(dir, accountJWT)
	old, err := os.ReadFile(jwtPath)
	if err != nil {
		return fmt.Errorf("read account JWT: %w", err)
	}
	ac, err := jwt.DecodeAccountClaims(strings.TrimSpace(string(old)))
	if err != nil {
		return fmt.Errorf("decode account JWT: %w", err)
	}
	ac.RevokeAt(pub, time.Now())
	next, err := ac.Encode(op)
	if err != nil {
		return fmt.Errorf("re-sign account JWT: %w", err)
	}
	confPath := filepath.Join(dir, ConfFile)
	conf, err := os.ReadFile(confPath)
	if err != nil {
		return fmt.Errorf("read %s: %w", ConfFile, err)
	}
	oldJWT := strings.TrimSpace(string(old))
	if !strings.Contains(string(conf), oldJWT) {
		return fmt.Errorf("%s does not hold the account JWT of %s: was it edited?", ConfFile, accountJWT)
	}
	if err := writeSecret(confPath, []byte(strings.ReplaceAll(string(conf), oldJWT, next))); err != nil {
		return err
	}
	return writeSecret(jwtPath, []byte(next))
}

func readSeed(path string) (nkeys.KeyPair, error) {
	seed, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(seed))))
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", filepath.Base(path), err)
	}
	return kp, nil
}

func writeSecret(path string, b []byte) error {
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return os.Chmod(path, 0o600) // an existing file keeps its mode otherwise
}

// writeTLS writes a CA and a server certificate for loopback and hosts.
func writeTLS(dir string, hosts []string, validity time.Duration) error {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("CA key: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "AnsFlow NATS CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(validity),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true, MaxPathLenZero: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("CA certificate: %w", err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("server key: %w", err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "ansflow-nats"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(validity),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	for _, h := range hosts {
		if h = strings.TrimSpace(h); h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			srvTmpl.IPAddresses = append(srvTmpl.IPAddresses, ip)
		} else {
			srvTmpl.DNSNames = append(srvTmpl.DNSNames, h)
		}
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("server certificate: %w", err)
	}
	pemOf := func(typ string, der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}) }
	caKeyDER, err := x509.MarshalECPrivateKey(caKey)
	if err != nil {
		return fmt.Errorf("CA key: %w", err)
	}
	srvKeyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		return fmt.Errorf("server key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, CAFile), pemOf("CERTIFICATE", caDER), 0o644); err != nil {
		return fmt.Errorf("write CA: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ServerCert), pemOf("CERTIFICATE", srvDER), 0o644); err != nil {
		return fmt.Errorf("write server certificate: %w", err)
	}
	if err := writeSecret(filepath.Join(dir, caKeyFile), pemOf("EC PRIVATE KEY", caKeyDER)); err != nil {
		return err
	}
	return writeSecret(filepath.Join(dir, ServerKey), pemOf("EC PRIVATE KEY", srvKeyDER))
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}
