// Package natsutil starts an embedded nats-server with JetStream and connects
// clients to it or to an external NATS cluster.
package natsutil

import (
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// EmbeddedConfig configures [StartEmbedded].
type EmbeddedConfig struct {
	// StoreDir holds JetStream's files.
	StoreDir string
	// Listen is host:port for clients outside the process; "" or port -1
	// picks a free port, "off" listens on no port.
	Listen string
}

// StartEmbedded starts a JetStream-enabled nats-server in this process and
// waits until it accepts connections. The server's log goes to log. Signals
// are left to the caller (NoSigs).
func StartEmbedded(cfg EmbeddedConfig, log *zap.Logger) (*server.Server, error) {
	opts := &server.Options{
		ServerName:         "ansflow-embedded",
		JetStream:          true,
		StoreDir:           cfg.StoreDir,
		NoSigs:             true,
		MaxPayload:         8 << 20,
		JetStreamMaxMemory: 256 << 20,
	}
	switch cfg.Listen {
	case "off":
		opts.DontListen = true
	case "":
		opts.Host, opts.Port = "127.0.0.1", -1
	default:
		host, port, err := net.SplitHostPort(cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("nats listen address %q: %w", cfg.Listen, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("nats listen port %q: %w", port, err)
		}
		opts.Host, opts.Port = host, p
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("new nats-server: %w", err)
	}
	if log != nil {
		s.SetLoggerV2(&zapLogger{log.Named("nats").Sugar()}, false, false, false)
	}
	go s.Start()
	if !s.ReadyForConnections(15 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("nats-server not ready within 15s (store %s, listen %q)", cfg.StoreDir, cfg.Listen)
	}
	return s, nil
}

// ConnectInProcess connects to s without a socket when s allows it.
func ConnectInProcess(s *server.Server, name string) (*nats.Conn, error) {
	opts := []nats.Option{nats.Name(name), nats.MaxReconnects(-1), nats.InProcessServer(s)}
	nc, err := nats.Connect(s.ClientURL(), opts...)
	if err != nil {
		return nil, fmt.Errorf("connect in-process to nats-server: %w", err)
	}
	return nc, nil
}

// Connect dials an external NATS server or cluster. credsFile, when set, is a
// NATS credentials file.
func Connect(url, name, credsFile string) (*nats.Conn, error) {
	opts := []nats.Option{nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(time.Second)}
	if credsFile != "" {
		opts = append(opts, nats.UserCredentials(credsFile))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", url, err)
	}
	return nc, nil
}

// JetStream returns a JetStream context for nc.
func JetStream(nc *nats.Conn) (jetstream.JetStream, error) {
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return nil, fmt.Errorf("jetstream context: %w", err)
	}
	return js, nil
}

// Shutdown stops s in order and waits for it.
func Shutdown(s *server.Server) {
	s.Shutdown()
	s.WaitForShutdown()
}

type zapLogger struct{ s *zap.SugaredLogger }

func (l *zapLogger) Noticef(format string, v ...any) { l.s.Debugf(format, v...) }
func (l *zapLogger) Warnf(format string, v ...any)   { l.s.Warnf(format, v...) }
func (l *zapLogger) Fatalf(format string, v ...any)  { l.s.Errorf(format, v...) }
func (l *zapLogger) Errorf(format string, v ...any)  { l.s.Errorf(format, v...) }
func (l *zapLogger) Debugf(format string, v ...any)  { l.s.Debugf(format, v...) }
func (l *zapLogger) Tracef(format string, v ...any)  {}
