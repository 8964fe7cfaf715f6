package secret

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Key is the operator's secrets key: 32 bytes for AES-256-GCM. Its file
// form is the standard base64 of the bytes on one line.
type Key struct{ aead cipher.AEAD }

// ParseKey reads a key's file form.
func ParseKey(text []byte) (*Key, error) {
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(text)))
	if err != nil || len(raw) != 32 {
		return nil, errors.New("secrets key: want 32 bytes in base64 (make one with `openssl rand -base64 32`)")
	}
	block, err := aes.NewCipher(raw)
	if err != nil {
		return nil, fmt.Errorf("secrets key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("secrets key: %w", err)
	}
	return &Key{aead: aead}, nil
}

// LoadKey reads the key file at path.
func LoadKey(path string) (*Key, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("secrets key: %w", err)
	}
	k, err := ParseKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// LoadOrCreateKey reads the key file at path, first writing a new random
// key there (mode 0600) when there is none. created reports the latter.
func LoadOrCreateKey(path string) (k *Key, created bool, err error) {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		raw := make([]byte, 32)
		if _, err := rand.Read(raw); err != nil {
			return nil, false, fmt.Errorf("secrets key: %w", err)
		}
		if err := writeNew(path, []byte(base64.StdEncoding.EncodeToString(raw)+"\n")); err != nil {
			return nil, false, fmt.Errorf("secrets key: %w", err)
		}
		created = true
	}
	k, err = LoadKey(path)
	return k, created, err
}

// writeNew creates path with mode 0600, failing when it exists.
func writeNew(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// encrypt seals plain with a random nonce; aad binds the ciphertext to the
// secret's scope and name, so a ciphertext copied to another key of the
// bucket does not open.
func (k *Key) encrypt(plain, aad []byte) ([]byte, error) {
	nonce := make([]byte, k.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return k.aead.Seal(nonce, nonce, plain, aad), nil
}

// decrypt opens what encrypt sealed.
func (k *Key) decrypt(sealed, aad []byte) ([]byte, error) {
	n := k.aead.NonceSize()
	if len(sealed) < n {
		return nil, errors.New("ciphertext too short")
	}
	plain, err := k.aead.Open(nil, sealed[:n], sealed[n:], aad)
	if err != nil {
		return nil, errors.New("cannot decrypt: the secrets key is not the one the secret was stored with")
	}
	return plain, nil
}
