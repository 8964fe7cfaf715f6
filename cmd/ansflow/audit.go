package main

import (
	"context"
	"net/http"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/nats-io/nats.go"
)

// startAudit runs the audit service in the embedded stack.
func startAudit(ctx context.Context, g *errgroup.Group, conn func(string) (*nats.Conn, error), cfg stackConfig, log *zap.Logger) error {
	return nil
}

func auditHandler() http.Handler { return nil }

func cmdAudit(ctx context.Context, args []string) error {
	return invalid("audit: not wired yet")
}
