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
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/httpserver"
	"github.com/ansflow/ansflow/pkg/logging"
	"github.com/ansflow/ansflow/pkg/natsutil"
	"github.com/ansflow/ansflow/services/audit/audit"
)

// config is everything main reads from flags and the environment.
type config struct {
	NATSURL   string
	NATSCreds string
	NATSCA    string
	DB        string
	DataDir   string
	HTTPAddr  string
	LogLevel  string
	LogJSON   bool
	TLS       httpserver.TLS
	Audit     audit.Config
}

func (c *config) validate() error {
	if c.NATSURL == "" {
		return errors.New("--nats is required")
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

func env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func envBool(name string) bool { b, _ := strconv.ParseBool(os.Getenv(name)); return b }

func envInt(name string) int { n, _ := strconv.Atoi(os.Getenv(name)); return n }

func envDuration(name string) time.Duration { d, _ := time.ParseDuration(os.Getenv(name)); return d }

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	fs.StringVar(&c.NATSURL, "nats", env("ANSFLOW_NATS_URL", "nats://127.0.0.1:4222"), "NATS server URL(s), comma-separated [ANSFLOW_NATS_URL]")
	fs.StringVar(&c.NATSCreds, "nats-creds", env("ANSFLOW_NATS_CREDS", ""), "NATS credentials file [ANSFLOW_NATS_CREDS]")
	fs.StringVar(&c.NATSCA, "nats-ca", env("ANSFLOW_NATS_CA", ""), "PEM file of the CA of the NATS server's TLS certificate; TLS is required when set [ANSFLOW_NATS_CA]")
	fs.StringVar(&c.DB, "db", env("ANSFLOW_AUDIT_DB", ""), "audit store DSN: postgres://... or a SQLite file; overrides --data-dir [ANSFLOW_AUDIT_DB]")
	fs.StringVar(&c.DataDir, "data-dir", env("ANSFLOW_DATA_DIR", "ansflow-data"), "data directory; the store is <dir>/"+audit.DBFile+" [ANSFLOW_DATA_DIR]")
	fs.StringVar(&c.HTTPAddr, "http", env("ANSFLOW_AUDIT_HTTP", "127.0.0.1:8081"), "REST API listen address, or off [ANSFLOW_AUDIT_HTTP]")
	fs.StringVar(&c.TLS.CertFile, "tls-cert", env("ANSFLOW_TLS_CERT", ""), "serve the REST API over HTTPS with this certificate (PEM) [ANSFLOW_TLS_CERT]")
	fs.StringVar(&c.TLS.KeyFile, "tls-key", env("ANSFLOW_TLS_KEY", ""), "the certificate's key (PEM) [ANSFLOW_TLS_KEY]")
	fs.BoolVar(&c.Audit.IncludeLogs, "include-logs", envBool("ANSFLOW_AUDIT_INCLUDE_LOGS"), "also record step log chunks [ANSFLOW_AUDIT_INCLUDE_LOGS]")
	fs.DurationVar(&c.Audit.Retention, "retention", envDuration("ANSFLOW_AUDIT_RETENTION"), "prune records older than this into a checkpoint; 0 keeps all [ANSFLOW_AUDIT_RETENTION]")
	fs.IntVar(&c.Audit.Replicas, "replicas", envInt("ANSFLOW_NATS_REPLICAS"), "least stream replicas: missing streams get them, existing ones keep more (default 1) [ANSFLOW_NATS_REPLICAS]")
	fs.IntVar(&c.Audit.BatchSize, "batch-size", 0, "messages per store transaction (default 1000)")
	fs.IntVar(&c.Audit.MaxEventBytes, "max-event-bytes", 0, "larger messages are stored as rejected (default 262144)")
	fs.StringVar(&c.LogLevel, "log-level", env("ANSFLOW_LOG_LEVEL", "info"), "debug, info, warn or error [ANSFLOW_LOG_LEVEL]")
	fs.BoolVar(&c.LogJSON, "log-json", envBool("ANSFLOW_LOG_JSON"), "log JSON lines [ANSFLOW_LOG_JSON]")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	return c, c.validate()
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "audit:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "audit:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config) error {
	log, err := logging.New(cfg.LogLevel, cfg.LogJSON)
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck // stderr
	where := cfg.DB
	if where == "" {
		where = cfg.DataDir
	}
	st, err := audit.OpenStore(where)
	if err != nil {
		return err
	}
	defer st.Close()
	nc, err := natsutil.Connect(natsutil.ConnectOptions{URL: cfg.NATSURL, Name: "ansflow-audit", CredsFile: cfg.NATSCreds, CAFile: cfg.NATSCA})
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := natsutil.JetStream(nc)
	if err != nil {
		return err
	}
	svc := audit.New(cfg.Audit, js, st, log)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return svc.Run(gctx) })
	if cfg.HTTPAddr != "off" {
		mux := http.NewServeMux()
		// Tokens are the pipeline service's: read from its bucket, never
		// written. A refusal is logged (this service may not publish).
		guard := &auth.Guard{Authenticators: []auth.Authenticator{auth.Bearer{Tokens: auth.ReadTokenStore(js)}},
			Denied: func(r *http.Request, d auth.Denial) {
				log.Warn("audit API request denied", zap.String("actor", d.Identity.Actor()), zap.String("route", d.Route.Pattern),
					zap.String("source_ip", r.RemoteAddr), zap.Int("status", d.Status), zap.String("reason", d.Reason))
			}}
		guard.Mount(mux, svc.Routes()...)
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
			if !nc.IsConnected() {
				http.Error(w, "nats disconnected", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
		})
		g.Go(func() error { return httpserver.Listen(gctx, "audit API", cfg.HTTPAddr, mux, cfg.TLS, log) })
	}
	err = g.Wait()
	// Acknowledgements sent while stopping reach the server before close.
	if ferr := nc.FlushTimeout(5 * time.Second); ferr != nil {
		log.Warn("flush NATS connection", zap.Error(ferr))
	}
	return err
}
