package main

import (
	"context"
	"net/http"
	"testing"

	"go.uber.org/zap"
)

// TestUpServesHealthAndReadiness: `ansflow up --ops-addr` serves /healthz
// and a /readyz that checks NATS, every stream and bucket, and the Docker
// Engine of the embedded runner.
func TestUpServesHealthAndReadiness(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ops := freePort(t)
	st, err := startStack(ctx, stackConfig{DataDir: t.TempDir(), NATSAddr: "off", OpsAddr: ops, DockerRunner: true, Pipeline: true, Concurrency: 1}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer st.stop()
	waitReady(t, "ansflow up", "http://"+ops, "[+]nats ok", "[+]jetstream ok", "[+]docker engine default ok")
	resp, err := http.Get("http://" + ops + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz = %d", resp.StatusCode)
	}
}
