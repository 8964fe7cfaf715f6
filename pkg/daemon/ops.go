package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/httpserver"
)

// DefaultCheckTimeout bounds each readiness check of one /readyz request
// unless [Ops.Timeout] says otherwise.
const DefaultCheckTimeout = 3 * time.Second

// Check is a readiness check: nil when the part it checks can serve.
type Check func(ctx context.Context) error

type namedCheck struct {
	name  string
	check Check
}

// Ops is a service's operations endpoints, the way Kubernetes components
// serve theirs:
//
//   - GET /healthz answers 200 "ok" while the process serves HTTP at all (a
//     liveness probe: it does not depend on NATS, so a NATS outage does not
//     restart every pod);
//   - GET /readyz runs every readiness check at once, each bounded by
//     [Ops.Timeout], and answers 200 when all pass and 503 when one fails,
//     one line per check ("[+]nats ok", "[-]engine failed: ...");
//   - GET /metrics serves the handler given to [Ops.Metrics], if any.
//
// It is safe for concurrent use.
type Ops struct {
	// Timeout bounds each readiness check; zero means
	// [DefaultCheckTimeout].
	Timeout time.Duration

	mu      sync.RWMutex
	checks  []namedCheck
	metrics http.Handler
}

// NewOps returns Ops with no checks and no metrics.
func NewOps() *Ops { return &Ops{} }

// Ready adds the readiness check name.
func (o *Ops) Ready(name string, c Check) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.checks = append(o.checks, namedCheck{name, c})
}

// Metrics sets the handler of GET /metrics.
func (o *Ops) Metrics(h http.Handler) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.metrics = h
}

// Healthz answers a liveness probe.
func (o *Ops) Healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, "ok\n")
}

// Readyz answers a readiness probe (see [Ops]).
func (o *Ops) Readyz(w http.ResponseWriter, r *http.Request) {
	o.mu.RLock()
	checks := append([]namedCheck(nil), o.checks...)
	o.mu.RUnlock()
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = DefaultCheckTimeout
	}
	errs := make([]error, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(r.Context(), timeout)
			defer cancel()
			errs[i] = runCheck(ctx, c.check, timeout)
		})
	}
	wg.Wait()
	var b strings.Builder
	failed := false
	for i, c := range checks {
		if errs[i] != nil {
			failed = true
			fmt.Fprintf(&b, "[-]%s failed: %s\n", c.name, oneLine(errs[i].Error()))
		} else {
			fmt.Fprintf(&b, "[+]%s ok\n", c.name)
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if failed {
		w.WriteHeader(http.StatusServiceUnavailable)
		b.WriteString("readyz check failed\n")
	} else {
		b.WriteString("readyz check passed\n")
	}
	io.WriteString(w, b.String())
}

// runCheck runs c, turning a panic into an error and a check that outlives
// ctx into ctx's error.
func runCheck(ctx context.Context, c Check, timeout time.Duration) (err error) {
	done := make(chan error, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- fmt.Errorf("check panicked: %v", p)
			}
		}()
		done <- c(ctx)
	}()
	select {
	case err = <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("no answer within %s", timeout)
	}
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// Handler returns the mux of /healthz, /readyz and /metrics.
func (o *Ops) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", o.Healthz)
	mux.HandleFunc("GET /readyz", o.Readyz)
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		o.mu.RLock()
		h := o.metrics
		o.mu.RUnlock()
		if h == nil {
			http.Error(w, "this process serves no metrics", http.StatusNotFound)
			return
		}
		h.ServeHTTP(w, r)
	})
	return mux
}

// Listen serves [Ops.Handler] on addr until ctx is done.
func (o *Ops) Listen(ctx context.Context, addr string, log *zap.Logger) error {
	return httpserver.Listen(ctx, "ops listener", addr, o.Handler(), httpserver.TLS{}, log)
}

// NATSConnected checks that nc is connected (not reconnecting or closed).
func NATSConnected(nc *nats.Conn) Check {
	return func(context.Context) error {
		if st := nc.Status(); st != nats.CONNECTED {
			return fmt.Errorf("connection %s", strings.ToLower(st.String()))
		}
		return nil
	}
}

// Streams checks that each of the streams (key-value buckets are streams
// too: KV_name) answers its info and, on a cluster, has a leader: a stream
// without one takes no writes.
func Streams(js jetstream.JetStream, streams ...string) Check {
	return func(ctx context.Context) error {
		var errs []error
		for _, name := range streams {
			s, err := js.Stream(ctx, name)
			if err != nil {
				errs = append(errs, fmt.Errorf("stream %s: %w", name, err))
				continue
			}
			if ci := s.CachedInfo().Cluster; ci != nil && ci.Leader == "" {
				errs = append(errs, fmt.Errorf("stream %s has no leader", name))
			}
		}
		return errors.Join(errs...)
	}
}
