package secret

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// KV is the part of a JetStream key-value bucket the store uses.
type KV interface {
	Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error)
	Put(ctx context.Context, key string, value []byte) (uint64, error)
	Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error)
	Delete(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error
	ListKeysFiltered(ctx context.Context, filters ...string) (jetstream.KeyLister, error)
}

// Store keeps secrets encrypted in a key-value bucket. It is safe for
// concurrent use; every instance sharing the bucket must be given the same
// [Key].
type Store struct {
	kv  KV
	key *Key
	now func() time.Time
}

// NewStore returns a store over kv encrypting with key.
func NewStore(kv KV, key *Key) *Store {
	return &Store{kv: kv, key: key, now: func() time.Time { return time.Now().UTC() }}
}

// record is a bucket entry: the metadata and the ciphertext, never the
// value.
type record struct {
	Meta
	Ciphertext []byte `json:"ciphertext"`
}

func bucketKey(s Scope, name string) string {
	if s.Pipeline == "" {
		return "g." + name
	}
	return "p." + hex.EncodeToString([]byte(s.Pipeline)) + "." + name
}

func prefix(s Scope) string {
	if s.Pipeline == "" {
		return "g.*"
	}
	return "p." + hex.EncodeToString([]byte(s.Pipeline)) + ".*"
}

func aad(s Scope, name string) []byte { return []byte("ansflow-secret\x00" + bucketKey(s, name)) }

// Set stores value under scope and name with filters, recording actor as
// its creator or updater, and returns its metadata.
func (st *Store) Set(ctx context.Context, scope Scope, name string, value []byte, filters Filters, actor string) (Meta, error) {
	if err := CheckName(name); err != nil {
		return Meta{}, err
	}
	if err := CheckValue(value); err != nil {
		return Meta{}, err
	}
	if err := filters.Validate(); err != nil {
		return Meta{}, err
	}
	now := st.now()
	m := Meta{Name: name, Scope: scope, Filters: filters, CreatedBy: actor, CreatedAt: now, UpdatedBy: actor, UpdatedAt: now}
	if old, err := st.get(ctx, scope, name); err == nil {
		m.CreatedBy, m.CreatedAt = old.CreatedBy, old.CreatedAt
	} else if !errors.Is(err, ErrNotFound) {
		return Meta{}, err
	}
	ct, err := st.key.encrypt(value, aad(scope, name))
	if err != nil {
		return Meta{}, fmt.Errorf("encrypt secret %s: %w", name, err)
	}
	b, err := json.Marshal(record{Meta: m, Ciphertext: ct})
	if err != nil {
		return Meta{}, err
	}
	if _, err := st.kv.Put(ctx, bucketKey(scope, name), b); err != nil {
		return Meta{}, fmt.Errorf("store secret %s (%s): %w", name, scope, err)
	}
	return m, nil
}

func (st *Store) get(ctx context.Context, scope Scope, name string) (*record, error) {
	if !ValidName(name) {
		return nil, fmt.Errorf("%w: %s (%s)", ErrNotFound, name, scope)
	}
	e, err := st.kv.Get(ctx, bucketKey(scope, name))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("%w: %s (%s)", ErrNotFound, name, scope)
	}
	if err != nil {
		return nil, fmt.Errorf("read secret %s (%s): %w", name, scope, err)
	}
	var r record
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return nil, fmt.Errorf("read secret %s (%s): %w", name, scope, err)
	}
	return &r, nil
}

// Delete removes a secret; it fails with [ErrNotFound] when there is none.
func (st *Store) Delete(ctx context.Context, scope Scope, name string) error {
	if _, err := st.get(ctx, scope, name); err != nil {
		return err
	}
	if err := st.kv.Delete(ctx, bucketKey(scope, name)); err != nil {
		return fmt.Errorf("delete secret %s (%s): %w", name, scope, err)
	}
	return nil
}

// List returns the metadata of every secret of scope, by name.
func (st *Store) List(ctx context.Context, scope Scope) ([]Meta, error) {
	kl, err := st.kv.ListKeysFiltered(ctx, prefix(scope))
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return []Meta{}, nil
		}
		return nil, fmt.Errorf("list secrets (%s): %w", scope, err)
	}
	out := []Meta{}
	for k := range kl.Keys() {
		name := k[strings.LastIndexByte(k, '.')+1:]
		r, err := st.get(ctx, scope, name)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r.Meta)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Resolve finds the secret a step of pipeline asks for by name: the
// pipeline's own, else the global one (a pipeline secret overrides a global
// one of the same name). It returns the metadata and the plaintext, which
// the caller must seal and never store or log.
func (st *Store) Resolve(ctx context.Context, pipeline, name string) (Meta, []byte, error) {
	r, err := st.get(ctx, Scope{Pipeline: pipeline}, name)
	if errors.Is(err, ErrNotFound) {
		r, err = st.get(ctx, Scope{}, name)
	}
	if errors.Is(err, ErrNotFound) {
		return Meta{}, nil, fmt.Errorf("%w: %q is neither a secret of pipeline %q nor a global one (set it with `ansflow secrets set %s [--pipeline %s]`)",
			ErrNotFound, name, pipeline, name, pipeline)
	}
	if err != nil {
		return Meta{}, nil, err
	}
	plain, err := st.key.decrypt(r.Ciphertext, aad(r.Scope, r.Name))
	if err != nil {
		return Meta{}, nil, fmt.Errorf("secret %s (%s): %w", name, r.Scope, err)
	}
	return r.Meta, plain, nil
}

// Exists reports whether pipeline may resolve name, without decrypting.
func (st *Store) Exists(ctx context.Context, pipeline, name string) error {
	_, err := st.get(ctx, Scope{Pipeline: pipeline}, name)
	if errors.Is(err, ErrNotFound) {
		_, err = st.get(ctx, Scope{}, name)
	}
	if errors.Is(err, ErrNotFound) {
		return fmt.Errorf("%w: %q is neither a secret of pipeline %q nor a global one", ErrNotFound, name, pipeline)
	}
	return err
}

// Rekey re-encrypts, with the store's key, every secret that opens only
// with old (the previous secrets key), and reports how many it rewrote.
// Secrets already under the store's key are left alone, so Rekey may run
// on every start and on every instance. A secret that opens with neither
// key fails it.
func (st *Store) Rekey(ctx context.Context, old *Key) (int, error) {
	kl, err := st.kv.ListKeysFiltered(ctx, "g.*", "p.*.*")
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("rekey secrets: %w", err)
	}
	n := 0
	for k := range kl.Keys() {
		e, err := st.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("rekey secret %s: %w", k, err)
		}
		var r record
		if err := json.Unmarshal(e.Value(), &r); err != nil {
			return n, fmt.Errorf("rekey secret %s: %w", k, err)
		}
		ad := aad(r.Scope, r.Name)
		if _, err := st.key.decrypt(r.Ciphertext, ad); err == nil {
			continue
		}
		plain, err := old.decrypt(r.Ciphertext, ad)
		if err != nil {
			return n, fmt.Errorf("rekey secret %s (%s): it opens with neither the current nor the old key", r.Name, r.Scope)
		}
		r.Ciphertext, err = st.key.encrypt(plain, ad)
		clear(plain)
		if err != nil {
			return n, fmt.Errorf("rekey secret %s: %w", r.Name, err)
		}
		b, err := json.Marshal(r)
		if err != nil {
			return n, err
		}
		if _, err := st.kv.Update(ctx, k, b, e.Revision()); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			return n, fmt.Errorf("rekey secret %s: %w", r.Name, err)
		}
		n++
	}
	return n, nil
}
