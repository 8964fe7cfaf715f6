package login

import (
	"sync"
	"time"
)

// throttle counts failed logins per key (a user name or a client address)
// in a sliding window. It keeps no more than max failures per key and
// forgets keys whose failures all left the window, so an attacker spraying
// names costs it bounded memory per live key. It is safe for concurrent
// use; time is passed in, so its rules are tested without a clock.
//
// The counts live in this process: n pipeline instances behind a load
// balancer allow up to n times max attempts per window (docs/security.md).
type throttle struct {
	max    int
	window time.Duration

	mu       sync.Mutex
	failures map[string][]time.Time // oldest first, at most max
	sweep    time.Time
}

func newThrottle(max int, window time.Duration) *throttle {
	return &throttle{max: max, window: window, failures: map[string][]time.Time{}}
}

// blocked returns how long until key may try again; 0 means now.
func (t *throttle) blocked(now time.Time, key string) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.live(now, key)
	if len(f) < t.max {
		return 0
	}
	// Blocked until the oldest of the last max failures leaves the window.
	wait := f[len(f)-t.max].Add(t.window).Sub(now)
	if wait < time.Second {
		wait = time.Second
	}
	return wait
}

// fail records a failure of key.
func (t *throttle) fail(now time.Time, key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := append(t.live(now, key), now)
	if len(f) > t.max {
		f = f[len(f)-t.max:]
	}
	t.failures[key] = f
	if now.Sub(t.sweep) > t.window {
		t.sweep = now
		for k := range t.failures {
			t.live(now, k)
		}
	}
}

// reset forgets key's failures (a successful login of that user).
func (t *throttle) reset(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.failures, key)
}

// live drops key's failures older than the window and returns the rest.
func (t *throttle) live(now time.Time, key string) []time.Time {
	f := t.failures[key]
	i := 0
	for i < len(f) && now.Sub(f[i]) >= t.window {
		i++
	}
	f = f[i:]
	if len(f) == 0 {
		delete(t.failures, key)
		return nil
	}
	t.failures[key] = f
	return f
}
