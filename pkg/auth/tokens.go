package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/topology"
)

// TokenPrefix starts every token [NewTokenSecret] makes, so that a leaked
// token is recognisable by secret scanners.
const TokenPrefix = "ansf_"

// MinSecretLen is the shortest token [TokenStore.Register] accepts from a
// file: tokens are hashed with a fast hash, which is safe only for
// high-entropy secrets.
const MinSecretLen = 32

// Errors of the [TokenStore].
var (
	// ErrTokenNotFound means no token has the id.
	ErrTokenNotFound = errors.New("token not found")
	// ErrTokenRevoked is returned by [TokenStore.Register] for a secret
	// whose token was revoked: a revoked token is never revived.
	ErrTokenRevoked = errors.New("token revoked")
	// ErrReadOnly is returned by the writes of a store from
	// [ReadTokenStore].
	ErrReadOnly = errors.New("token store is read-only")
	// ErrBadTokenSpec wraps the errors of [TokenSpec.Validate].
	ErrBadTokenSpec = errors.New("bad token")
)

// Token is an API token as stored: never the token itself, only its
// SHA-256. Its id is derived from the hash (see [TokenID]), so a request's
// token is found with one key lookup.
type Token struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	Role      Role       `json:"role"`
	Pipelines []string   `json:"pipelines,omitempty"`
	Hash      string     `json:"hash,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
	CreatedBy string     `json:"created_by"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	RevokedBy string     `json:"revoked_by,omitempty"`
}

// Identity is the identity a request with the token has.
func (t *Token) Identity() *Identity {
	return &Identity{Kind: KindToken, ID: t.ID, Name: t.Name, Role: t.Role,
		Pipelines: append([]string(nil), t.Pipelines...), ExpiresAt: t.ExpiresAt}
}

// State is "active", "expired" or "revoked" at now.
func (t *Token) State(now time.Time) string {
	switch {
	case t.RevokedAt != nil:
		return "revoked"
	case t.ExpiresAt != nil && !now.Before(*t.ExpiresAt):
		return "expired"
	}
	return "active"
}

// Public is t without its hash, as the API shows it.
func (t *Token) Public() *Token {
	c := *t
	c.Hash = ""
	return &c
}

// TokenSpec is what a new token may do.
type TokenSpec struct {
	Name      string
	Role      Role
	Pipelines []string
	// ExpiresAt nil means the token does not expire.
	ExpiresAt *time.Time
}

// Validate checks the spec and lowercases its pipeline globs (grants match
// pipelines by their stored, lowercase names). Errors wrap
// [ErrBadTokenSpec].
func (s *TokenSpec) Validate(now time.Time) error {
	if _, ok := roleRank[s.Role]; !ok {
		return fmt.Errorf("%w: role %q: want viewer, operator or admin", ErrBadTokenSpec, s.Role)
	}
	if len(s.Name) > 200 {
		return fmt.Errorf("%w: name longer than 200 bytes", ErrBadTokenSpec)
	}
	for i, g := range s.Pipelines {
		s.Pipelines[i] = strings.ToLower(strings.TrimSpace(g))
	}
	if err := ValidatePipelineGlobs(s.Pipelines); err != nil {
		return fmt.Errorf("%w: %w", ErrBadTokenSpec, err)
	}
	if s.ExpiresAt != nil && !s.ExpiresAt.After(now) {
		return fmt.Errorf("%w: expires_at %s is not in the future", ErrBadTokenSpec, s.ExpiresAt.Format(time.RFC3339))
	}
	return nil
}

// MayGrant reports, as an error wrapping [ErrForbidden], why id may not
// create a token with spec: a token never grants more than its creator
// has — no higher role, no pipeline the creator's grant does not cover,
// and no life beyond the creator's own expiry.
func (id *Identity) MayGrant(spec TokenSpec) error {
	if id == nil {
		return fmt.Errorf("%w: no identity", ErrForbidden)
	}
	if !id.Role.Allows(spec.Role) {
		return fmt.Errorf("%w: a %s cannot grant role %s", ErrForbidden, id.Role, spec.Role)
	}
	if !id.AllPipelines() {
		if len(spec.Pipelines) == 0 {
			return fmt.Errorf("%w: a grant limited to %s cannot grant every pipeline", ErrForbidden, id.Grant())
		}
		for _, g := range spec.Pipelines {
			if !id.coversGlob(g) {
				return fmt.Errorf("%w: pipelines %q is not within the grant (%s)", ErrForbidden, g, id.Grant())
			}
		}
	}
	if id.ExpiresAt != nil && (spec.ExpiresAt == nil || spec.ExpiresAt.After(*id.ExpiresAt)) {
		return fmt.Errorf("%w: a token expiring at %s cannot create one that outlives it", ErrForbidden, id.ExpiresAt.UTC().Format(time.RFC3339))
	}
	return nil
}

// coversGlob reports whether every name g matches is covered: g is one of
// the grant's own globs, or a plain name the grant covers.
func (id *Identity) coversGlob(g string) bool {
	for _, have := range id.Pipelines {
		if have == g {
			return true
		}
	}
	return !strings.ContainsAny(g, `*?[\`) && id.CoversPipeline(g)
}

// NewTokenSecret returns a new random token: [TokenPrefix] and 32 random
// bytes in unpadded base64url.
func NewTokenSecret() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("token: random bytes: %w", err)
	}
	return TokenPrefix + base64.RawURLEncoding.EncodeToString(b), nil
}

// HashSecret is how a token is stored: "sha256:" and the hex SHA-256 of the
// secret. A fast hash is enough for secrets of 256 random bits.
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// TokenID is the id of the token secret: the first 16 hex digits of its
// SHA-256, which reveal nothing of the secret and find its record.
func TokenID(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:8])
}

// TokenStore keeps API tokens in the JetStream key-value bucket
// [TokensBucket], by id. Every verification reads the bucket, so a
// revocation or expiry holds at once on every instance sharing it. It is
// safe for concurrent use.
type TokenStore struct {
	js       jetstream.JetStream
	readOnly bool
	mu       sync.Mutex
	kv       jetstream.KeyValue
	// Now is the clock (time.Now by default); tests move it.
	Now func() time.Time
}

// OpenTokenStore creates or binds the tokens bucket, for the pipeline
// service, which writes it.
func OpenTokenStore(ctx context.Context, js jetstream.JetStream, replicas int) (*TokenStore, error) {
	kv, err := bus.EnsureKeyValue(ctx, js, topology.MustBucket(TokensBucket, replicas))
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", TokensBucket, err)
	}
	return &TokenStore{js: js, kv: kv, Now: time.Now}, nil
}

// ReadTokenStore returns a store that only reads the tokens bucket (the
// audit service's): it binds the bucket on first use, never creates it, and
// its writes fail with [ErrReadOnly]. Until the bucket exists every token
// is unknown.
func ReadTokenStore(js jetstream.JetStream) *TokenStore {
	return &TokenStore{js: js, readOnly: true, Now: time.Now}
}

func (s *TokenStore) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.kv != nil {
		return s.kv, nil
	}
	kv, err := s.js.KeyValue(ctx, TokensBucket)
	if err != nil {
		return nil, fmt.Errorf("bind bucket %s: %w", TokensBucket, err)
	}
	s.kv = kv
	return kv, nil
}

func (s *TokenStore) writable(ctx context.Context) (jetstream.KeyValue, error) {
	if s.readOnly {
		return nil, ErrReadOnly
	}
	return s.bucket(ctx)
}

// Create makes a new token with spec on behalf of creator and returns the
// secret (shown once, stored nowhere) and the record. Errors wrap
// [ErrBadTokenSpec] or, when creator may not grant spec, [ErrForbidden].
func (s *TokenStore) Create(ctx context.Context, spec TokenSpec, creator *Identity) (string, *Token, error) {
	if err := spec.Validate(s.Now()); err != nil {
		return "", nil, err
	}
	if err := creator.MayGrant(spec); err != nil {
		return "", nil, err
	}
	secret, err := NewTokenSecret()
	if err != nil {
		return "", nil, err
	}
	t, err := s.put(ctx, secret, spec, creator.Actor())
	if err != nil {
		return "", nil, err
	}
	return secret, t, nil
}

// Register stores a token whose secret was made elsewhere (the admin token
// of a file or secret), unless it is stored already. A secret shorter than
// [MinSecretLen] is refused; the secret of a revoked token fails with
// [ErrTokenRevoked].
func (s *TokenStore) Register(ctx context.Context, secret string, spec TokenSpec, createdBy string) (*Token, error) {
	if len(secret) < MinSecretLen {
		return nil, fmt.Errorf("%w: a token must have at least %d characters", ErrBadTokenSpec, MinSecretLen)
	}
	if err := spec.Validate(s.Now()); err != nil {
		return nil, err
	}
	t, err := s.Get(ctx, TokenID(secret))
	switch {
	case err == nil && subtle.ConstantTimeCompare([]byte(t.Hash), []byte(HashSecret(secret))) == 1:
		if t.RevokedAt != nil {
			return nil, fmt.Errorf("token %s: %w; make a new one", t.ID, ErrTokenRevoked)
		}
		return t, nil
	case err == nil:
		return nil, fmt.Errorf("token id %s is taken by another token", t.ID)
	case !errors.Is(err, ErrTokenNotFound):
		return nil, err
	}
	t, err = s.put(ctx, secret, spec, createdBy)
	if errors.Is(err, jetstream.ErrKeyExists) {
		// Another instance registered the same secret meanwhile.
		return s.Register(ctx, secret, spec, createdBy)
	}
	return t, err
}

func (s *TokenStore) put(ctx context.Context, secret string, spec TokenSpec, createdBy string) (*Token, error) {
	kv, err := s.writable(ctx)
	if err != nil {
		return nil, err
	}
	t := &Token{ID: TokenID(secret), Name: spec.Name, Role: spec.Role, Pipelines: spec.Pipelines, Hash: HashSecret(secret),
		CreatedAt: s.Now().UTC(), CreatedBy: createdBy, ExpiresAt: spec.ExpiresAt}
	if t.Name == "" {
		t.Name = string(t.Role)
	}
	b, err := json.Marshal(t)
	if err != nil {
		return nil, fmt.Errorf("encode token: %w", err)
	}
	if _, err := kv.Create(ctx, t.ID, b); err != nil {
		return nil, fmt.Errorf("store token %s: %w", t.ID, err)
	}
	return t, nil
}

// Get returns the token with id; [ErrTokenNotFound] if there is none.
func (s *TokenStore) Get(ctx context.Context, id string) (*Token, error) {
	t, _, err := s.get(ctx, id)
	return t, err
}

func (s *TokenStore) get(ctx context.Context, id string) (*Token, uint64, error) {
	if !validID(id) {
		return nil, 0, fmt.Errorf("token %q: %w", id, ErrTokenNotFound)
	}
	kv, err := s.bucket(ctx)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, 0, fmt.Errorf("token %s: %w", id, ErrTokenNotFound)
	}
	if err != nil {
		return nil, 0, err
	}
	e, err := kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, fmt.Errorf("token %s: %w", id, ErrTokenNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read token %s: %w", id, err)
	}
	var t Token
	if err := json.Unmarshal(e.Value(), &t); err != nil {
		return nil, 0, fmt.Errorf("decode token %s: %w", id, err)
	}
	return &t, e.Revision(), nil
}

func validID(id string) bool {
	if len(id) != 16 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil
}

// List returns every token, newest first, without hashes. A store whose
// bucket does not exist yet lists none.
func (s *TokenStore) List(ctx context.Context) ([]*Token, error) {
	kv, err := s.bucket(ctx)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	var ids []string
	for k := range lister.Keys() {
		ids = append(ids, k)
	}
	out := []*Token{}
	for _, id := range ids {
		t, err := s.Get(ctx, id)
		if errors.Is(err, ErrTokenNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, t.Public())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.After(out[j].CreatedAt) })
	return out, nil
}

// Revoke marks the token revoked by by, at once for every instance; the
// record stays for the audit trail. Revoking a revoked token is a no-op.
func (s *TokenStore) Revoke(ctx context.Context, id, by string) (*Token, error) {
	kv, err := s.writable(ctx)
	if err != nil {
		return nil, err
	}
	for {
		t, rev, err := s.get(ctx, id)
		if err != nil {
			return nil, err
		}
		if t.RevokedAt != nil {
			return t.Public(), nil
		}
		now := s.Now().UTC()
		t.RevokedAt, t.RevokedBy = &now, by
		b, err := json.Marshal(t)
		if err != nil {
			return nil, fmt.Errorf("encode token: %w", err)
		}
		_, err = kv.Update(ctx, id, b, rev)
		if err == nil {
			return t.Public(), nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return nil, fmt.Errorf("revoke token %s: %w", id, err)
		}
		// Changed meanwhile: read it again.
	}
}

// Verify returns the active token whose secret this is. An unknown,
// expired or revoked token is an error wrapping [ErrUnauthenticated]; the
// error never contains the secret.
func (s *TokenStore) Verify(ctx context.Context, secret string) (*Token, error) {
	t, err := s.Get(ctx, TokenID(secret))
	if errors.Is(err, ErrTokenNotFound) {
		return nil, fmt.Errorf("%w: unknown token", ErrUnauthenticated)
	}
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare([]byte(t.Hash), []byte(HashSecret(secret))) != 1 {
		return nil, fmt.Errorf("%w: unknown token", ErrUnauthenticated)
	}
	if st := t.State(s.Now()); st != "active" {
		return nil, fmt.Errorf("%w: token %s is %s", ErrUnauthenticated, t.ID, st)
	}
	return t, nil
}
