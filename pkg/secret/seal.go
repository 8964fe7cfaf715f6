package secret

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"golang.org/x/crypto/curve25519"
	"golang.org/x/crypto/nacl/box"
)

// Identity is a runner pool's X25519 key pair. The runner's operator keeps
// the private half (`--secrets-identity FILE`); the public half is announced
// in the runner's presence entry, and the pipeline service seals secrets to
// it. Its file form is "ansflow-secrets-identity-v1 " followed by the
// standard base64 of the private key.
type Identity struct {
	pub, priv [32]byte
}

const identityPrefix = "ansflow-secrets-identity-v1 "

// GenerateIdentity makes a new random identity.
func GenerateIdentity() (*Identity, error) {
	pub, priv, err := box.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("secrets identity: %w", err)
	}
	return &Identity{pub: *pub, priv: *priv}, nil
}

// LoadIdentity reads an identity file.
func LoadIdentity(path string) (*Identity, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("secrets identity: %w", err)
	}
	s := strings.TrimSpace(string(b))
	raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(s, identityPrefix))
	if !strings.HasPrefix(s, identityPrefix) || err != nil || len(raw) != 32 {
		return nil, fmt.Errorf("secrets identity %s: not an AnsFlow secrets identity file", path)
	}
	id := &Identity{}
	copy(id.priv[:], raw)
	pub, err := curve25519.X25519(id.priv[:], curve25519.Basepoint)
	if err != nil {
		return nil, fmt.Errorf("secrets identity %s: %w", path, err)
	}
	copy(id.pub[:], pub)
	return id, nil
}

// LoadOrCreateIdentity reads the identity file at path, first writing a new
// identity there (mode 0600) when there is none.
func LoadOrCreateIdentity(path string) (*Identity, bool, error) {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		id, err := GenerateIdentity()
		if err != nil {
			return nil, false, err
		}
		if err := writeNew(path, []byte(identityPrefix+base64.StdEncoding.EncodeToString(id.priv[:])+"\n")); err != nil {
			return nil, false, fmt.Errorf("secrets identity: %w", err)
		}
		return id, true, nil
	}
	id, err := LoadIdentity(path)
	return id, false, err
}

// PublicKey is the identity's public key in standard base64, as announced.
func (id *Identity) PublicKey() string { return base64.StdEncoding.EncodeToString(id.pub[:]) }

// CheckPublicKey fails unless key is a public key in its announced form
// (32 bytes in standard base64).
func CheckPublicKey(key string) error {
	raw, err := base64.StdEncoding.DecodeString(key)
	if err != nil || len(raw) != 32 {
		return fmt.Errorf("secrets public key %q: want 32 bytes in standard base64", key)
	}
	return nil
}

// KeyID names a public key: the first 16 hex digits of its SHA-256.
func KeyID(publicKey string) string {
	sum := sha256.Sum256([]byte(publicKey))
	return hex.EncodeToString(sum[:8])
}

// Binding is what a sealed secret is bound to: a runner opens it only for
// the request it came with, so a sealed box copied into another request
// (another run, step or attempt) does not open.
type Binding struct {
	RunID   string `json:"run_id"`
	StepID  string `json:"step_id"`
	Attempt int    `json:"attempt"`
	Name    string `json:"name"`
	Env     string `json:"env"`
}

// Binding Env values of the credentials sealed into a step request beside
// its secrets: a registry entry's password and a cluster entry's token. No
// environment variable has such a name, so a credential's box never opens
// as a step's secret, nor a secret's as a credential.
const (
	EnvRegistryPassword = "@registry-password"
	EnvClusterToken     = "@cluster-token"
)

type sealedPayload struct {
	Binding
	Value []byte `json:"value"`
}

// Seal encrypts value, bound to b, to every public key (standard base64)
// and returns the boxes by [KeyID].
func Seal(value []byte, b Binding, publicKeys []string) (map[string]string, error) {
	if len(publicKeys) == 0 {
		return nil, errors.New("no runner public key to seal to")
	}
	msg, err := json.Marshal(sealedPayload{Binding: b, Value: value})
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, pk := range publicKeys {
		if err := CheckPublicKey(pk); err != nil {
			return nil, err
		}
		raw, _ := base64.StdEncoding.DecodeString(pk)
		var pub [32]byte
		copy(pub[:], raw)
		sealed, err := box.SealAnonymous(nil, msg, &pub, rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("seal secret %s: %w", b.Name, err)
		}
		out[KeyID(pk)] = base64.StdEncoding.EncodeToString(sealed)
	}
	return out, nil
}

// Open finds this identity's box among boxes, opens it and checks that it
// is bound to b. It fails when the boxes were sealed for another pool.
func (id *Identity) Open(boxes map[string]string, b Binding) ([]byte, error) {
	s, ok := boxes[KeyID(id.PublicKey())]
	if !ok {
		return nil, fmt.Errorf("secret %s was not sealed to this runner's identity (key %s)", b.Name, KeyID(id.PublicKey()))
	}
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("secret %s: sealed box is not base64", b.Name)
	}
	msg, ok := box.OpenAnonymous(nil, raw, &id.pub, &id.priv)
	if !ok {
		return nil, fmt.Errorf("secret %s: sealed box does not open with this runner's identity", b.Name)
	}
	var p sealedPayload
	if err := json.Unmarshal(msg, &p); err != nil {
		return nil, fmt.Errorf("secret %s: %w", b.Name, err)
	}
	if p.Binding != b {
		return nil, fmt.Errorf("secret %s was sealed for another step attempt", b.Name)
	}
	return p.Value, nil
}
