// Package natsutil starts an embedded nats-server with JetStream and connects
// clients to it or to an external NATS cluster.
package natsutil

import (
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
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
	// Token, when set, is the token every client must present, those in
	// the process included ([ConnectInProcess] with [nats.Token]).
	Token string
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
		Authorization:      cfg.Token,
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

// ReloadFromConfig re-reads the configuration file path of a server started
// by [StartFromConfig] with the same storeDir and listen, and applies what
// may change at run time: accounts and their revocations, permissions, TLS
// certificates. Call it on SIGHUP.
func ReloadFromConfig(s *server.Server, path, storeDir, listen string) error {
	opts, err := configOptions(path, storeDir, listen)
	if err != nil {
		return err
	}
	if err := s.ReloadOptions(opts); err != nil {
		return fmt.Errorf("reload nats-server configuration %s: %w", path, err)
	}
	return nil
}

// configOptions reads the configuration file path and applies the
// overrides of [StartFromConfig].
func configOptions(path, storeDir, listen string) (*server.Options, error) {
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		return nil, fmt.Errorf("nats-server configuration %s: %w", path, err)
	}
	opts.NoSigs = true
	opts.JetStream = true
	if storeDir != "" {
		opts.StoreDir = storeDir
	}
	if listen != "" {
		host, port, err := net.SplitHostPort(listen)
		if err != nil {
			return nil, fmt.Errorf("nats listen address %q: %w", listen, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("nats listen port %q: %w", port, err)
		}
		opts.Host, opts.Port = host, p
	}
	if opts.MaxPayload == 0 {
		opts.MaxPayload = 8 << 20
	}
	return opts, nil
}

// ConnectInProcess connects to s without a socket when s allows it; extra
// options come last (such as [nats.Token] for a server that wants one).
func ConnectInProcess(s *server.Server, name string, extra ...nats.Option) (*nats.Conn, error) {
	opts := append([]nats.Option{nats.Name(name), nats.MaxReconnects(-1), nats.InProcessServer(s)}, extra...)
	nc, err := nats.Connect(s.ClientURL(), opts...)
	if err != nil {
		return nil, fmt.Errorf("connect in-process to nats-server: %w", err)
	}
	return nc, nil
}

// ConnectOptions configures [Connect].
type ConnectOptions struct {
	// URL is the server URL, or several comma-separated.
	URL string
	// Name names the connection in the server's monitoring.
	Name string
	// CredsFile, when set, is a NATS credentials file (a user JWT and its
	// seed), as `ansflow secure init` writes.
	CredsFile string
	// TokenFile, when set, is a file holding the token the server wants
	// (as `ansflow up` writes to its data directory's nats.token); it
	// does not go with CredsFile.
	TokenFile string
	// CAFile, when set, is the PEM file of the CA that signed the server's
	// certificate: the connection then requires TLS and verifies the
	// server with it.
	CAFile string
	// InboxPrefix, when set, replaces "_INBOX" as the prefix of the
	// connection's reply subjects. When empty and CredsFile is set, the
	// prefix is [InboxPrefix] of the credentials' user name if its JWT
	// allows subscribing below it: for an identity of `ansflow secure
	// init`, the only prefix it may subscribe to.
	InboxPrefix string
}

// InboxPrefix is the inbox prefix of the NATS identity named identity:
// its user JWT allows subscribing below it and nowhere else, so no
// identity reads another's replies.
func InboxPrefix(identity string) string { return "_INBOX_" + identity }

// CredsIdentity returns the user name in the credentials file path.
func CredsIdentity(path string) (string, error) {
	uc, err := credsClaims(path)
	if err != nil {
		return "", err
	}
	return uc.Name, nil
}

// credsInboxPrefix is [InboxPrefix] of the credentials' user when its JWT
// allows subscribing there (as `ansflow secure init` issues them), and ""
// for credentials from elsewhere, which keep the default inbox.
func credsInboxPrefix(path string) (string, error) {
	uc, err := credsClaims(path)
	if err != nil {
		return "", err
	}
	if uc.Name == "" {
		return "", nil
	}
	prefix := InboxPrefix(uc.Name)
	if slices.Contains(uc.Sub.Allow, prefix+".>") {
		return prefix, nil
	}
	return "", nil
}

func credsClaims(path string) (*jwt.UserClaims, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read NATS credentials: %w", err)
	}
	tok, err := jwt.ParseDecoratedJWT(b)
	if err != nil {
		return nil, fmt.Errorf("parse NATS credentials %s: %w", path, err)
	}
	uc, err := jwt.DecodeUserClaims(tok)
	if err != nil {
		return nil, fmt.Errorf("decode user JWT of %s: %w", path, err)
	}
	return uc, nil
}

// Connect dials an external NATS server or cluster with o's credentials and
// TLS settings, reconnecting for ever.
func Connect(o ConnectOptions) (*nats.Conn, error) {
	opts := []nats.Option{nats.Name(o.Name), nats.MaxReconnects(-1), nats.ReconnectWait(time.Second)}
	prefix := o.InboxPrefix
	if o.TokenFile != "" {
		if o.CredsFile != "" {
			return nil, fmt.Errorf("NATS token file and credentials file: give one")
		}
		b, err := os.ReadFile(o.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("read NATS token: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return nil, fmt.Errorf("NATS token file %s is empty", o.TokenFile)
		}
		opts = append(opts, nats.Token(tok))
	}
	if o.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(o.CredsFile))
		if prefix == "" {
			var err error
			if prefix, err = credsInboxPrefix(o.CredsFile); err != nil {
				return nil, err
			}
		}
	}
	if prefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(prefix))
	}
	if o.CAFile != "" {
		opts = append(opts, nats.RootCAs(o.CAFile))
	}
	nc, err := nats.Connect(o.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", o.URL, err)
	}
	return nc, nil
}

// StartFromConfig starts a nats-server in this process from the
// configuration file path (as `nats-server -c` reads it, e.g. the one
// `ansflow secure init` writes) and waits until it accepts connections.
// storeDir, when set, replaces the file's JetStream store directory; listen,
// when set, its host:port. Signals are left to the caller (NoSigs).
func StartFromConfig(path, storeDir, listen string, log *zap.Logger) (*server.Server, error) {
	opts, err := configOptions(path, storeDir, listen)
	if err != nil {
		return nil, err
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("new nats-server from %s: %w", path, err)
	}
	if log != nil {
		s.SetLoggerV2(&zapLogger{log.Named("nats").Sugar()}, false, false, false)
	}
	go s.Start()
	if !s.ReadyForConnections(15 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("nats-server from %s not ready within 15s", path)
	}
	return s, nil
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
