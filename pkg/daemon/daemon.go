// Package daemon is what every separately started AnsFlow service shares in
// its main: the flags every service reads (NATS address and credentials,
// logging, the ops listener), one way to turn them into a logger and a NATS
// connection, the process's exit codes, and the ops HTTP listener that
// serves /healthz, /readyz and /metrics (see [Ops]).
//
// A service main is
//
//	func main() { daemon.Main("audit", parseConfig, run) }
//
// where parseConfig registers [Common]'s flags beside its own and run calls
// [Common.Start] for the logger, the connection and the ops listener.
package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/ansflow/ansflow/pkg/envflag"
	"github.com/ansflow/ansflow/pkg/logging"
	"github.com/ansflow/ansflow/pkg/metrics"
	"github.com/ansflow/ansflow/pkg/natsutil"
	"github.com/ansflow/ansflow/pkg/tracing"
)

// Off is the value of --ops-addr that turns the ops listener off.
const Off = "off"

// Common is the configuration every service reads the same way, from the
// same flags and environment variables.
type Common struct {
	// NATSURL lists the NATS servers, comma-separated.
	NATSURL string
	// NATSCreds is the NATS credentials file ("" for none).
	NATSCreds string
	// NATSTokenFile is a file holding the NATS server's token ("" for
	// none), as `ansflow up` writes it; it does not go with NATSCreds.
	NATSTokenFile string
	// NATSCA is the PEM file of the CA of the NATS server's certificate;
	// TLS is required when it is set.
	NATSCA string
	// LogLevel is debug, info, warn or error.
	LogLevel string
	// LogJSON logs JSON lines instead of text.
	LogJSON bool
	// OpsAddr is the ops listener's host:port, or [Off].
	OpsAddr string
	// MetricsPipelineLabel keeps the pipeline label of the metrics
	// ([metrics.Options].PipelineLabel).
	MetricsPipelineLabel bool
}

// Defaults are a service's own defaults of [Common]'s flags.
type Defaults struct {
	// OpsAddr is the default of --ops-addr; each service has its own
	// port so that all of them can run on one host.
	OpsAddr string
	// LogJSON is the default of --log-json.
	LogJSON bool
}

// RegisterFlags registers c's flags on fs, each with its environment
// variable (read through ev) as its default.
func (c *Common) RegisterFlags(fs *flag.FlagSet, ev *envflag.Env, d Defaults) {
	fs.StringVar(&c.NATSURL, "nats", ev.String("ANSFLOW_NATS_URL", "nats://127.0.0.1:4222"), "NATS server URL(s), comma-separated (env ANSFLOW_NATS_URL)")
	fs.StringVar(&c.NATSCreds, "nats-creds", ev.String("ANSFLOW_NATS_CREDS", ""), "NATS credentials file (env ANSFLOW_NATS_CREDS)")
	fs.StringVar(&c.NATSTokenFile, "nats-token-file", ev.String("ANSFLOW_NATS_TOKEN_FILE", ""), "file holding the NATS server's token, such as DATA_DIR/nats.token of `ansflow up` (env ANSFLOW_NATS_TOKEN_FILE)")
	fs.StringVar(&c.NATSCA, "nats-ca", ev.String("ANSFLOW_NATS_CA", ""), "PEM file of the CA of the NATS server's TLS certificate; TLS is required when set (env ANSFLOW_NATS_CA)")
	fs.StringVar(&c.LogLevel, "log-level", ev.String("ANSFLOW_LOG_LEVEL", "info"), "debug, info, warn or error (env ANSFLOW_LOG_LEVEL)")
	fs.BoolVar(&c.LogJSON, "log-json", ev.Bool("ANSFLOW_LOG_JSON", d.LogJSON), "log JSON lines instead of text (env ANSFLOW_LOG_JSON)")
	fs.BoolVar(&c.MetricsPipelineLabel, "metrics-pipeline-label", ev.Bool("ANSFLOW_METRICS_PIPELINE_LABEL", true), "label metrics with the pipeline's name; false bounds their cardinality (env ANSFLOW_METRICS_PIPELINE_LABEL)")
	fs.StringVar(&c.OpsAddr, "ops-addr", ev.String("ANSFLOW_OPS_ADDR", d.OpsAddr), "address of the ops listener serving /healthz, /readyz and /metrics without authentication (keep it off public networks), or off (env ANSFLOW_OPS_ADDR)")
}

// Validate checks c.
func (c *Common) Validate() error {
	if c.NATSURL == "" {
		return errors.New("no NATS URL: set --nats or ANSFLOW_NATS_URL")
	}
	if c.NATSCreds != "" && c.NATSTokenFile != "" {
		return errors.New("--nats-creds and --nats-token-file: give one")
	}
	if c.OpsAddr != Off {
		if _, _, err := net.SplitHostPort(c.OpsAddr); err != nil {
			return fmt.Errorf("--ops-addr %q: want host:port or off: %w", c.OpsAddr, err)
		}
	}
	return nil
}

// Process is a started service's shared parts.
type Process struct {
	// Log is the service's logger, named after it.
	Log *zap.Logger
	// NC is the NATS connection.
	NC *nats.Conn
	// JS is the JetStream context of NC.
	JS jetstream.JetStream
	// Ops serves /healthz, /readyz and /metrics; add the service's
	// readiness checks before [Process.Run].
	Ops *Ops
	// Metrics is the process's registry, served on the ops listener's
	// /metrics; give it to the service's components.
	Metrics *metrics.Metrics

	opsAddr string
	// stopTracing flushes and stops the span export [Common.Start] began.
	stopTracing func(context.Context) error
}

// Start makes the logger of service, starts tracing as "ansflow-"+service
// from the OTEL_* variables ([tracing.Start]; off unless an OTLP endpoint
// is set), connects to NATS as client (the name the server shows) and
// prepares the ops listener with the NATS readiness check. The caller
// closes the process.
func (c *Common) Start(service, client string) (*Process, error) {
	log, err := logging.New(c.LogLevel, c.LogJSON)
	if err != nil {
		return nil, err
	}
	log = log.With(zap.String("service", service))
	stopTracing, err := tracing.Start(context.Background(), "ansflow-"+service)
	if err != nil {
		log.Sync() //nolint:errcheck // stderr
		return nil, err
	}
	if tracing.Enabled() {
		log.Info("tracing: exporting spans over OTLP", zap.String("service_name", "ansflow-"+service))
	}
	fail := func(err error) (*Process, error) {
		_ = stopTracing(context.Background())
		log.Sync() //nolint:errcheck // stderr
		return nil, err
	}
	nc, err := natsutil.Connect(natsutil.ConnectOptions{URL: c.NATSURL, Name: client, CredsFile: c.NATSCreds, TokenFile: c.NATSTokenFile, CAFile: c.NATSCA})
	if err != nil {
		return fail(err)
	}
	js, err := natsutil.JetStream(nc)
	if err != nil {
		nc.Close()
		return fail(err)
	}
	p := &Process{Log: log, NC: nc, JS: js, Ops: NewOps(), Metrics: metrics.New(metrics.Options{PipelineLabel: c.MetricsPipelineLabel}), opsAddr: c.OpsAddr,
		stopTracing: stopTracing}
	p.Ops.Metrics(p.Metrics.Handler())
	p.Ops.Ready("nats", NATSConnected(nc))
	return p, nil
}

// Run runs each of parts and the ops listener until ctx is done or one of
// them fails. A part that returns after ctx is done is a clean stop.
func (p *Process) Run(ctx context.Context, parts ...func(context.Context) error) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, part := range parts {
		g.Go(func() error { return part(gctx) })
	}
	if p.opsAddr != Off {
		g.Go(func() error { return p.Ops.Listen(gctx, p.opsAddr, p.Log) })
	}
	err := g.Wait()
	if err != nil && ctx.Err() != nil {
		p.Log.Info("shutting down", zap.NamedError("reason", context.Cause(ctx)))
		return nil
	}
	return err
}

// Close flushes what the connection still holds (acknowledgements sent
// while stopping), drains it, flushes the spans not exported yet (within 5
// s) and syncs the log.
func (p *Process) Close() {
	if err := p.NC.FlushTimeout(5 * time.Second); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		p.Log.Warn("flush NATS connection", zap.Error(err))
	}
	if err := p.NC.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		p.Log.Warn("drain NATS connection", zap.Error(err))
	}
	if p.stopTracing != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := p.stopTracing(ctx); err != nil {
			p.Log.Warn("stop tracing", zap.Error(err))
		}
		cancel()
	}
	p.Log.Sync() //nolint:errcheck // stderr
}

// Main is a service's main function. parse reads the command line (the
// arguments after the program name, the environment lookup, where usage
// goes); run runs the service until its context ends on SIGINT or SIGTERM.
// It exits 0 after -h, 2 on a configuration error and 1 when run fails,
// printing the error after the service's name.
//
// "SERVICE healthcheck [--ops-addr ADDR]" instead asks the ops listener
// of a running instance (ADDR, default $ANSFLOW_OPS_ADDR) for /readyz and
// exits 0 when it is ready and 1 when not: the container health check of
// images that hold nothing but the service's binary.
func Main[C any](service string, parse func(args []string, lookup func(string) (string, bool), out io.Writer) (C, error), run func(context.Context, C) error) {
	if len(os.Args) > 1 && os.Args[1] == "healthcheck" {
		if err := Healthcheck(os.Args[2:], os.LookupEnv); err != nil {
			fmt.Fprintf(os.Stderr, "%s healthcheck: %v\n", service, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	cfg, err := parse(os.Args[1:], os.LookupEnv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", service, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx, cfg)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", service, err)
		os.Exit(1)
	}
}

// Healthcheck asks the ops listener named by args (--ops-addr) or the
// environment (ANSFLOW_OPS_ADDR) for /readyz: nil when it answers 200. A
// wildcard listen address (":9090", "0.0.0.0:9090") is asked on loopback.
func Healthcheck(args []string, lookup func(string) (string, bool)) error {
	if lookup == nil {
		lookup = func(string) (string, bool) { return "", false }
	}
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	ev := envflag.New(lookup)
	addr := fs.String("ops-addr", ev.String("ANSFLOW_OPS_ADDR", ""), "")
	timeout := fs.Duration("timeout", 5*time.Second, "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *addr == "" || *addr == Off {
		return errors.New("no ops listener: set --ops-addr or ANSFLOW_OPS_ADDR")
	}
	host, port, err := net.SplitHostPort(*addr)
	if err != nil {
		return fmt.Errorf("ops address %q: %w", *addr, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	client := &http.Client{Timeout: *timeout}
	url := "http://" + net.JoinHostPort(host, port) + "/readyz"
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s\n%s", url, resp.Status, body)
	}
	return nil
}
