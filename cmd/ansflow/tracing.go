package main

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/tracing"
)

// tracingService is the service.name of the embedded stack's spans.
const tracingService = "ansflow"

// startTracing starts the embedded stack's tracing from the OTEL_*
// variables ([tracing.Start]) and returns the function that flushes it,
// within 5 s, when the command ends.
func startTracing(log *zap.Logger) (stop func(), err error) {
	flush, err := tracing.Start(context.Background(), tracingService)
	if err != nil {
		return nil, err
	}
	if tracing.Enabled() {
		log.Info("tracing: exporting spans over OTLP", zap.String("service_name", tracingService))
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := flush(ctx); err != nil {
			log.Warn("stop tracing", zap.Error(err))
		}
	}, nil
}
