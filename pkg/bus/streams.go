package bus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/topology"
)

// DuplicateWindow is how long JetStream remembers a Nats-Msg-Id.
const DuplicateWindow = topology.DuplicateWindow

// MaxMessageBytes is the largest message the streams accept.
const MaxMessageBytes = topology.MaxMessageBytes

// ensureTries bounds the attempts of [EnsureStreams] and [EnsureKeyValue]
// on one stream or bucket.
const ensureTries = 8

// ensureCallTimeout bounds one JetStream API call of [EnsureStreams] and
// [EnsureKeyValue]: an answer that does not come (a clustered server does
// not answer a second creation of a stream whose first is still being
// proposed, and answers get lost in leader changes) is asked again rather
// than waited for until ctx ends.
const ensureCallTimeout = 5 * time.Second

// apiCall runs f with a context bounded by ensureCallTimeout.
func apiCall[T any](ctx context.Context, f func(context.Context) (T, error)) (T, error) {
	cctx, cancel := context.WithTimeout(ctx, ensureCallTimeout)
	defer cancel()
	return f(cctx)
}

// StreamConfigs returns the configuration of every AnsFlow stream, as
// [topology.Streams] defines them. replicas is 1 for a single server and 3
// for a typical cluster.
func StreamConfigs(replicas int) []jetstream.StreamConfig { return topology.Streams(replicas) }

// EnsureStreams creates every AnsFlow stream that is missing, with
// replicas replicas, and brings the settings of existing ones up to date.
//
// replicas is a minimum: an existing stream with more replicas keeps them,
// so a runner or the audit service starting with 1 never turns the R3
// streams of `pipeline --replicas 3` into R1, while a service starting with
// 3 raises an R1 stream to R3. Settings AnsFlow does not set (placement,
// compression, metadata an operator added) are kept. A stream whose
// settings are already right is not updated.
//
// It is idempotent and safe when several instances start at once: a lost
// creation race is read back and treated as an existing stream, and after
// an update the stream is read again until it shows the settings, so a
// concurrent starter that wrote an older view is corrected.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, replicas int) error {
	for _, cfg := range StreamConfigs(replicas) {
		if err := ensureStream(ctx, js, cfg); err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				// What a denied create or update looks like: the server
				// drops the request.
				return fmt.Errorf("ensure stream %s: %w (with its own NATS identity a service cannot create or update streams: "+
					"run `ansflow provision` first, with the service's --replicas)", cfg.Name, err)
			}
			return fmt.Errorf("ensure stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}

func ensureStream(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig) error {
	var (
		err     error
		updated bool
	)
	for try := range ensureTries {
		// An update that worked is read back at once, not after a pause.
		if try > 0 && err != nil {
			if serr := sleep(ctx, backoff(try-1, 50*time.Millisecond, time.Second)); serr != nil {
				return fmt.Errorf("%w; last attempt: %w", serr, err)
			}
		}
		updated = false
		var s jetstream.Stream
		s, err = apiCall(ctx, func(ctx context.Context) (jetstream.Stream, error) { return js.Stream(ctx, want.Name) })
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			if _, err = apiCall(ctx, func(ctx context.Context) (jetstream.Stream, error) { return js.CreateStream(ctx, want) }); err == nil {
				return nil
			}
			if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				err = nil // another starter won: read what it made
			}
			continue
		}
		if err != nil {
			continue
		}
		cur := s.CachedInfo().Config
		next := overlayStream(cur, want)
		if streamSettled(cur, next) {
			return nil
		}
		// Read it back on the next try: an update racing with ours may
		// have written an older view.
		_, err = apiCall(ctx, func(ctx context.Context) (jetstream.Stream, error) { return js.UpdateStream(ctx, next) })
		updated = err == nil
	}
	// The last try's update was accepted but every read before it found
	// the settings changed again: accept it rather than fail a start.
	if updated {
		return nil
	}
	if err == nil {
		err = errors.New("settings did not settle")
	}
	return err
}

// overlayStream returns cur with the settings AnsFlow owns taken from want,
// and the larger of the two replica counts.
func overlayStream(cur, want jetstream.StreamConfig) jetstream.StreamConfig {
	next := cur
	next.Description = want.Description
	next.Subjects = slices.Clone(want.Subjects)
	next.Retention = want.Retention
	next.Storage = want.Storage
	next.Duplicates = want.Duplicates
	next.MaxMsgSize = want.MaxMsgSize
	next.Discard = want.Discard
	next.MaxAge = want.MaxAge
	next.MaxBytes = want.MaxBytes
	if next.MaxBytes == 0 {
		next.MaxBytes = -1 // the server's spelling of "no limit"
	}
	next.Replicas = max(cur.Replicas, want.Replicas, 1)
	return next
}

// streamSettled reports whether cur already has every setting of next.
func streamSettled(cur, next jetstream.StreamConfig) bool {
	sorted := func(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }
	return cur.Description == next.Description &&
		slices.Equal(sorted(cur.Subjects), sorted(next.Subjects)) &&
		cur.Retention == next.Retention && cur.Storage == next.Storage &&
		cur.Duplicates == next.Duplicates && cur.MaxMsgSize == next.MaxMsgSize &&
		cur.Discard == next.Discard && cur.MaxAge == next.MaxAge &&
		cur.MaxBytes == next.MaxBytes && cur.Replicas >= next.Replicas
}

// EnsureKeyValue returns the bucket cfg.Bucket, creating it from cfg when it
// is missing and updating it when its settings differ from cfg.
//
// cfg.Replicas is a minimum, as for [EnsureStreams]: an existing bucket with
// more replicas keeps them, one with fewer is raised. An existing bucket's
// placement is kept when cfg has none. A bucket whose settings are already
// right is returned without an update. Several instances may call it at
// once: a lost creation race is read back and treated as an existing bucket.
func EnsureKeyValue(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	cfg.Replicas = max(cfg.Replicas, 1)
	var (
		err     error
		updated jetstream.KeyValue
	)
	for try := range ensureTries {
		if try > 0 && err != nil {
			if serr := sleep(ctx, backoff(try-1, 50*time.Millisecond, time.Second)); serr != nil {
				return nil, fmt.Errorf("ensure bucket %s: %w; last attempt: %w", cfg.Bucket, serr, err)
			}
		}
		updated = nil
		var kv jetstream.KeyValue
		kv, err = apiCall(ctx, func(ctx context.Context) (jetstream.KeyValue, error) { return js.KeyValue(ctx, cfg.Bucket) })
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			if kv, err = apiCall(ctx, func(ctx context.Context) (jetstream.KeyValue, error) { return js.CreateKeyValue(ctx, cfg) }); err == nil {
				return kv, nil
			}
			if errors.Is(err, jetstream.ErrBucketExists) {
				err = nil // another starter won: read what it made
			}
			continue
		}
		if err != nil {
			continue
		}
		var st jetstream.KeyValueStatus
		if st, err = apiCall(ctx, kv.Status); err != nil {
			continue
		}
		bs, ok := st.(*jetstream.KeyValueBucketStatus)
		if !ok {
			return nil, fmt.Errorf("ensure bucket %s: unexpected status type %T", cfg.Bucket, st)
		}
		cur := bs.Config()
		next := cfg
		next.Replicas = max(cur.Replicas, cfg.Replicas)
		if next.Placement == nil {
			next.Placement = cur.Placement
		}
		if bucketSettled(cur, next) {
			return kv, nil
		}
		// Read back on the next try, as ensureStream does.
		updated, err = apiCall(ctx, func(ctx context.Context) (jetstream.KeyValue, error) { return js.UpdateKeyValue(ctx, next) })
	}
	if updated != nil { // as in ensureStream
		return updated, nil
	}
	if err == nil {
		err = errors.New("settings did not settle")
	}
	return nil, fmt.Errorf("ensure bucket %s: %w", cfg.Bucket, err)
}

// bucketSettled reports whether the bucket configured as cur already has
// every setting of want, spelled as [jetstream.JetStream.CreateKeyValue]
// writes them.
func bucketSettled(cur, want jetstream.KeyValueConfig) bool {
	orNone := func(n int64) int64 {
		if n == 0 {
			return -1
		}
		return n
	}
	history := max(want.History, 1)
	return cur.Description == want.Description && cur.History == history && cur.TTL == want.TTL &&
		cur.MaxBytes == orNone(want.MaxBytes) && int64(cur.MaxValueSize) == orNone(int64(want.MaxValueSize)) &&
		cur.Storage == want.Storage && cur.Compression == want.Compression &&
		cur.LimitMarkerTTL == want.LimitMarkerTTL && cur.Replicas >= want.Replicas
}

// EnsureObjectStore creates the object store cfg describes, or brings an
// existing one to cfg's time to live (a store made before it had one would
// keep its objects forever), never lowering its replicas. A store already
// right is returned without an update; a lost creation race is read back.
func EnsureObjectStore(ctx context.Context, js jetstream.JetStream, cfg jetstream.ObjectStoreConfig) (jetstream.ObjectStore, error) {
	cfg.Replicas = max(cfg.Replicas, 1)
	store, err := apiCall(ctx, func(ctx context.Context) (jetstream.ObjectStore, error) { return js.ObjectStore(ctx, cfg.Bucket) })
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		store, err = apiCall(ctx, func(ctx context.Context) (jetstream.ObjectStore, error) { return js.CreateObjectStore(ctx, cfg) })
		if errors.Is(err, jetstream.ErrBucketExists) || errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			store, err = apiCall(ctx, func(ctx context.Context) (jetstream.ObjectStore, error) { return js.ObjectStore(ctx, cfg.Bucket) })
		} else if err == nil {
			return store, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("ensure object store %s: %w", cfg.Bucket, err)
	}
	st, err := apiCall(ctx, store.Status)
	if err != nil {
		return nil, fmt.Errorf("ensure object store %s: status: %w", cfg.Bucket, err)
	}
	if st.TTL() == cfg.TTL && st.Replicas() >= cfg.Replicas {
		return store, nil
	}
	cfg.Replicas = max(cfg.Replicas, st.Replicas())
	store, err = apiCall(ctx, func(ctx context.Context) (jetstream.ObjectStore, error) { return js.UpdateObjectStore(ctx, cfg) })
	if err != nil {
		return nil, fmt.Errorf("ensure object store %s: update to TTL %s, %d replicas: %w", cfg.Bucket, cfg.TTL, cfg.Replicas, err)
	}
	return store, nil
}
