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

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/httpserver"
	"github.com/ansflow/ansflow/pkg/source"
	"github.com/ansflow/ansflow/services/pipeline/api"
	"github.com/ansflow/ansflow/services/pipeline/orchestrator"
	"github.com/ansflow/ansflow/services/pipeline/schedule"
	"github.com/ansflow/ansflow/services/pipeline/store"
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
	Cron  *schedule.Scheduler
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
	orc, err := orchestrator.New(ctx, cfg.Orchestrator, js, st, log)
	if err != nil {
		return nil, err
	}
	hooks, err := webhook.New(ctx, st, orc, js, log)
	if err != nil {
		return nil, err
	}
	sched, err := schedule.New(ctx, st, orc, js, log)
	if err != nil {
		return nil, err
	}
	a := api.New(st, orc, js, log)
	a.Handle("POST /webhooks/{provider}/{pipeline}", hooks)
	return &Service{cfg: cfg, js: js, log: log, Store: st, Orc: orc, API: a, Hooks: hooks, Cron: sched}, nil
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
	g.Go(func() error { return httpserver.Serve(ctx, "pipeline API", ln, s.API, s.cfg.TLS, s.log) })
	return g.Wait()
}
