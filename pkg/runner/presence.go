package runner

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/topology"
)

// RunnersBucket holds one entry per runner, rewritten every heartbeat. An
// entry not rewritten for [RunnerInfo.OfflineAfter] is a runner that is
// gone; the bucket forgets entries a day old.
const RunnersBucket = topology.BucketRunners

// RunnersBucketTTL is how long the runners bucket keeps an entry that is no
// longer rewritten, so a pool's last sighting survives its runners.
const RunnersBucketTTL = topology.RunnersTTL

// Version is reported by runners in their presence entry.
var Version = "dev"

// RunnerInfo is what a runner announces about itself, and what `ansflow
// runners list` shows.
type RunnerInfo struct {
	ID    string   `json:"id"`
	Kind  string   `json:"kind"`
	Pools []string `json:"pools"`
	// Slots and Busy count attempts over every pool served; PoolSlots
	// is each pool's share (a runner runs that many of each pool's steps
	// at once) and BusyByPool what each pool uses of it.
	Slots      int            `json:"slots"`
	Busy       int            `json:"busy"`
	PoolSlots  int            `json:"pool_slots,omitempty"`
	BusyByPool map[string]int `json:"busy_by_pool,omitempty"`
	Version    string         `json:"version"`
	StartedAt  time.Time      `json:"started_at"`
	LastSeen   time.Time      `json:"last_seen"`
	// Interval is the runner's heartbeat period.
	Interval time.Duration `json:"interval"`
	// Stopped is set by a runner that shut down cleanly.
	Stopped bool `json:"stopped,omitempty"`
	// SecretsKey is the public key (X25519, standard base64) of the
	// runner's secrets identity: the pipeline service seals the secrets of
	// its pools' steps to it (package secret).
	SecretsKey string `json:"secrets_key,omitempty"`
}

// Online reports whether the runner was heard from recently enough at now:
// within three heartbeats.
func (ri *RunnerInfo) Online(now time.Time) bool {
	return !ri.Stopped && now.Sub(ri.LastSeen) <= ri.OfflineAfter()
}

// OfflineAfter is how long after its last heartbeat a runner counts as gone.
func (ri *RunnerInfo) OfflineAfter() time.Duration {
	iv := ri.Interval
	if iv <= 0 {
		iv = 5 * time.Second
	}
	return 3 * iv
}

// Serves reports whether the runner serves target of kind.
func (ri *RunnerInfo) Serves(kind, target string) bool {
	if ri.Kind != kind {
		return false
	}
	for _, p := range ri.Pools {
		if p == target {
			return true
		}
	}
	return false
}

func presenceKey(kind, id string) string { return kind + "." + event.Token(id) }

// PoolStatus sums up the runners of one pool (docker) or cluster (k8s).
type PoolStatus struct {
	Kind, Target string
	// Online is the number of runners online; Slots and Busy are theirs.
	Online, Slots, Busy int
	// LastSeen is the last heartbeat of any runner of the pool, zero if none
	// was seen.
	LastSeen time.Time
}

// Reason says why a step of the pool is still waiting, in words for users.
func (p PoolStatus) Reason() string {
	word := "pool"
	if p.Kind == event.KindK8s {
		word = "cluster"
	}
	switch {
	case p.Online == 0:
		return fmt.Sprintf("no runner of %s %s %q online", p.Kind, word, p.Target)
	case p.Busy >= p.Slots:
		return fmt.Sprintf("%d of %d slots busy in %s %s %q", p.Busy, p.Slots, p.Kind, word, p.Target)
	default:
		return fmt.Sprintf("waiting for a runner of %s %s %q to take it (%d of %d slots busy)", p.Kind, word, p.Target, p.Busy, p.Slots)
	}
}

// Directory follows the runners bucket and answers, from memory, which
// runners are online and how busy each pool is. Create it with [WatchRunners].
type Directory struct {
	mu      sync.Mutex
	runners map[string]RunnerInfo
	now     func() time.Time
}

// WatchRunners follows kv (the [RunnersBucket]) until ctx ends. It returns
// once the bucket's current entries are loaded.
func WatchRunners(ctx context.Context, kv jetstream.KeyValue) (*Directory, error) {
	d := &Directory{runners: map[string]RunnerInfo{}, now: time.Now}
	if err := bus.Follow(ctx, kv, d.observe); err != nil {
		return nil, err
	}
	return d, nil
}

func (d *Directory) observe(e jetstream.KeyValueEntry) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e.Operation() != jetstream.KeyValuePut {
		delete(d.runners, e.Key())
		return
	}
	var ri RunnerInfo
	if json.Unmarshal(e.Value(), &ri) != nil {
		return
	}
	d.runners[e.Key()] = ri
}

// Runners lists every runner the bucket remembers, online ones first.
func (d *Directory) Runners() []RunnerInfo {
	now := d.now()
	d.mu.Lock()
	out := make([]RunnerInfo, 0, len(d.runners))
	for _, ri := range d.runners {
		out = append(out, ri)
	}
	d.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if a, b := out[i].Online(now), out[j].Online(now); a != b {
			return a
		}
		if out[i].Kind != out[j].Kind {
			return out[i].Kind < out[j].Kind
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Pool sums up the runners serving target of kind at now.
func (d *Directory) Pool(kind, target string, now time.Time) PoolStatus {
	p := PoolStatus{Kind: kind, Target: target}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, ri := range d.runners {
		if !ri.Serves(kind, target) {
			continue
		}
		if ri.LastSeen.After(p.LastSeen) {
			p.LastSeen = ri.LastSeen
		}
		if ri.Online(now) {
			p.Online++
			if ri.PoolSlots > 0 {
				p.Slots += ri.PoolSlots
				p.Busy += ri.BusyByPool[target]
			} else {
				p.Slots += ri.Slots
				p.Busy += ri.Busy
			}
		}
	}
	return p
}

// Known sums up, at now, every pool or cluster that a runner the bucket
// remembers serves, online or not, sorted by kind and target.
func (d *Directory) Known(now time.Time) []PoolStatus {
	d.mu.Lock()
	seen := map[[2]string]bool{}
	var keys [][2]string
	for _, ri := range d.runners {
		for _, p := range ri.Pools {
			if k := [2]string{ri.Kind, p}; !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
	}
	d.mu.Unlock()
	sort.Slice(keys, func(i, j int) bool {
		if keys[i][0] != keys[j][0] {
			return keys[i][0] < keys[j][0]
		}
		return keys[i][1] < keys[j][1]
	})
	out := make([]PoolStatus, 0, len(keys))
	for _, k := range keys {
		out = append(out, d.Pool(k[0], k[1], now))
	}
	return out
}

// SecretKeys returns the distinct secrets public keys announced by the
// runners the bucket remembers serving target of kind, sorted: a secret
// sealed to all of them opens on whichever runner of the pool claims the
// step.
func (d *Directory) SecretKeys(kind, target string) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for _, ri := range d.runners {
		if ri.Serves(kind, target) && ri.SecretsKey != "" && !seen[ri.SecretsKey] {
			seen[ri.SecretsKey] = true
			out = append(out, ri.SecretsKey)
		}
	}
	sort.Strings(out)
	return out
}

// Pools is a point-in-time view of runner pools for a decision; nil
// answers that nothing is known.
type Pools interface {
	Pool(kind, target string, now time.Time) PoolStatus
}
