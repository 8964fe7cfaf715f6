// Package service assembles the pipeline service: its store, orchestrator
// and HTTP API, over a JetStream connection.
package service

import (
	"context"
	"fmt"
	"net"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/httpserver"
	"github.com/ansflow/ansflow/pkg/metrics"
	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/pkg/source"
	"github.com/ansflow/ansflow/pkg/topology"
	"github.com/ansflow/ansflow/services/pipeline/api"
	"github.com/ansflow/ansflow/services/pipeline/forge"
	"github.com/ansflow/ansflow/services/pipeline/login"
	"github.com/ansflow/ansflow/services/pipeline/notify"
	"github.com/ansflow/ansflow/services/pipeline/orchestrator"
	"github.com/ansflow/ansflow/services/pipeline/schedule"
	"github.com/ansflow/ansflow/services/pipeline/store"
	"github.com/ansflow/ansflow/services/pipeline/ui"
	"github.com/ansflow/ansflow/services/pipeline/webhook"
)

// Config configures the pipeline service.
type Config struct {
	// HTTPAddr is where the API listens (default 127.0.0.1:8080); "" with
	// Listener set uses that listener.
	HTTPAddr     string
	Listener     net.Listener
	Replicas     int
	Orchestrator orchestrator.Config
	// TLS, when set, serves the API and webhooks over HTTPS only.
	TLS httpserver.TLS
	// AdminToken, when set, is registered as an admin token on every
	// pipeline (the --admin-token-file of a standalone service, the
	// admin.token of `ansflow up`). It must have at least
	// [auth.MinSecretLen] characters.
	AdminToken string
	// Authenticators are tried after bearer tokens and login sessions.
	Authenticators []auth.Authenticator
	// Login configures human login (passwords, sessions, OpenID Connect);
	// the zero value serves password login with the defaults.
	Login login.Config
	// SecretsKey encrypts the secret store (--secrets-key-file, or the
	// secrets.key `ansflow up` makes); without it the service keeps no
	// secrets and a step asking for one fails.
	SecretsKey *secret.Key
	// SecretsOldKey, when set, is the previous secrets key: every secret
	// still under it is re-encrypted with SecretsKey at start.
	SecretsOldKey *secret.Key
	// ExternalURL is the service's address as its users reach it, for the
	// links of notifications and commit statuses to a run's page (default:
	// the API's listen address).
	ExternalURL string
	// Notify configures notifications of finished runs; its ExternalURL
	// defaults to the API's listen address.
	Notify notify.Config
	// Forge configures the commit statuses posted back to forges for
	// webhook runs (docs/forges.md); its Replicas default to Replicas.
	Forge forge.Config
	// Metrics is the process's metrics, handed to every component (the
	// orchestrator, webhooks, notifications, commit statuses) whose own
	// Config names none; nil records nothing. The caller serves
	// Metrics.Handler on its ops address.
	Metrics *metrics.Metrics
}

// Service is the running pipeline service.
type Service struct {
	cfg   Config
	js    jetstream.JetStream
	log   *zap.Logger
	Store *store.Store
	Orc   *orchestrator.Orchestrator
	API   *api.Server
	Hooks *webhook.Handler
	// Tokens is the API token store.
	Tokens *auth.TokenStore
	// Login serves human login and authenticates its session cookies.
	Login *login.Service
	Cron  *schedule.Scheduler
	// Secrets is the secret store, nil without [Config.SecretsKey].
	Secrets *secret.Store
	// Notifier announces finished runs.
	Notifier *notify.Notifier
	// Forge posts commit statuses of webhook runs.
	Forge *forge.Reporter
}

// New opens the streams and buckets and builds the service.
func New(ctx context.Context, cfg Config, js jetstream.JetStream, log *zap.Logger) (*Service, error) {
	if cfg.HTTPAddr == "" && cfg.Listener == nil {
		cfg.HTTPAddr = "127.0.0.1:8080"
	}
	if err := bus.EnsureStreams(ctx, js, cfg.Replicas); err != nil {
		return nil, err
	}
	if err := source.Ensure(ctx, js, cfg.Replicas); err != nil {
		return nil, err
	}
	st, err := store.Open(ctx, js, cfg.Replicas)
	if err != nil {
		return nil, err
	}
	log = log.With(zap.String("service", "pipeline"))
	if cfg.Orchestrator.Replicas == 0 {
		cfg.Orchestrator.Replicas = cfg.Replicas
	}
	for _, m := range []**metrics.Metrics{&cfg.Orchestrator.Metrics, &cfg.Notify.Metrics, &cfg.Forge.Metrics} {
		if *m == nil {
			*m = cfg.Metrics
		}
	}
	orc, err := orchestrator.New(ctx, cfg.Orchestrator, js, st, log)
	if err != nil {
		return nil, err
	}
	hooks, err := webhook.New(ctx, st, orc, js, log)
	if err != nil {
		return nil, err
	}
	hooks.Metrics = cfg.Metrics
	sched, err := schedule.New(ctx, st, orc, js, log)
	if err != nil {
		return nil, err
	}
	tokens, err := auth.OpenTokenStore(ctx, js, cfg.Replicas)
	if err != nil {
		return nil, err
	}
	if cfg.AdminToken != "" {
		t, err := tokens.Register(ctx, cfg.AdminToken, auth.TokenSpec{Name: "admin", Role: auth.RoleAdmin}, auth.System.Actor())
		if err != nil {
			return nil, fmt.Errorf("admin token: %w", err)
		}
		log.Info("admin token registered", zap.String("token_id", t.ID))
	}
	if cfg.Login.Replicas == 0 {
		cfg.Login.Replicas = cfg.Replicas
	}
	lsvc, err := login.New(ctx, cfg.Login, js, log)
	if err != nil {
		return nil, err
	}
	a := api.New(st, orc, js, tokens, log, append([]auth.Authenticator{lsvc}, cfg.Authenticators...)...)
	var secrets *secret.Store
	if cfg.SecretsKey != nil {
		kv, err := bus.EnsureKeyValue(ctx, js, topology.MustBucket(topology.BucketSecrets, cfg.Replicas))
		if err != nil {
			return nil, fmt.Errorf("secrets bucket: %w", err)
		}
		secrets = secret.NewStore(kv, cfg.SecretsKey)
		if cfg.SecretsOldKey != nil {
			n, err := secrets.Rekey(ctx, cfg.SecretsOldKey)
			if err != nil {
				return nil, err
			}
			log.Info("secrets re-encrypted with the new secrets key", zap.Int("secrets", n))
		}
		orc.WithSecrets(secrets)
		a.WithSecrets(secrets)
		// A webhook trigger's `secret: NAME` is a stored secret of its
		// pipeline (or a global one).
		hooks.Secrets = webhook.SecretSourceFunc(func(ctx context.Context, pipeline, name string) (string, error) {
			_, value, err := secrets.Resolve(ctx, pipeline, name)
			if err != nil {
				return "", err
			}
			return string(value), nil
		})
	}
	var notifySecrets notify.Secrets
	if secrets != nil {
		notifySecrets = notify.SecretsFunc(func(ctx context.Context, pipeline, name string) (string, error) {
			_, value, err := secrets.Resolve(ctx, pipeline, name)
			return string(value), err
		})
	}
	if cfg.ExternalURL == "" {
		cfg.ExternalURL = defaultExternalURL(cfg)
	}
	for _, u := range []*string{&cfg.Notify.ExternalURL, &cfg.Forge.ExternalURL} {
		if *u == "" {
			*u = cfg.ExternalURL
		}
	}
	if cfg.Notify.Replicas == 0 {
		cfg.Notify.Replicas = cfg.Replicas
	}
	notifier, err := notify.New(ctx, cfg.Notify, js, st, notifySecrets, log)
	if err != nil {
		return nil, err
	}
	if cfg.Forge.Replicas == 0 {
		cfg.Forge.Replicas = cfg.Replicas
	}
	var forgeTokens forge.Tokens
	if secrets != nil {
		forgeTokens = secrets
	}
	statuses, err := forge.New(ctx, cfg.Forge, js, st, forgeTokens, log)
	if err != nil {
		return nil, fmt.Errorf("forge statuses: %w", err)
	}
	a.Mount(lsvc.Routes()...)
	pages, err := ui.New(st, orc, log)
	if err != nil {
		return nil, err
	}
	pages.APIDoc = a.OpenAPI
	a.Mount(pages.Routes()...)
	// Webhooks authenticate by their signatures.
	a.Mount(auth.Route{Pattern: "POST /webhooks/{provider}/{pipeline}", Scope: auth.ScopePublic, Handler: hooks})
	return &Service{cfg: cfg, js: js, log: log, Store: st, Orc: orc, API: a, Hooks: hooks, Cron: sched, Tokens: tokens, Login: lsvc, Secrets: secrets, Notifier: notifier, Forge: statuses}, nil
}

// defaultExternalURL is the API's own address, for links in notifications
// when no external URL is configured.
func defaultExternalURL(cfg Config) string {
	addr := cfg.HTTPAddr
	if cfg.Listener != nil {
		addr = cfg.Listener.Addr().String()
	}
	if cfg.TLS.Enabled() {
		return "https://" + addr
	}
	return "http://" + addr
}

// Run serves the orchestrator and the HTTP API until ctx is done.
func (s *Service) Run(ctx context.Context) error {
	ln := s.cfg.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", s.cfg.HTTPAddr); err != nil {
			return fmt.Errorf("pipeline API listen on %s: %w", s.cfg.HTTPAddr, err)
		}
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.Orc.Run(ctx) })
	g.Go(func() error { return s.Cron.Run(ctx) })
	g.Go(func() error { return s.Notifier.Run(ctx) })
	g.Go(func() error { return s.Forge.Run(ctx) })
	g.Go(func() error { return httpserver.Serve(ctx, "pipeline API", ln, s.API, s.cfg.TLS, s.log) })
	return g.Wait()
}

// Streams names what the service cannot work without, for its readiness
// check: every stream, and the buckets every configuration uses (runs,
// pipelines and their versions, attempts, API tokens), by the streams they
// are kept in. Buckets of optional parts (secrets, notifications, commit
// statuses) are left out: a service configured without them never makes
// them.
func Streams() []string {
	var out []string
	for _, s := range topology.Streams(1) {
		out = append(out, s.Name)
	}
	for _, b := range []string{topology.BucketRuns, topology.BucketPipelines, topology.BucketVersions, topology.BucketAttempts, topology.BucketTokens} {
		out = append(out, topology.KVStream(b))
	}
	return out
}
