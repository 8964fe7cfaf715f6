package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/pkg/topology"
)

// Bucket names.
const (
	BucketPipelines = topology.BucketPipelines
	BucketVersions  = topology.BucketVersions
	BucketRuns      = topology.BucketRuns
	BucketCatalog   = topology.BucketCatalog
	BucketCounters  = topology.BucketCounters
)

// ErrNotFound is returned when a pipeline, run, registry or cluster does not
// exist.
var ErrNotFound = errors.New("not found")

// ErrConflict is returned by [Store.UpdateRun] when the run changed since it
// was read; the caller re-reads and retries.
var ErrConflict = errors.New("run changed concurrently")

// ErrExists is returned by [Store.CreateRun] when a run with that id is
// already stored.
var ErrExists = errors.New("already exists")

// Store is the pipeline service's state. It is safe for concurrent use.
type Store struct {
	pipelines, versions, runs, catalog, counters jetstream.KeyValue

	cat *catalogCache

	mu    sync.Mutex
	cache map[string]cachedRun      // active runs, as last written or seen
	specs map[string]*spec.Pipeline // pipeline versions by slug.version
}

type cachedRun struct {
	rev uint64
	run *Run // never mutated once cached; callers get a Clone
}

// Open creates or opens the buckets. replicas is the KV replication factor.
func Open(ctx context.Context, js jetstream.JetStream, replicas int) (*Store, error) {
	if replicas < 1 {
		replicas = 1
	}
	open := func(name string) (jetstream.KeyValue, error) {
		kv, err := bus.EnsureKeyValue(ctx, js, topology.MustBucket(name, replicas))
		if err != nil {
			return nil, fmt.Errorf("open bucket %s: %w", name, err)
		}
		return kv, nil
	}
	s := Store{cache: map[string]cachedRun{}, specs: map[string]*spec.Pipeline{}, cat: &catalogCache{entries: map[string]catalogEntry{}}}
	s.cat.cur.Store(&Catalog{})
	var err error
	for _, b := range []struct {
		kv   *jetstream.KeyValue
		name string
	}{{&s.pipelines, BucketPipelines}, {&s.versions, BucketVersions}, {&s.runs, BucketRuns}, {&s.catalog, BucketCatalog}, {&s.counters, BucketCounters}} {
		if *b.kv, err = open(b.name); err != nil {
			return nil, err
		}
	}
	if err := s.watchCatalog(ctx); err != nil {
		return nil, err
	}
	return &s, nil
}

// Runs exposes the runs bucket for watching.
func (s *Store) Runs() jetstream.KeyValue { return s.runs }

// PutPipeline stores a new version of the pipeline described by yamlText.
func (s *Store) PutPipeline(ctx context.Context, p *spec.Pipeline, yamlText, actor string) (*apiv1.Pipeline, error) {
	key := spec.Slug(p.Name)
	for {
		now := time.Now().UTC()
		rec := &apiv1.Pipeline{Name: p.Name, Version: 1, YAML: yamlText, Spec: p, CreatedAt: now, UpdatedAt: now, UpdatedBy: actor}
		var rev uint64
		if e, err := s.pipelines.Get(ctx, key); err == nil {
			var old apiv1.Pipeline
			if err := json.Unmarshal(e.Value(), &old); err != nil {
				return nil, fmt.Errorf("decode pipeline %q: %w", p.Name, err)
			}
			if old.YAML == yamlText {
				return &old, nil
			}
			rec.Version, rec.CreatedAt, rev = old.Version+1, old.CreatedAt, e.Revision()
		} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, fmt.Errorf("read pipeline %q: %w", p.Name, err)
		}
		// Claim the version number first, so that every version a run
		// can name exists before the pipeline points at it.
		b, claimed, err := s.claimVersion(ctx, key, rec, rev != 0)
		if err != nil {
			return nil, err
		}
		if !claimed {
			continue // another writer took the number: read the pipeline again
		}
		if rev == 0 {
			_, err = s.pipelines.Create(ctx, key, b)
		} else {
			_, err = s.pipelines.Update(ctx, key, b, rev)
		}
		if isConflict(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("store pipeline %q: %w", p.Name, err)
		}
		return rec, nil
	}
}

// claimVersion stores rec as version rec.Version with a create-only write.
// When that number is taken it reports false if the pipeline exists (a
// concurrent writer), and otherwise numbers past the versions a deleted
// pipeline left.
func (s *Store) claimVersion(ctx context.Context, key string, rec *apiv1.Pipeline, exists bool) ([]byte, bool, error) {
	for {
		b, err := json.Marshal(rec)
		if err != nil {
			return nil, false, err
		}
		_, err = s.versions.Create(ctx, key+"."+strconv.Itoa(rec.Version), b)
		switch {
		case err == nil:
			return b, true, nil
		case !isConflict(err):
			return nil, false, fmt.Errorf("store pipeline %q version %d: %w", rec.Name, rec.Version, err)
		case exists:
			return nil, false, nil
		}
		rec.Version++
	}
}

func isConflict(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) || (errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence)
}

// GetPipeline returns the latest version of a pipeline by name or slug.
func (s *Store) GetPipeline(ctx context.Context, name string) (*apiv1.Pipeline, error) {
	return getJSON[apiv1.Pipeline](ctx, s.pipelines, spec.Slug(name), "pipeline "+strconv.Quote(name))
}

// GetPipelineVersion returns one stored version.
func (s *Store) GetPipelineVersion(ctx context.Context, name string, version int) (*apiv1.Pipeline, error) {
	return getJSON[apiv1.Pipeline](ctx, s.versions, spec.Slug(name)+"."+strconv.Itoa(version),
		fmt.Sprintf("pipeline %q version %d", name, version))
}

// PipelineVersions lists the stored versions of a pipeline, oldest first.
func (s *Store) PipelineVersions(ctx context.Context, name string) ([]*apiv1.Pipeline, error) {
	cur, err := s.GetPipeline(ctx, name)
	if err != nil {
		return nil, err
	}
	var out []*apiv1.Pipeline
	for v := 1; v <= cur.Version; v++ {
		if r, err := s.GetPipelineVersion(ctx, name, v); err == nil {
			out = append(out, r)
		}
	}
	return out, nil
}

// ListPipelines returns the latest version of every pipeline, by name.
func (s *Store) ListPipelines(ctx context.Context) ([]*apiv1.Pipeline, error) {
	return listJSON[apiv1.Pipeline](ctx, s.pipelines, "")
}

// DeletePipeline removes a pipeline; its versions and runs stay.
func (s *Store) DeletePipeline(ctx context.Context, name string) error {
	if _, err := s.GetPipeline(ctx, name); err != nil {
		return err
	}
	if err := s.pipelines.Delete(ctx, spec.Slug(name)); err != nil {
		return fmt.Errorf("delete pipeline %q: %w", name, err)
	}
	return nil
}

// NextBuildNumber increments and returns the pipeline's build counter.
func (s *Store) NextBuildNumber(ctx context.Context, pipeline string) (int, error) {
	key := spec.Slug(pipeline)
	for {
		e, err := s.counters.Get(ctx, key)
		n, rev := 0, uint64(0)
		switch {
		case err == nil:
			n, _ = strconv.Atoi(string(e.Value()))
			rev = e.Revision()
		case !errors.Is(err, jetstream.ErrKeyNotFound):
			return 0, fmt.Errorf("read build counter of %q: %w", pipeline, err)
		}
		n++
		if rev == 0 {
			_, err = s.counters.Create(ctx, key, []byte(strconv.Itoa(n)))
		} else {
			_, err = s.counters.Update(ctx, key, []byte(strconv.Itoa(n)), rev)
		}
		if isConflict(err) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("bump build counter of %q: %w", pipeline, err)
		}
		return n, nil
	}
}

// encodeRun writes r without its spec when the spec is the pipeline version
// the run uses, stored once in the versions bucket, not in every run write.
// A from_repository run executes the file it read at its commit, which no
// version holds, so its spec is written with it.
func encodeRun(r *Run) ([]byte, error) {
	c := *r
	if c.Spec == nil || !c.Spec.FromRepository {
		c.Spec = nil
	}
	b, err := json.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("encode run %s: %w", r.ID, err)
	}
	return b, nil
}

// CreateRun stores a new run.
func (s *Store) CreateRun(ctx context.Context, r *Run) error {
	b, err := encodeRun(r)
	if err != nil {
		return err
	}
	rev, err := s.runs.Create(ctx, r.ID, b)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("create run %s: %w", r.ID, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("create run %s: %w", r.ID, err)
	}
	r.Revision = rev
	s.remember(r)
	return nil
}

// GetRunCached returns a copy of the run as this process last wrote or
// observed it, reading the bucket only when it has no copy. The copy may be
// stale; an [Store.UpdateRun] based on it then fails with [ErrConflict] and
// the caller re-reads with [Store.GetRun].
func (s *Store) GetRunCached(ctx context.Context, id string) (*Run, error) {
	s.mu.Lock()
	c, ok := s.cache[id]
	s.mu.Unlock()
	if !ok {
		return s.GetRun(ctx, id)
	}
	r := c.run.Clone()
	r.Revision = c.rev
	return r, nil
}

// Cached reports the revision of the cached copy of run id (0 if none), so a
// watcher can skip decoding entries this process wrote itself.
func (s *Store) Cached(id string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cache[id].rev
}

// Observe records a run a watcher decoded from the bucket.
func (s *Store) Observe(r *Run) { s.remember(r) }

func (s *Store) remember(r *Run) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.cache[r.ID]
	if ok && c.rev >= r.Revision {
		return
	}
	if r.Terminal() {
		delete(s.cache, r.ID)
		return
	}
	s.cache[r.ID] = cachedRun{rev: r.Revision, run: r.Clone()}
}

func (s *Store) forget(id string) {
	s.mu.Lock()
	delete(s.cache, id)
	s.mu.Unlock()
}

// GetRun reads a run with its revision.
func (s *Store) GetRun(ctx context.Context, id string) (*Run, error) {
	e, err := s.runs.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrInvalidKey) {
		return nil, fmt.Errorf("run %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read run %s: %w", id, err)
	}
	return s.DecodeRun(ctx, e)
}

// DecodeRun decodes a runs bucket entry and attaches the spec of its
// pipeline version.
func (s *Store) DecodeRun(ctx context.Context, e jetstream.KeyValueEntry) (*Run, error) {
	var r Run
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return nil, fmt.Errorf("decode run %s: %w", e.Key(), err)
	}
	r.Revision = e.Revision()
	return &r, s.attachSpec(ctx, &r)
}

// attachSpec sets r.Spec from the pipeline version the run uses, unless the
// run was stored with its own (from_repository); versions never change, so
// each is read once.
func (s *Store) attachSpec(ctx context.Context, r *Run) error {
	if r.Spec != nil {
		return nil
	}
	key := spec.Slug(r.Pipeline) + "." + strconv.Itoa(r.PipelineVersion)
	s.mu.Lock()
	p, ok := s.specs[key]
	s.mu.Unlock()
	if !ok {
		rec, err := s.GetPipelineVersion(ctx, r.Pipeline, r.PipelineVersion)
		if err != nil {
			return fmt.Errorf("run %s: %w", r.ID, err)
		}
		p = rec.Spec
		s.mu.Lock()
		s.specs[key] = p
		s.mu.Unlock()
	}
	r.Spec = p
	return nil
}

// UpdateRun writes r if nobody changed it since r.Revision was read, and
// returns [ErrConflict] otherwise.
func (s *Store) UpdateRun(ctx context.Context, r *Run) error {
	b, err := encodeRun(r)
	if err != nil {
		return err
	}
	rev, err := s.runs.Update(ctx, r.ID, b, r.Revision)
	if isConflict(err) {
		s.forget(r.ID)
		return ErrConflict
	}
	if err != nil {
		return fmt.Errorf("update run %s: %w", r.ID, err)
	}
	r.Revision = rev
	s.remember(r)
	return nil
}

// RunFilter selects runs for [Store.ListRuns].
type RunFilter struct {
	Pipeline string
	Status   string
	Limit    int
}

// ListRuns returns runs newest first.
func (s *Store) ListRuns(ctx context.Context, f RunFilter) ([]*Run, error) {
	runs, err := listJSON[Run](ctx, s.runs, "")
	if err != nil {
		return nil, err
	}
	for _, r := range runs {
		if err := s.attachSpec(ctx, r); err != nil {
			return nil, err
		}
	}
	out := runs[:0]
	for _, r := range runs {
		if (f.Pipeline == "" || spec.Slug(r.Pipeline) == spec.Slug(f.Pipeline)) && (f.Status == "" || r.Status == f.Status) {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.After(out[j].CreatedAt) })
	if f.Limit > 0 && len(out) > f.Limit {
		out = out[:f.Limit]
	}
	return out, nil
}

// PutRegistry stores a catalogue registry.
func (s *Store) PutRegistry(ctx context.Context, r *apiv1.Registry) error {
	if err := r.Check(); err != nil {
		return err
	}
	return s.putCatalog(ctx, "registry", r.ID, r.Name, r)
}

// PutCluster stores a catalogue cluster.
func (s *Store) PutCluster(ctx context.Context, c *apiv1.Cluster) error {
	if err := c.Check(); err != nil {
		return err
	}
	return s.putCatalog(ctx, "cluster", c.ID, c.Name, c)
}

func (s *Store) putCatalog(ctx context.Context, kind, id, name string, v any) error {
	if id == "" || name == "" {
		return fmt.Errorf("%s needs an id and a name", kind)
	}
	if strings.ContainsAny(id, ". *>") {
		return fmt.Errorf("%s id %q: use letters, digits, - and _", kind, id)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	rev, err := s.catalog.Put(ctx, kind+"."+id, b)
	if err != nil {
		return fmt.Errorf("store %s %q: %w", kind, id, err)
	}
	s.cat.apply(kind+"."+id, rev, b)
	return nil
}

// DeleteRegistry removes a catalogue registry.
func (s *Store) DeleteRegistry(ctx context.Context, id string) error {
	return s.deleteCatalog(ctx, "registry", id)
}

// DeleteCluster removes a catalogue cluster.
func (s *Store) DeleteCluster(ctx context.Context, id string) error {
	return s.deleteCatalog(ctx, "cluster", id)
}

func (s *Store) deleteCatalog(ctx context.Context, kind, id string) error {
	if _, err := s.catalog.Get(ctx, kind+"."+id); err != nil {
		return fmt.Errorf("%s %q: %w", kind, id, ErrNotFound)
	}
	if err := s.catalog.Delete(ctx, kind+"."+id); err != nil {
		return fmt.Errorf("delete %s %q: %w", kind, id, err)
	}
	s.cat.forget(kind + "." + id)
	return nil
}

// Registries lists the catalogue's registries.
func (s *Store) Registries(ctx context.Context) ([]*apiv1.Registry, error) {
	return listJSON[apiv1.Registry](ctx, s.catalog, "registry.")
}

// Clusters lists the catalogue's clusters.
func (s *Store) Clusters(ctx context.Context) ([]*apiv1.Cluster, error) {
	return listJSON[apiv1.Cluster](ctx, s.catalog, "cluster.")
}

// FindRegistry resolves a registry by id or name.
func (s *Store) FindRegistry(_ context.Context, ref string) (*apiv1.Registry, error) {
	return s.Catalog().Registry(ref)
}

// FindCluster resolves a cluster by id or name.
func (s *Store) FindCluster(_ context.Context, ref string) (*apiv1.Cluster, error) {
	return s.Catalog().Cluster(ref)
}

func getJSON[T any](ctx context.Context, kv jetstream.KeyValue, key, what string) (*T, error) {
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrInvalidKey) {
		return nil, fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	var v T
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		return nil, fmt.Errorf("decode %s: %w", what, err)
	}
	return &v, nil
}

// listJSON decodes every live value of the bucket whose key has prefix,
// sorted by key. It reads the bucket with one watcher and stops once it has
// seen the bucket's last revision at the time of the call, so a value
// written just before the call is always included (ListKeys can end before
// it).
func listJSON[T any](ctx context.Context, kv jetstream.KeyValue, prefix string) ([]*T, error) {
	last, err := lastRevision(ctx, kv)
	if err != nil {
		return nil, err
	}
	values := map[string][]byte{}
	if last > 0 {
		w, err := kv.WatchAll(ctx)
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", kv.Bucket(), err)
		}
		defer w.Stop()
		seen := uint64(0)
		initial := true            // before the watcher's own end marker
		var grace <-chan time.Time // after it
		// Read both to the end of the watcher's snapshot (every key's
		// latest value: stopping at the first revision >= last would drop
		// keys rewritten since, which come later) and up to last. The
		// marker alone is not enough: a key of the snapshot rewritten
		// while it is delivered (its old revision removed, History 1) can
		// come after the marker, so once the marker is in, read on up to
		// the bucket's last revision at that moment, which holds every
		// such rewrite.
	read:
		for initial || seen < last {
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("list %s: %w", kv.Bucket(), ctx.Err())
			case <-grace:
				break read // the last revision was purged meanwhile
			case e, ok := <-w.Updates():
				if !ok {
					return nil, fmt.Errorf("list %s: watcher closed", kv.Bucket())
				}
				if e == nil {
					initial = false
					now, err := lastRevision(ctx, kv)
					if err != nil {
						return nil, err
					}
					last = max(last, now)
					grace = time.After(time.Second)
					continue
				}
				seen = max(seen, e.Revision())
				if e.Operation() == jetstream.KeyValuePut {
					values[e.Key()] = e.Value()
				} else {
					delete(values, e.Key())
				}
			}
		}
	}
	keys := make([]string, 0, len(values))
	for k := range values {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	out := make([]*T, 0, len(keys))
	for _, k := range keys {
		var v T
		if err := json.Unmarshal(values[k], &v); err != nil {
			return nil, fmt.Errorf("decode %s: %w", k, err)
		}
		out = append(out, &v)
	}
	return out, nil
}

// lastRevision is the revision of the bucket's last write (0 when empty).
func lastRevision(ctx context.Context, kv jetstream.KeyValue) (uint64, error) {
	st, err := kv.Status(ctx)
	if err != nil {
		return 0, fmt.Errorf("list %s: %w", kv.Bucket(), err)
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return 0, fmt.Errorf("list %s: unexpected status type %T", kv.Bucket(), st)
	}
	return bs.StreamInfo().State.LastSeq, nil
}

// catalogCache keeps an in-memory copy of the catalogue, fed by a watch of
// the bucket and by this process's own writes (so a registry added here is
// visible to the next dispatch at once), each applied only when newer than
// what is held.
type catalogCache struct {
	mu      sync.Mutex
	entries map[string]catalogEntry
	cur     atomic.Pointer[Catalog]
}

type catalogEntry struct {
	rev   uint64
	value []byte // nil: deleted
}

func (c *catalogCache) apply(key string, rev uint64, value []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[key]; ok && e.rev >= rev {
		return
	}
	c.entries[key] = catalogEntry{rev: rev, value: value}
	cat := &Catalog{}
	keys := make([]string, 0, len(c.entries))
	for k := range c.entries {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		e := c.entries[k]
		if e.value == nil {
			continue
		}
		switch kind, _, _ := strings.Cut(k, "."); kind {
		case "registry":
			var r apiv1.Registry
			if json.Unmarshal(e.value, &r) == nil {
				cat.Registries = append(cat.Registries, &r)
			}
		case "cluster":
			var cl apiv1.Cluster
			if json.Unmarshal(e.value, &cl) == nil {
				cat.Clusters = append(cat.Clusters, &cl)
			}
		}
	}
	c.cur.Store(cat)
}

// forget drops key after this process deleted it; the watch's delete
// marker, at a revision above the value's, changes nothing more.
func (c *catalogCache) forget(key string) {
	c.mu.Lock()
	e := c.entries[key]
	c.mu.Unlock()
	c.apply(key, e.rev+1, nil)
}

// Catalog returns the in-memory copy of the catalogue; callers must not
// change it.
func (s *Store) Catalog() *Catalog { return s.cat.cur.Load() }

// watchCatalog feeds the catalogue cache until ctx ends; it returns once the
// current entries are loaded.
func (s *Store) watchCatalog(ctx context.Context) error {
	return bus.Follow(ctx, s.catalog, func(e jetstream.KeyValueEntry) {
		var v []byte
		if e.Operation() == jetstream.KeyValuePut {
			v = e.Value()
		}
		s.cat.apply(e.Key(), e.Revision(), v)
	})
}
