package natstest

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/natsutil"
)

// Cluster is a running JetStream cluster of in-process servers and a client
// connected to all of them.
type Cluster struct {
	// Servers are the cluster's servers, in start order.
	Servers []*server.Server
	// URLs are the servers' client URLs, in the same order.
	URLs []string
	// NC is a client connected to every server, reconnecting to another
	// when one goes down; JS is its JetStream context.
	NC *nats.Conn
	JS jetstream.JetStream
}

// RunCluster starts n JetStream servers clustered over loopback routes, each
// on free ports with its store in a temporary directory, and waits until
// the JetStream meta group has a leader and counts all n servers, so that
// streams of up to n replicas can be created at once. The servers are shut
// down when the test ends.
func RunCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("RunCluster(%d): want at least one server", n)
	}
	// The stores are made first: cleanups run last-registered first, and
	// the servers must be shut down before their stores are removed.
	dirs := make([]string, n)
	for i := range dirs {
		dirs[i] = t.TempDir()
	}
	c := &Cluster{}
	t.Cleanup(func() {
		if c.NC != nil {
			c.NC.Close()
		}
		for _, s := range c.Servers {
			natsutil.Shutdown(s)
		}
	})
	// Clustered JetStream needs its routes configured at start, so the
	// route ports are picked first (clients still get Port -1); every
	// server routes to all, its own address included, which it ignores.
	ports := freePorts(t, n)
	var routes []*url.URL
	for _, p := range ports {
		routes = append(routes, &url.URL{Scheme: "nats-route", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(p))})
	}
	for i := range n {
		opts := &server.Options{
			ServerName: fmt.Sprintf("natstest-%d", i+1),
			Host:       "127.0.0.1",
			Port:       -1,
			NoSigs:     true,
			JetStream:  true,
			StoreDir:   dirs[i],
			Cluster:    server.ClusterOpts{Name: "natstest", Host: "127.0.0.1", Port: ports[i]},
			Routes:     routes,
		}
		s, err := server.NewServer(opts)
		if err != nil {
			t.Fatalf("new clustered nats-server %d: %v", i+1, err)
		}
		go s.Start()
		c.Servers = append(c.Servers, s)
	}
	for i, s := range c.Servers {
		if !s.ReadyForConnections(30 * time.Second) {
			t.Fatalf("clustered nats-server %d not ready within 30s", i+1)
		}
		c.URLs = append(c.URLs, s.ClientURL())
	}
	deadline := time.Now().Add(30 * time.Second)
	for !c.formed(n) {
		if time.Now().After(deadline) {
			t.Fatalf("JetStream cluster of %d did not form within 30s", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.NC, c.JS = c.connect(t)
	return c
}

// formed reports whether a meta leader sees all n servers as current peers.
func (c *Cluster) formed(n int) bool {
	for _, s := range c.Servers {
		if s.JetStreamIsLeader() && len(s.JetStreamClusterPeers()) == n {
			return true
		}
	}
	return false
}

// URL is every server's client URL, comma-separated, as nats.Connect takes
// them.
func (c *Cluster) URL() string { return strings.Join(c.URLs, ",") }

// Connect opens another client connection to the cluster that is closed
// when the test ends.
func (c *Cluster) Connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, js := c.connect(t)
	t.Cleanup(nc.Close)
	return nc, js
}

func (c *Cluster) connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(c.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatalf("connect to the cluster: %v", err)
	}
	js, err := natsutil.JetStream(nc)
	if err != nil {
		nc.Close()
		t.Fatal(err)
	}
	return nc, js
}

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("pick a route port: %v", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}
