// Package httpserver serves AnsFlow's HTTP APIs (the pipeline service's API
// and webhooks, the audit API) with the same limits and the same TLS
// handling: a slow or idle client cannot hold a connection forever, and a
// server given a certificate serves HTTPS only.
package httpserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// Limits of every AnsFlow HTTP server. There is no write timeout, because
// a run's log stream lasts as long as the run.
const (
	ReadHeaderTimeout = 10 * time.Second
	// ReadTimeout bounds reading a whole request, a source upload of up to
	// source.MaxArchiveBytes included.
	ReadTimeout    = 10 * time.Minute
	IdleTimeout    = 2 * time.Minute
	MaxHeaderBytes = 64 << 10
	// ShutdownGrace is how long Serve waits for requests in flight when its
	// context ends.
	ShutdownGrace = 5 * time.Second
)

// TLS names a certificate and its key (PEM files); the zero value serves
// plain HTTP.
type TLS struct {
	CertFile, KeyFile string
}

// Enabled reports whether a certificate is configured.
func (t TLS) Enabled() bool { return t.CertFile != "" || t.KeyFile != "" }

// config loads the certificate, so that a bad one fails at start.
func (t TLS) config() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS certificate %s, key %s: %w", t.CertFile, t.KeyFile, err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// Serve serves h on ln until ctx ends, then shuts down gracefully. what
// names the server in errors and logs.
func Serve(ctx context.Context, what string, ln net.Listener, h http.Handler, t TLS, log *zap.Logger) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: ReadHeaderTimeout, ReadTimeout: ReadTimeout,
		IdleTimeout: IdleTimeout, MaxHeaderBytes: MaxHeaderBytes, ErrorLog: zap.NewStdLog(log.Named("http"))}
	if t.Enabled() {
		cfg, err := t.config()
		if err != nil {
			ln.Close()
			return fmt.Errorf("%s: %w", what, err)
		}
		srv.TLSConfig = cfg
	}
	stopped := make(chan error, 1)
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), ShutdownGrace)
		defer cancel()
		stopped <- srv.Shutdown(sctx)
	}()
	log.Info(what+" listening", zap.String("addr", ln.Addr().String()), zap.Bool("tls", t.Enabled()))
	serve := srv.Serve
	if t.Enabled() {
		serve = func(ln net.Listener) error { return srv.ServeTLS(ln, "", "") }
	}
	if err := serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s: %w", what, err)
	}
	return <-stopped
}

// Listen opens addr and serves h on it as [Serve] does.
func Listen(ctx context.Context, what, addr string, h http.Handler, t TLS, log *zap.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s listen on %s: %w", what, addr, err)
	}
	return Serve(ctx, what, ln, h, t, log)
}
