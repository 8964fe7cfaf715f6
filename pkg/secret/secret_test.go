package secret_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/pkg/topology"
)

func newStore(t *testing.T) (*secret.Store, func(key string) []byte) {
	t.Helper()
	_, js := natstest.Run(t).Connect(t)
	ctx := context.Background()
	kv, err := bus.EnsureKeyValue(ctx, js, topology.MustBucket(topology.BucketSecrets, 1))
	if err != nil {
		t.Fatal(err)
	}
	key, created, err := secret.LoadOrCreateKey(filepath.Join(t.TempDir(), "secrets.key"))
	if err != nil || !created {
		t.Fatalf("key: created=%v err=%v", created, err)
	}
	raw := func(k string) []byte {
		e, err := kv.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		return e.Value()
	}
	return secret.NewStore(kv, key), raw
}

// The bucket holds ciphertext and metadata only; a pipeline's secret
// overrides the global one of the same name; list returns no value.
func TestStoreKeepsOnlyCiphertext(t *testing.T) {
	st, raw := newStore(t)
	ctx := context.Background()
	value := []byte("s3cr3t-value-for-npm")
	if _, err := st.Set(ctx, secret.Scope{}, "NPM_TOKEN", value, secret.Filters{Branches: []string{"main"}}, "user:alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Set(ctx, secret.Scope{Pipeline: "web"}, "NPM_TOKEN", []byte("pipeline-own-value"), secret.Filters{}, "user:bob"); err != nil {
		t.Fatal(err)
	}
	if b := raw("g.NPM_TOKEN"); bytes.Contains(b, value) || bytes.Contains(b, []byte(base64.StdEncoding.EncodeToString(value))) {
		t.Fatalf("bucket entry holds the value: %s", b)
	}
	m, v, err := st.Resolve(ctx, "web", "NPM_TOKEN")
	if err != nil || string(v) != "pipeline-own-value" || m.Scope.Pipeline != "web" {
		t.Fatalf("resolve for web = %+v %q %v", m, v, err)
	}
	m, v, err = st.Resolve(ctx, "api", "NPM_TOKEN")
	if err != nil || !bytes.Equal(v, value) || m.CreatedBy != "user:alice" || m.Filters.Branches[0] != "main" {
		t.Fatalf("resolve for api = %+v %q %v", m, v, err)
	}
	list, err := st.List(ctx, secret.Scope{})
	if err != nil || len(list) != 1 || list[0].Name != "NPM_TOKEN" {
		t.Fatalf("list = %+v, %v", list, err)
	}
	if _, _, err := st.Resolve(ctx, "api", "MISSING"); !errors.Is(err, secret.ErrNotFound) {
		t.Fatalf("resolve missing: %v", err)
	}
	if err := st.Delete(ctx, secret.Scope{Pipeline: "web"}, "NPM_TOKEN"); err != nil {
		t.Fatal(err)
	}
	if _, v, _ := st.Resolve(ctx, "web", "NPM_TOKEN"); !bytes.Equal(v, value) {
		t.Fatalf("after deleting the pipeline's secret, web resolves %q, want the global one", v)
	}
	if err := st.Delete(ctx, secret.Scope{Pipeline: "web"}, "NPM_TOKEN"); !errors.Is(err, secret.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

func TestStoreRefusesBadInput(t *testing.T) {
	st, _ := newStore(t)
	ctx := context.Background()
	for _, c := range []struct {
		name  string
		value string
		f     secret.Filters
	}{
		{"1BAD", "value", secret.Filters{}},
		{"HAS-DASH", "value", secret.Filters{}},
		{"OK", "ab", secret.Filters{}},
		{"OK", "value", secret.Filters{Branches: []string{"["}}},
		{"OK", "value", secret.Filters{Events: []string{"merge"}}},
	} {
		if _, err := st.Set(ctx, secret.Scope{}, c.name, []byte(c.value), c.f, "t"); !errors.Is(err, secret.ErrInvalid) {
			t.Errorf("Set(%q, %q, %+v) = %v, want ErrInvalid", c.name, c.value, c.f, err)
		}
	}
}

func TestFilters(t *testing.T) {
	f := secret.Filters{Events: []string{"push", "cron"}, Branches: []string{"main", "release/*"}, Images: []string{"node", "docker.io/library/*"}}
	ok := secret.RunFacts{Trigger: "webhook", Event: "push", Branch: "release/1.2", Image: "node:22"}
	if err := f.Allow(ok); err != nil {
		t.Fatalf("allowed run refused: %v", err)
	}
	for name, r := range map[string]secret.RunFacts{
		"event":  {Trigger: "api", Branch: "main", Image: "node"},
		"branch": {Trigger: "cron", Branch: "dev", Image: "node"},
		"image":  {Trigger: "cron", Branch: "main", Image: "evil/node:1"},
		"fork":   {Trigger: "webhook", Event: "push", Branch: "main", Image: "node", Fork: true},
	} {
		err := f.Allow(r)
		if !errors.Is(err, secret.ErrNotAllowed) || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: Allow(%+v) = %v, want ErrNotAllowed naming %s", name, r, err, name)
		}
	}
}

// A sealed secret opens only with its pool's identity and only for the
// request it was bound to.
func TestSealing(t *testing.T) {
	dir := t.TempDir()
	pool, created, err := secret.LoadOrCreateIdentity(filepath.Join(dir, "pool.identity"))
	if err != nil || !created {
		t.Fatal(created, err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "pool.identity")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity file mode %v", fi.Mode())
	}
	again, _, err := secret.LoadOrCreateIdentity(filepath.Join(dir, "pool.identity"))
	if err != nil || again.PublicKey() != pool.PublicKey() {
		t.Fatalf("reloaded identity differs: %v", err)
	}
	other, _ := secret.GenerateIdentity()
	b := secret.Binding{RunID: "r1", StepID: "s", Attempt: 1, Name: "TOKEN", Env: "TOKEN"}
	boxes, err := secret.Seal([]byte("v4lue"), b, []string{pool.PublicKey()})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := pool.Open(boxes, b); err != nil || string(v) != "v4lue" {
		t.Fatalf("open = %q, %v", v, err)
	}
	if _, err := other.Open(boxes, b); err == nil {
		t.Fatal("another pool's identity opened the box")
	}
	b2 := b
	b2.Attempt = 2
	if _, err := pool.Open(boxes, b2); err == nil || !strings.Contains(err.Error(), "another step attempt") {
		t.Fatalf("open for another attempt: %v", err)
	}
}

// Rotating the secrets key: a store with the new key and the old one
// rewrites every secret under the new key; the old key no longer opens
// them, and a second pass rewrites nothing.
func TestRekey(t *testing.T) {
	_, js := natstest.Run(t).Connect(t)
	ctx := context.Background()
	kv, err := bus.EnsureKeyValue(ctx, js, topology.MustBucket(topology.BucketSecrets, 1))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	oldKey, _, _ := secret.LoadOrCreateKey(filepath.Join(dir, "old.key"))
	newKey, _, _ := secret.LoadOrCreateKey(filepath.Join(dir, "new.key"))
	old := secret.NewStore(kv, oldKey)
	for _, sc := range []secret.Scope{{}, {Pipeline: "web"}} {
		if _, err := old.Set(ctx, sc, "TOKEN", []byte("value-of-"+sc.String()), secret.Filters{}, "t"); err != nil {
			t.Fatal(err)
		}
	}
	cur := secret.NewStore(kv, newKey)
	if _, _, err := cur.Resolve(ctx, "web", "TOKEN"); err == nil || !strings.Contains(err.Error(), "cannot decrypt") {
		t.Fatalf("before rekeying, the new key opened an old secret: %v", err)
	}
	if n, err := cur.Rekey(ctx, oldKey); err != nil || n != 2 {
		t.Fatalf("rekey = %d, %v; want 2", n, err)
	}
	for _, p := range []string{"web", "api"} {
		if _, v, err := cur.Resolve(ctx, p, "TOKEN"); err != nil || !strings.HasPrefix(string(v), "value-of-") {
			t.Errorf("after rekeying, %s resolves %q, %v", p, v, err)
		}
		if _, _, err := old.Resolve(ctx, p, "TOKEN"); err == nil {
			t.Errorf("after rekeying, the old key still opens %s's secret", p)
		}
	}
	if n, err := cur.Rekey(ctx, oldKey); err != nil || n != 0 {
		t.Errorf("second rekey = %d, %v; want 0", n, err)
	}
	other, _, _ := secret.LoadOrCreateKey(filepath.Join(dir, "other.key"))
	if _, err := secret.NewStore(kv, other).Rekey(ctx, oldKey); err == nil {
		t.Error("rekeying with a key that opens nothing succeeded")
	}
}
