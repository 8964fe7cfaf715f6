package auth_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
)

func TestTokenStoreKeepsOnlyHashes(t *testing.T) {
	ns := natstest.Run(t)
	ctx := context.Background()
	s, err := auth.OpenTokenStore(ctx, ns.JS, 1)
	if err != nil {
		t.Fatal(err)
	}
	secret, tok, err := s.Create(ctx, auth.TokenSpec{Name: "ci", Role: auth.RoleOperator, Pipelines: []string{"Web-*"}}, auth.System)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(secret, auth.TokenPrefix) || len(secret) < len(auth.TokenPrefix)+43 {
		t.Fatalf("secret %q: want %s and 32 random bytes", secret[:8], auth.TokenPrefix)
	}
	if tok.ID != auth.TokenID(secret) || tok.CreatedBy != "system" || tok.Pipelines[0] != "web-*" {
		t.Errorf("record %+v", tok)
	}
	// The bucket holds the hash, never the secret.
	kv, err := ns.JS.KeyValue(ctx, auth.TokensBucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, tok.ID)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(e.Value()), secret) || strings.Contains(string(e.Value()), secret[len(auth.TokenPrefix):]) ||
		!strings.Contains(string(e.Value()), auth.HashSecret(secret)) {
		t.Fatalf("stored record %s", e.Value())
	}
	got, err := s.Verify(ctx, secret)
	if err != nil || got.ID != tok.ID || got.Identity().Actor() != "token:"+tok.ID+" (ci)" {
		t.Fatalf("Verify = %+v, %v", got, err)
	}
	for _, bad := range []string{"", "ansf_x", secret + "x", strings.ToUpper(secret)} {
		if _, err := s.Verify(ctx, bad); !errors.Is(err, auth.ErrUnauthenticated) || strings.Contains(err.Error(), secret) {
			t.Errorf("Verify(bad) = %v", err)
		}
	}
	list, err := s.List(ctx)
	if err != nil || len(list) != 1 || list[0].Hash != "" {
		t.Fatalf("List = %+v, %v", list, err)
	}
	if _, _, err := s.Create(ctx, auth.TokenSpec{Role: "root"}, auth.System); !errors.Is(err, auth.ErrBadTokenSpec) {
		t.Errorf("role root: %v", err)
	}
	past := time.Now().Add(-time.Minute)
	if _, _, err := s.Create(ctx, auth.TokenSpec{Role: auth.RoleViewer, ExpiresAt: &past}, auth.System); !errors.Is(err, auth.ErrBadTokenSpec) {
		t.Errorf("expired at birth: %v", err)
	}
	if _, err := s.Revoke(ctx, "0123456789abcdef", "test"); !errors.Is(err, auth.ErrTokenNotFound) {
		t.Errorf("revoke unknown: %v", err)
	}
}

func TestExpiryAndRevocationHoldAtOnceOnEveryInstance(t *testing.T) {
	ns := natstest.Run(t)
	ctx := context.Background()
	_, jsA := ns.Connect(t)
	_, jsB := ns.Connect(t)
	a, err := auth.OpenTokenStore(ctx, jsA, 1)
	if err != nil {
		t.Fatal(err)
	}
	b, err := auth.OpenTokenStore(ctx, jsB, 1)
	if err != nil {
		t.Fatal(err)
	}
	secret, tok, err := a.Create(ctx, auth.TokenSpec{Role: auth.RoleViewer}, auth.System)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Verify(ctx, secret); err != nil {
		t.Fatalf("instance B does not know A's new token: %v", err)
	}
	if _, err := a.Revoke(ctx, tok.ID, "test"); err != nil {
		t.Fatal(err)
	}
	// No cache: the very next check on B reads the revocation.
	if _, err := b.Verify(ctx, secret); !errors.Is(err, auth.ErrUnauthenticated) || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("B after revocation on A: %v", err)
	}
	if again, err := b.Revoke(ctx, tok.ID, "again"); err != nil || again.RevokedBy != "test" {
		t.Errorf("second revoke = %+v, %v", again, err)
	}

	// Expiry is judged on every check against the clock.
	now := time.Now()
	b.Now = func() time.Time { return now }
	at := now.Add(time.Hour)
	secret, _, err = a.Create(ctx, auth.TokenSpec{Role: auth.RoleViewer, ExpiresAt: &at}, auth.System)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Verify(ctx, secret); err != nil {
		t.Fatalf("before expiry: %v", err)
	}
	now = at
	if _, err := b.Verify(ctx, secret); !errors.Is(err, auth.ErrUnauthenticated) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("at expiry: %v", err)
	}
}

func TestRegisterIsIdempotentAndNeverRevives(t *testing.T) {
	ns := natstest.Run(t)
	ctx := context.Background()
	s, err := auth.OpenTokenStore(ctx, ns.JS, 1)
	if err != nil {
		t.Fatal(err)
	}
	secret, _ := auth.NewTokenSecret()
	spec := auth.TokenSpec{Name: "admin", Role: auth.RoleAdmin}
	// Instances starting together register the same file's token once.
	var wg sync.WaitGroup
	ids := make([]string, 4)
	errs := make([]error, 4)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := s.Register(ctx, secret, spec, "system")
			errs[i] = err
			if err == nil {
				ids[i] = tok.ID
			}
		}()
	}
	wg.Wait()
	for i := range ids {
		if errs[i] != nil || ids[i] != auth.TokenID(secret) {
			t.Fatalf("Register #%d = %s, %v", i, ids[i], errs[i])
		}
	}
	if _, err := s.Register(ctx, "short", spec, "system"); !errors.Is(err, auth.ErrBadTokenSpec) {
		t.Errorf("short secret: %v", err)
	}
	if _, err := s.Revoke(ctx, auth.TokenID(secret), "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Register(ctx, secret, spec, "system"); !errors.Is(err, auth.ErrTokenRevoked) {
		t.Fatalf("register after revoke: %v", err)
	}
}

func TestReadTokenStoreNeverWrites(t *testing.T) {
	ns := natstest.Run(t)
	ctx := context.Background()
	r := auth.ReadTokenStore(ns.JS)
	if _, err := r.Verify(ctx, "ansf_0123456789abcdefghijklmnopqrstuvwxyz"); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Fatalf("verify without bucket: %v", err)
	}
	if _, err := ns.JS.KeyValue(ctx, auth.TokensBucket); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("a reader made the bucket: %v", err)
	}
	if _, _, err := r.Create(ctx, auth.TokenSpec{Role: auth.RoleViewer}, auth.System); !errors.Is(err, auth.ErrReadOnly) {
		t.Errorf("Create on a reader: %v", err)
	}
	w, err := auth.OpenTokenStore(ctx, ns.JS, 1)
	if err != nil {
		t.Fatal(err)
	}
	secret, tok, err := w.Create(ctx, auth.TokenSpec{Role: auth.RoleViewer}, auth.System)
	if err != nil {
		t.Fatal(err)
	}
	// The reader binds the bucket once it exists.
	if _, err := r.Verify(ctx, secret); err != nil {
		t.Fatalf("reader after the bucket exists: %v", err)
	}
	if _, err := r.Revoke(ctx, tok.ID, "x"); !errors.Is(err, auth.ErrReadOnly) {
		t.Errorf("Revoke on a reader: %v", err)
	}
}
