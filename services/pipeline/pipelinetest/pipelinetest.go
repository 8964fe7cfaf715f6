// Package pipelinetest starts a pipeline service for tests on real parts: an
// in-process JetStream server, the service with its orchestrator running,
// its API on an httptest server, and a runner loop with the scripted
// [runnertest.Engine] serving the docker pool "default", and an admin API
// token.
package pipelinetest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/runner/runnertest"
	"github.com/ansflow/ansflow/services/pipeline/orchestrator"
	"github.com/ansflow/ansflow/services/pipeline/service"
)

// Env is a running pipeline service.
type Env struct {
	NATS *natstest.Server
	Svc  *service.Service
	// Srv serves Svc's API (and webhooks).
	Srv *httptest.Server
	// Engine is the scripted engine behind the docker runner.
	Engine *runnertest.Engine
	// AdminToken is an admin API token; Client sends it on every request.
	AdminToken string
	Client     *http.Client
}

// Token creates an API token with role on pipelines (none: every pipeline)
// and returns its secret.
func (e *Env) Token(t testing.TB, role auth.Role, pipelines ...string) string {
	t.Helper()
	secret, _, err := e.Svc.Tokens.Create(context.Background(), auth.TokenSpec{Name: "test-" + string(role), Role: role, Pipelines: pipelines}, auth.System)
	if err != nil {
		t.Fatal(err)
	}
	return secret
}

// Start starts the service, its orchestrator, its commit status reporter
// and a scripted docker runner, and waits until the runner's consumer
// exists. Everything stops when the test ends.
func Start(t testing.TB) *Env {
	t.Helper()
	return StartWith(t, nil)
}

// StartWith is [Start] with configure, when not nil, changing the
// service's configuration first (such as a secrets key or the forge
// settings).
func StartWith(t testing.TB, configure func(*service.Config)) *Env {
	t.Helper()
	ns := natstest.Run(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	admin, err := auth.NewTokenSecret()
	if err != nil {
		t.Fatal(err)
	}
	e := &Env{NATS: ns, Engine: &runnertest.Engine{}, AdminToken: admin,
		Client: &http.Client{Transport: &auth.BearerTransport{Token: admin}}}
	cfg := runner.Config{Kind: event.KindDocker, Targets: []string{"default"}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	nc, js := ns.Connect(t)
	go func() { _ = runner.New(cfg, nc, js, e.Engine, nil, zap.NewNop()).Run(ctx) }()
	scfg := service.Config{HTTPAddr: "127.0.0.1:0", AdminToken: admin,
		Orchestrator: orchestrator.Config{Policy: orchestrator.Policy{NoRunnerTimeout: 5 * time.Second}}}
	if configure != nil {
		configure(&scfg)
	}
	svc, err := service.New(ctx, scfg, ns.JS, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	e.Svc = svc
	go func() { _ = svc.Orc.Run(ctx) }()
	go func() { _ = svc.Forge.Run(ctx) }()
	e.Srv = httptest.NewServer(svc.API)
	t.Cleanup(e.Srv.Close)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := js.Consumer(ctx, event.StreamSteps, runner.DurableName(event.KindDocker, "default")); err == nil {
			return e
		}
		if time.Now().After(deadline) {
			t.Fatal("the scripted runner did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
