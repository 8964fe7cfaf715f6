package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/ansflow/ansflow/pkg/daemon"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/httpserver"
	"github.com/ansflow/ansflow/pkg/metrics"
	"github.com/ansflow/ansflow/pkg/natsutil"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/pkg/source"
	"github.com/ansflow/ansflow/services/audit/audit"
	auditstore "github.com/ansflow/ansflow/services/audit/store"
	dockerpolicy "github.com/ansflow/ansflow/services/docker-runner/policy"
	"github.com/ansflow/ansflow/services/pipeline/api"
	"github.com/ansflow/ansflow/services/pipeline/forge"
	"github.com/ansflow/ansflow/services/pipeline/login"
	"github.com/ansflow/ansflow/services/pipeline/notify"
	"github.com/ansflow/ansflow/services/pipeline/orchestrator"
	"github.com/ansflow/ansflow/services/pipeline/service"
)

// stackConfig selects what the embedded stack runs.
type stackConfig struct {
	DataDir string
	// OpsAddr is where the ops listener serves /healthz, /readyz and
	// /metrics ("" or "off": nowhere).
	OpsAddr      string
	HTTPAddr     string // "" picks a free loopback port
	NATSAddr     string // "off" for in-process only
	DockerRunner bool
	K8sRunner    bool
	Audit        bool
	Pipeline     bool
	ConfigFile   string
	Concurrency  int
	// AllowLocalClone lets the runners clone file:// URLs and local paths
	// ([source.Fetcher].AllowLocal), and the pipeline service resolve and
	// read them.
	AllowLocalClone bool
	// CloneCA is the PEM file of the CAs the runners and the pipeline
	// service trust for https:// clones instead of the system's.
	CloneCA string
	// Orchestrator configures the pipeline service's orchestrator.
	Orchestrator orchestrator.Config
	// TLS serves the API over HTTPS only.
	TLS httpserver.TLS
	// Login configures human login.
	Login login.Config
	// Forge configures commit statuses.
	Forge forge.Config
	// DockerPolicy is the embedded docker runner's policy (strict when
	// zero).
	DockerPolicy dockerpolicy.Policy
	// KubeContext is the kubeconfig context of cluster "default"; empty
	// means the current context of an explicitly set $KUBECONFIG, or none.
	KubeContext string
	// SecretsKeyFile holds the key of the secret store (default
	// DataDir/secrets.key, made on first start).
	SecretsKeyFile string
	// SecretsIdentityFile holds the embedded runners' secrets identity
	// (default DataDir/secrets.identity, made on first start).
	SecretsIdentityFile string
	// SecretsOldKeyFile, when set, holds the previous secrets key, whose
	// secrets are re-encrypted with the current one at start.
	SecretsOldKeyFile string
	// Notify configures notifications of finished runs.
	Notify notify.Config
	// ExternalURL is the API's address as users reach it, which
	// notifications and commit statuses link to (default: the API's own).
	ExternalURL string
	// Metrics is the process's metrics, shared by every service of the
	// stack (default: a new registry with the pipeline label kept); the
	// stack's Metrics field is the one in use.
	Metrics *metrics.Metrics
}

// stack is the embedded AnsFlow: a nats-server and the services in one
// process.
type stack struct {
	// Clusters says, by cluster name, what the embedded k8s runner serves
	// (Desc) or why it serves nothing (Unserved); clusterIDs maps the
	// config's cluster ids to names.
	Clusters   map[string]servedEngine
	clusterIDs map[string]string
	ns         *server.Server
	nc         *nats.Conn
	URL        string        // API base URL
	done       chan struct{} // closed when every service returned; err says why
	err        error
	cancel     context.CancelFunc
	audit      *audit.Service // nil when the stack runs none
	// Ops serves the stack's /healthz, /readyz and /metrics when
	// stackConfig.OpsAddr asks for it.
	Ops *daemon.Ops
	// Token is the admin token of DataDir/admin.token, which the pipeline
	// service accepts; TokenCreated says this start made it.
	Token        string
	TokenCreated bool
	// svc is the pipeline service (nil when the stack runs none).
	svc *service.Service
	// Metrics is the registry every service of the stack records into;
	// its Handler serves /metrics.
	Metrics *metrics.Metrics
	// identity is the embedded runners' secrets identity; IdentityCreated
	// and KeyCreated say this start made it and the secrets key.
	identity        *secret.Identity
	IdentityCreated bool
	KeyCreated      bool
}

// Files `ansflow up` keeps in its data directory besides admin.token.
const (
	// secretsKeyFile holds the secret store's key.
	secretsKeyFile = "secrets.key"
	// secretsIdentityFile holds the embedded runners' secrets identity.
	secretsIdentityFile = "secrets.identity"
)

// servedEngine is an engine and the pools or clusters it serves.
type servedEngine struct {
	Engine  runner.Engine
	Targets []string
	// Desc says what the engine reaches (a cluster's context and server),
	// for the start-up lines of `ansflow run`.
	Desc string
	// Unserved, when set, says why Targets get no engine (Engine is nil).
	Unserved error
}

// engineFactory builds the runner engines of one kind for the embedded
// stack.
type engineFactory func(ctx context.Context, fc *fileConfig, cfg stackConfig, log *zap.Logger) ([]servedEngine, error)

// engines registers the engines compiled into this binary, by kind.
var engines = map[string]engineFactory{}

func startStack(ctx context.Context, cfg stackConfig, log *zap.Logger) (*stack, error) {
	if cfg.DataDir == "" {
		cfg.DataDir = defaultDataDir()
	}
	fc, err := loadFileConfig(cfg.ConfigFile)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir %s: %w", cfg.DataDir, err)
	}
	// A server listening for outside clients asks every client for the
	// data directory's token; one in the process only needs none.
	var natsToken string
	var inProcess []nats.Option
	if cfg.NATSAddr != "off" {
		if natsToken, err = ensureNATSToken(cfg.DataDir); err != nil {
			return nil, err
		}
		inProcess = append(inProcess, nats.Token(natsToken))
	}
	ns, err := natsutil.StartEmbedded(natsutil.EmbeddedConfig{StoreDir: filepath.Join(cfg.DataDir, "jetstream"), Listen: cfg.NATSAddr, Token: natsToken}, log)
	if err != nil {
		return nil, err
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.New(metrics.Options{PipelineLabel: true})
	}
	st := &stack{ns: ns, done: make(chan struct{}), Metrics: cfg.Metrics, Ops: daemon.NewOps()}
	st.Ops.Metrics(cfg.Metrics.Handler())
	fail := func(err error) (*stack, error) { st.stop(); return nil, err }
	if cfg.DockerRunner || cfg.K8sRunner {
		if cfg.SecretsIdentityFile == "" {
			cfg.SecretsIdentityFile = filepath.Join(cfg.DataDir, secretsIdentityFile)
		}
		if st.identity, st.IdentityCreated, err = secret.LoadOrCreateIdentity(cfg.SecretsIdentityFile); err != nil {
			return fail(err)
		}
	}
	conn := func(name string) (*nats.Conn, error) { return natsutil.ConnectInProcess(ns, name, inProcess...) }
	st.nc, err = conn("ansflow-cli")
	if err != nil {
		return fail(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	st.cancel = cancel
	g, gctx := errgroup.WithContext(ctx)
	st.Ops.Ready("nats", daemon.NATSConnected(st.nc))
	if js, err := natsutil.JetStream(st.nc); err == nil && cfg.Pipeline {
		st.Ops.Ready("jetstream", daemon.Streams(js, service.Streams()...))
	}

	for _, kind := range []string{event.KindDocker, event.KindK8s} {
		if (kind == event.KindDocker && !cfg.DockerRunner) || (kind == event.KindK8s && !cfg.K8sRunner) {
			continue
		}
		factory, ok := engines[kind]
		if !ok {
			continue
		}
		served, err := factory(ctx, fc, cfg, log)
		if kind == event.KindK8s {
			st.recordClusters(fc, served)
		}
		if err != nil {
			log.Warn("runner not started", zap.String("kind", kind), zap.Error(err))
			continue
		}
		for _, se := range served {
			if se.Engine == nil {
				continue
			}
			if p, ok := se.Engine.(pinger); ok {
				st.Ops.Ready(kind+" engine "+strings.Join(se.Targets, ","), func(ctx context.Context) error { _, err := p.Ping(ctx); return err })
			}
			if err := st.startRunner(ctx, gctx, g, conn, kind, se, cfg, log); err != nil {
				return fail(err)
			}
		}
	}
	if cfg.Audit {
		if st.audit, err = startAudit(gctx, g, conn, cfg, log); err != nil {
			return fail(err)
		}
	}
	if cfg.Pipeline {
		nc, err := conn("ansflow-pipeline")
		if err != nil {
			return fail(err)
		}
		js, err := natsutil.JetStream(nc)
		if err != nil {
			return fail(err)
		}
		addr := cfg.HTTPAddr
		if addr == "" {
			addr = "127.0.0.1:0"
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fail(fmt.Errorf("listen on %s: %w", addr, err))
		}
		if st.Token, st.TokenCreated, err = ensureAdminToken(cfg.DataDir); err != nil {
			ln.Close()
			return fail(err)
		}
		if cfg.SecretsKeyFile == "" {
			cfg.SecretsKeyFile = filepath.Join(cfg.DataDir, secretsKeyFile)
		}
		key, created, err := secret.LoadOrCreateKey(cfg.SecretsKeyFile)
		if err != nil {
			ln.Close()
			return fail(err)
		}
		st.KeyCreated = created
		var oldKey *secret.Key
		if cfg.SecretsOldKeyFile != "" {
			if oldKey, err = secret.LoadKey(cfg.SecretsOldKeyFile); err != nil {
				ln.Close()
				return fail(err)
			}
		}
		orc := cfg.Orchestrator
		orc.Clone.AllowLocal = orc.Clone.AllowLocal || cfg.AllowLocalClone
		if orc.Clone.CAFile == "" {
			orc.Clone.CAFile = cfg.CloneCA
		}
		svc, err := service.New(ctx, service.Config{Listener: ln, Orchestrator: orc, AdminToken: st.Token, TLS: cfg.TLS, Login: cfg.Login,
			SecretsKey: key, SecretsOldKey: oldKey, Notify: cfg.Notify, Forge: cfg.Forge, ExternalURL: cfg.ExternalURL,
			Metrics: cfg.Metrics}, js, log)
		if err != nil {
			ln.Close()
			return fail(err)
		}
		if err := applyCatalog(ctx, svc, fc); err != nil {
			ln.Close()
			return fail(err)
		}
		if st.audit != nil {
			svc.API.Mount(st.audit.Routes()...)
			svc.API.Describe(map[string]api.RouteDoc{
				"GET /api/v1/audit": {Summary: "Query the audit trail (?run=&pipeline=&step=&actor=&type=&since=&until=&limit=&cursor=)",
					Response: auditstore.Page{}},
				"GET /api/v1/audit/verify": {Summary: "Verify the audit trail's hash chain", Response: auditstore.VerifyResult{}},
			})
		}
		st.svc = svc
		st.URL = "http://" + ln.Addr().String()
		if cfg.TLS.Enabled() {
			st.URL = "https://" + ln.Addr().String()
		}
		g.Go(func() error { return svc.Run(gctx) })
	}
	if cfg.OpsAddr != "" && cfg.OpsAddr != daemon.Off {
		ln, err := net.Listen("tcp", cfg.OpsAddr)
		if err != nil {
			return fail(fmt.Errorf("ops listener on %s: %w", cfg.OpsAddr, err))
		}
		g.Go(func() error {
			return httpserver.Serve(gctx, "ops listener", ln, st.Ops.Handler(), httpserver.TLS{}, log)
		})
	}
	go func() { st.err = g.Wait(); close(st.done) }()
	return st, nil
}

// pinger is an engine that can say whether what it drives answers (the
// Docker Engine, a cluster's API server): the stack's readiness check.
type pinger interface {
	Ping(ctx context.Context) (string, error)
}

// startRunner runs one runner loop for se in the errgroup and waits until
// its consumers exist, so the first dispatch finds them.
func (s *stack) startRunner(ctx, gctx context.Context, g *errgroup.Group, conn func(string) (*nats.Conn, error),
	kind string, se servedEngine, cfg stackConfig, log *zap.Logger) error {
	nc, err := conn("ansflow-" + kind + "-runner")
	if err != nil {
		return err
	}
	js, err := natsutil.JetStream(nc)
	if err != nil {
		return err
	}
	rc := runner.Config{Kind: kind, Targets: se.Targets, Concurrency: cfg.Concurrency, WorkDir: filepath.Join(cfg.DataDir, "work"),
		Identity: s.identity, Metrics: cfg.Metrics}
	if err := rc.Validate(); err != nil {
		return err
	}
	if err := os.MkdirAll(rc.WorkDir, 0o700); err != nil {
		return err
	}
	r := runner.New(rc, nc, js, se.Engine, &source.Fetcher{JS: js, AllowLocal: cfg.AllowLocalClone, CAFile: cfg.CloneCA}, log.With(zap.String("service", kind+"-runner")))
	g.Go(func() error { return r.Run(gctx) })
	for _, t := range se.Targets {
		if err := waitConsumer(ctx, js, kind, t); err != nil {
			return err
		}
	}
	return nil
}

// waitConsumer waits until the runner's durable consumer for target exists.
func waitConsumer(ctx context.Context, js jetstream.JetStream, kind, target string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := js.Consumer(ctx, event.StreamSteps, runner.DurableName(kind, target))
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s runner for %q did not start: %w", kind, target, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (s *stack) stop() {
	if s.audit != nil {
		// Record what was published before stopping.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = s.audit.WaitCaughtUp(ctx)
		cancel()
	}
	if s.cancel != nil {
		s.cancel()
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
		}
	}
	if s.nc != nil {
		s.nc.Close()
	}
	natsutil.Shutdown(s.ns)
}

func defaultDataDir() string {
	if d := os.Getenv("ANSFLOW_DATA_DIR"); d != "" {
		return d
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "share", "ansflow")
	}
	return ".ansflow"
}

// recordClusters keeps what the k8s engines serve, for [stack.StepCluster].
func (s *stack) recordClusters(fc *fileConfig, served []servedEngine) {
	s.Clusters, s.clusterIDs = map[string]servedEngine{}, map[string]string{}
	for _, se := range served {
		for _, t := range se.Targets {
			s.Clusters[t] = se
		}
	}
	for _, c := range fc.Clusters {
		s.clusterIDs[c.ID], s.clusterIDs[c.Name] = c.Name, c.Name
	}
}

// StepCluster returns the cluster name a step's k8s_cluster (an id or a
// name; "" for the default) selects, and what serves it.
func (s *stack) StepCluster(ref string) (string, servedEngine, bool) {
	name := "default"
	if ref != "" {
		n, ok := s.clusterIDs[ref]
		if !ok {
			return ref, servedEngine{}, false
		}
		name = n
	}
	se, ok := s.Clusters[name]
	return name, se, ok
}
