// Command audit runs AnsFlow's audit service on its own against a NATS
// server or cluster: it records every event in a hash-chained store and
// serves GET /api/v1/audit and GET /api/v1/audit/verify to holders of the
// pipeline service's API tokens (read from its tokens bucket).
//
//	audit --nats nats://127.0.0.1:4222 --data-dir /var/lib/ansflow --http 127.0.0.1:8081
//	audit --db postgres://user:pass@db/ansflow
//
// Every flag has an environment variable (shown in -h); a flag wins.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/daemon"
	"github.com/ansflow/ansflow/pkg/envflag"
	"github.com/ansflow/ansflow/pkg/httpserver"
	"github.com/ansflow/ansflow/pkg/topology"
	"github.com/ansflow/ansflow/services/audit/audit"
)

// DefaultOpsAddr is the audit service's default --ops-addr.
const DefaultOpsAddr = "127.0.0.1:9091"

// config is everything main reads from flags and the environment.
type config struct {
	daemon.Common
	DB       string
	DataDir  string
	HTTPAddr string
	TLS      httpserver.TLS
	Audit    audit.Config
}

func (c *config) validate() error {
	if err := c.Common.Validate(); err != nil {
		return err
	}
	if c.DB == "" && c.DataDir == "" {
		return errors.New("one of --db or --data-dir is required")
	}
	if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil && c.HTTPAddr != "off" {
		return fmt.Errorf("--http %q: %w", c.HTTPAddr, err)
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	return c.Audit.Validate()
}

// parseFlags reads the command line; each flag's default comes from the
// environment variable named in its usage.
func parseFlags(args []string, lookup func(string) (string, bool), out io.Writer) (*config, error) {
	ev := envflag.New(lookup)
	c := &config{}
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	fs.SetOutput(out)
	c.Common.RegisterFlags(fs, ev, daemon.Defaults{OpsAddr: DefaultOpsAddr})
	fs.StringVar(&c.DB, "db", ev.String("ANSFLOW_AUDIT_DB", ""), "audit store DSN: postgres://... or a SQLite file; overrides --data-dir (env ANSFLOW_AUDIT_DB)")
	fs.StringVar(&c.DataDir, "data-dir", ev.String("ANSFLOW_DATA_DIR", "ansflow-data"), "data directory; the store is <dir>/"+audit.DBFile+" (env ANSFLOW_DATA_DIR)")
	fs.StringVar(&c.HTTPAddr, "http", ev.String("ANSFLOW_AUDIT_HTTP", "127.0.0.1:8081"), "REST API listen address, or off (env ANSFLOW_AUDIT_HTTP)")
	fs.StringVar(&c.TLS.CertFile, "tls-cert", ev.String("ANSFLOW_TLS_CERT", ""), "serve the REST API over HTTPS with this certificate (PEM) (env ANSFLOW_TLS_CERT)")
	fs.StringVar(&c.TLS.KeyFile, "tls-key", ev.String("ANSFLOW_TLS_KEY", ""), "the certificate's key (PEM) (env ANSFLOW_TLS_KEY)")
	fs.BoolVar(&c.Audit.IncludeLogs, "include-logs", ev.Bool("ANSFLOW_AUDIT_INCLUDE_LOGS", false), "also record step log chunks (env ANSFLOW_AUDIT_INCLUDE_LOGS)")
	fs.DurationVar(&c.Audit.Retention, "retention", ev.Duration("ANSFLOW_AUDIT_RETENTION", 0), "prune records older than this into a checkpoint; 0 keeps all (env ANSFLOW_AUDIT_RETENTION)")
	fs.IntVar(&c.Audit.Replicas, "replicas", ev.Int("ANSFLOW_NATS_REPLICAS", 0), "least stream replicas: missing streams get them, existing ones keep more (default 1) (env ANSFLOW_NATS_REPLICAS)")
	fs.IntVar(&c.Audit.BatchSize, "batch-size", 0, "messages per store transaction (default 1000)")
	fs.IntVar(&c.Audit.MaxEventBytes, "max-event-bytes", 0, "larger messages are stored as rejected (default 262144)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if ev.Err() != nil {
		return nil, ev.Err()
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return c, c.validate()
}

func main() { daemon.Main("audit", parseFlags, run) }

func run(ctx context.Context, cfg *config) error {
	p, err := cfg.Common.Start("audit", "ansflow-audit")
	if err != nil {
		return err
	}
	defer p.Close()
	log := p.Log
	where := cfg.DB
	if where == "" {
		where = cfg.DataDir
	}
	st, err := audit.OpenStore(where)
	if err != nil {
		return err
	}
	defer st.Close()
	cfg.Audit.Metrics = p.Metrics
	svc := audit.New(cfg.Audit, p.JS, st, log)
	streams := []string{topology.KVStream(topology.BucketTokens)}
	streams = append(streams, topology.AuditStreams(cfg.Audit.IncludeLogs)...)
	p.Ops.Ready("jetstream", daemon.Streams(p.JS, streams...))
	p.Ops.Ready("store", st.Writable)

	parts := []func(context.Context) error{svc.Run}
	if cfg.HTTPAddr != "off" {
		mux := http.NewServeMux()
		// Tokens are the pipeline service's: read from its bucket, never
		// written. A refusal is logged (this service may not publish).
		guard := &auth.Guard{Authenticators: []auth.Authenticator{auth.Bearer{Tokens: auth.ReadTokenStore(p.JS)}},
			Denied: func(r *http.Request, d auth.Denial) {
				log.Warn("audit API request denied", zap.String("actor", d.Identity.Actor()), zap.String("route", d.Route.Pattern),
					zap.String("source_ip", r.RemoteAddr), zap.Int("status", d.Status), zap.String("reason", d.Reason))
			}}
		guard.Mount(mux, svc.Routes()...)
		mux.HandleFunc("GET /healthz", p.Ops.Healthz)
		mux.HandleFunc("GET /readyz", p.Ops.Readyz)
		parts = append(parts, func(ctx context.Context) error {
			return httpserver.Listen(ctx, "audit API", cfg.HTTPAddr, mux, cfg.TLS, log)
		})
	}
	return p.Run(ctx, parts...)
}
