// Package natstest starts a real in-process nats-server with JetStream for
// tests, the way nats-server's own RunBasicJetStreamServer does, or a
// JetStream cluster of them ([RunCluster]) for replication and failover.
package natstest

import (
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/natsutil"
)

// Server is a running test server and a client connected to it.
type Server struct {
	*server.Server
	NC       *nats.Conn
	JS       jetstream.JetStream
	StoreDir string
	// InProcess connects clients without a socket, the way the embedded
	// `ansflow up` connects its services.
	InProcess bool
}

// Run starts a JetStream server on a free loopback port with its store in a
// temporary directory; it is shut down when the test ends.
func Run(t testing.TB) *Server {
	t.Helper()
	return RunAt(t, t.TempDir())
}

// RunInProcess is [Run] with clients connected in-process instead of over
// loopback TCP, as in the embedded `ansflow up`.
func RunInProcess(t testing.TB) *Server {
	t.Helper()
	return start(t, t.TempDir(), true)
}

// RunAt is [Run] with a given store directory, so a test can restart a
// server on the same data.
func RunAt(t testing.TB, dir string) *Server {
	t.Helper()
	return start(t, dir, false)
}

func start(t testing.TB, dir string, inProcess bool) *Server {
	t.Helper()
	s, err := natsutil.StartEmbedded(natsutil.EmbeddedConfig{StoreDir: dir}, nil)
	if err != nil {
		t.Fatalf("start nats-server: %v", err)
	}
	nc, err := dial(s, inProcess)
	if err != nil {
		s.Shutdown()
		t.Fatalf("connect: %v", err)
	}
	js, err := natsutil.JetStream(nc)
	if err != nil {
		t.Fatal(err)
	}
	ts := &Server{Server: s, NC: nc, JS: js, StoreDir: dir, InProcess: inProcess}
	t.Cleanup(func() {
		nc.Close()
		natsutil.Shutdown(s)
	})
	return ts
}

// Connect opens another client connection that is closed when the test ends.
func (s *Server) Connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := dial(s.Server, s.InProcess)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := natsutil.JetStream(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

func dial(s *server.Server, inProcess bool) (*nats.Conn, error) {
	if inProcess {
		return natsutil.ConnectInProcess(s, "natstest")
	}
	return nats.Connect(s.ClientURL())
}
