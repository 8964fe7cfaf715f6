package store

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
)

// TestListWhileKeysAreRewritten: a listing returns every key of the bucket
// while other writers keep rewriting them (History 1, so a rewrite removes
// the revision the listing's snapshot was about to deliver). Listing runs
// used to drop such a key now and then.
func TestListWhileKeysAreRewritten(t *testing.T) {
	ns := natstest.Run(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kv, err := ns.JS.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "list_test", History: 1})
	if err != nil {
		t.Fatal(err)
	}
	const keys = 20
	for i := range keys {
		if _, err := kv.Put(ctx, fmt.Sprintf("k%02d", i), []byte(`{"n":0}`)); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 1; ctx.Err() == nil; n++ {
				_, _ = kv.Put(ctx, fmt.Sprintf("k%02d", (n*7+w)%keys), fmt.Appendf(nil, `{"n":%d}`, n))
			}
		}()
	}
	for i := range 200 {
		got, err := listJSON[struct{ N int }](ctx, kv, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != keys {
			t.Fatalf("listing %d: %d keys, want %d", i, len(got), keys)
		}
	}
	cancel()
	wg.Wait()
}
