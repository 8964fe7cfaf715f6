package bus

import (
	"context"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
)

// Follow watches every key of kv and calls apply, from one goroutine, with
// each entry (puts, deletes and purges) until ctx ends. It returns once
// the bucket's current entries have been applied, so a caller that keeps
// them in memory starts from the whole bucket; an error means the watch
// could not start.
func Follow(ctx context.Context, kv jetstream.KeyValue, apply func(jetstream.KeyValueEntry)) error {
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch %s: %w", kv.Bucket(), err)
	}
	loaded := make(chan struct{})
	go func() {
		defer w.Stop()
		once := sync.OnceFunc(func() { close(loaded) })
		defer once()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e == nil {
					once()
					continue
				}
				apply(e)
			}
		}
	}()
	select {
	case <-loaded:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
