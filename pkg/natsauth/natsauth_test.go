package natsauth_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsauth"
	"github.com/ansflow/ansflow/pkg/natsutil"
	"github.com/ansflow/ansflow/pkg/topology"
)

var pools = topology.Pools{Docker: []string{"a", "b"}, K8s: []string{"c1"}}

// secureServer writes a secure directory and starts a nats-server from its
// nats.conf, on a free loopback port.
func secureServer(t *testing.T) (dir string, s *server.Server) {
	t.Helper()
	dir = t.TempDir()
	if err := natsauth.Init(natsauth.InitConfig{Dir: dir, Pools: pools}); err != nil {
		t.Fatal(err)
	}
	s, err := natsutil.StartFromConfig(filepath.Join(dir, natsauth.ConfFile), storeDirOf(dir), "127.0.0.1:-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { natsutil.Shutdown(s) })
	return dir, s
}

// storeDirOf is the JetStream directory of the server of dir in tests.
func storeDirOf(dir string) string { return filepath.Join(dir, "test-store") }

// client is one identity's connection and the permission errors the
// server reported to it.
type client struct {
	nc *nats.Conn
	js jetstream.JetStream

	mu     sync.Mutex
	denied []string
}

func connect(t *testing.T, dir string, s *server.Server, identity string) *client {
	t.Helper()
	c := &client{}
	creds := filepath.Join(dir, natsauth.CredsFile(identity))
	id, err := natsutil.CredsIdentity(creds)
	if err != nil || id != identity {
		t.Fatalf("creds identity %q, %v; want %q", id, err, identity)
	}
	nc, err := nats.Connect(s.ClientURL(), nats.UserCredentials(creds), nats.RootCAs(filepath.Join(dir, natsauth.CAFile)),
		nats.CustomInboxPrefix(natsutil.InboxPrefix(identity)), nats.PermissionErrOnSubscribe(true),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrPermissionViolation) {
				c.mu.Lock()
				c.denied = append(c.denied, err.Error())
				c.mu.Unlock()
			}
		}))
	if err != nil {
		t.Fatalf("connect as %s: %v", identity, err)
	}
	t.Cleanup(nc.Close)
	c.nc = nc
	if c.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	return c
}

// expectDenied runs op, which must fail, and waits for the server's
// permissions violation naming subject.
func (c *client) expectDenied(t *testing.T, what, subject string, op func(ctx context.Context) error) {
	t.Helper()
	// A denied request is dropped, so the call only times out.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := op(ctx); err == nil {
		t.Errorf("%s: allowed, want a permission error", what)
		return
	}
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		c.mu.Lock()
		for _, d := range c.denied {
			if strings.Contains(d, subject) {
				c.mu.Unlock()
				return
			}
		}
		got := append([]string(nil), c.denied...)
		c.mu.Unlock()
		if time.Now().After(deadline) {
			t.Errorf("%s: no permissions violation on %q; got %q", what, subject, got)
			return
		}
	}
}

func TestInitRefusesToReplaceKeys(t *testing.T) {
	dir := t.TempDir()
	if err := natsauth.Init(natsauth.InitConfig{Dir: dir, Pools: pools}); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, natsauth.CredsFile(natsauth.Pipeline)))
	if err := natsauth.Init(natsauth.InitConfig{Dir: dir, Pools: pools}); !errors.Is(err, natsauth.ErrExists) {
		t.Fatalf("second init: %v, want ErrExists", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, natsauth.CredsFile(natsauth.Pipeline)))
	if string(before) != string(after) {
		t.Fatal("refused init changed the pipeline credentials")
	}
	if err := natsauth.Init(natsauth.InitConfig{Dir: dir, Pools: pools, Force: true}); err != nil {
		t.Fatalf("forced init: %v", err)
	}
	for _, id := range []string{"pipeline", "audit", "provisioner", "docker-a", "docker-b", "k8s-c1"} {
		fi, err := os.Stat(filepath.Join(dir, natsauth.CredsFile(id)))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s creds mode %v, want 0600", id, fi.Mode().Perm())
		}
	}
}

func TestPlainAndAnonymousConnectionsRefused(t *testing.T) {
	dir, s := secureServer(t)
	// Without the CA the server's certificate is not trusted.
	if nc, err := nats.Connect(s.ClientURL(), nats.UserCredentials(filepath.Join(dir, natsauth.CredsFile(natsauth.Pipeline)))); err == nil {
		nc.Close()
		t.Error("connection without the CA accepted")
	}
	// TLS without credentials is not authenticated.
	nc, err := nats.Connect(s.ClientURL(), nats.RootCAs(filepath.Join(dir, natsauth.CAFile)))
	if err == nil {
		nc.Close()
		t.Fatal("connection without credentials accepted")
	}
	if !errors.Is(err, nats.ErrAuthorization) && !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Errorf("connection without credentials: %v, want an authorization error", err)
	}
}

func TestLeastPrivilege(t *testing.T) {
	dir, s := secureServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	prov := connect(t, dir, s, natsauth.Provisioner)
	if err := natsauth.Provision(ctx, prov.js, natsauth.ProvisionConfig{Pools: pools}); err != nil {
		t.Fatalf("provision: %v", err)
	}
	// Provisioning twice changes nothing and fails nothing.
	if err := natsauth.Provision(ctx, prov.js, natsauth.ProvisionConfig{Pools: pools}); err != nil {
		t.Fatalf("provision again: %v", err)
	}
	prov.expectDenied(t, "provisioner publishes an event", "ansflow.events.step.completed.r1", func(ctx context.Context) error {
		_, err := prov.js.Publish(ctx, "ansflow.events.step.completed.r1", []byte("{}"))
		return err
	})

	prov.expectDenied(t, "provisioner pulls step requests", "$JS.API.CONSUMER.MSG.NEXT."+event.StreamSteps+".runner-docker-a", func(ctx context.Context) error {
		_, err := prov.nc.RequestWithContext(ctx, "$JS.API.CONSUMER.MSG.NEXT."+event.StreamSteps+".runner-docker-a", []byte(`{"batch":1,"expires":500000000}`))
		return err
	})

	pipe := connect(t, dir, s, natsauth.Pipeline)
	runA := connect(t, dir, s, natsauth.DockerIdentity("a"))
	aud := connect(t, dir, s, natsauth.Audit)

	// What the pipeline service does: write run state, request steps.
	runs, err := pipe.js.KeyValue(ctx, topology.BucketRuns)
	if err != nil {
		t.Fatalf("pipeline binds the runs bucket: %v", err)
	}
	if _, err := runs.Put(ctx, "r1", []byte(`{"id":"r1"}`)); err != nil {
		t.Fatalf("pipeline writes a run: %v", err)
	}
	for _, pool := range []string{"a", "b"} {
		if _, err := pipe.js.Publish(ctx, event.StepRequestedSubject(event.KindDocker, pool), []byte("req-"+pool)); err != nil {
			t.Fatalf("pipeline requests a step of pool %s: %v", pool, err)
		}
	}
	tokens, err := pipe.js.KeyValue(ctx, topology.BucketTokens)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tokens.Put(ctx, "t1", []byte(`{"hash":"x"}`)); err != nil {
		t.Fatalf("pipeline writes a token: %v", err)
	}
	// The pipeline service's readers: ordered consumers on logs and events.
	if _, err := pipe.js.OrderedConsumer(ctx, event.StreamLogs, jetstream.OrderedConsumerConfig{}); err != nil {
		t.Fatalf("pipeline reads logs: %v", err)
	}
	pipe.expectDenied(t, "pipeline deletes a stream", "$JS.API.STREAM.DELETE."+event.StreamSteps, func(ctx context.Context) error {
		return pipe.js.DeleteStream(ctx, event.StreamSteps)
	})
	pipe.expectDenied(t, "pipeline creates a stream", "$JS.API.STREAM.CREATE.X", func(ctx context.Context) error {
		_, err := pipe.js.CreateStream(ctx, jetstream.StreamConfig{Name: "X", Subjects: []string{"x.>"}})
		return err
	})
	pipe.expectDenied(t, "pipeline reads step requests", "$JS.API.CONSUMER.CREATE."+event.StreamSteps, func(ctx context.Context) error {
		_, err := pipe.js.CreateOrUpdateConsumer(ctx, event.StreamSteps, jetstream.ConsumerConfig{Durable: "spy"})
		return err
	})

	// What a runner of pool a does: fetch and ack its pool's request,
	// heartbeat its lease and presence, watch cancels, report.
	consA, err := runA.js.Consumer(ctx, event.StreamSteps, topology.RunnerDurable(event.KindDocker, "a"))
	if err != nil {
		t.Fatalf("runner a binds its consumer: %v", err)
	}
	batch, err := consA.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for m := range batch.Messages() {
		got = append(got, string(m.Data()))
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatalf("runner a acks: %v", err)
		}
	}
	if len(got) != 1 || got[0] != "req-a" {
		t.Fatalf("runner a fetched %q, want [req-a]", got)
	}
	attempts, err := runA.js.KeyValue(ctx, topology.BucketAttempts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attempts.Put(ctx, "r1.s1.1", []byte("lease")); err != nil {
		t.Fatalf("runner a heartbeats a lease: %v", err)
	}
	if _, err := attempts.Get(ctx, "r1.s1.1"); err != nil {
		t.Fatalf("runner a reads a lease: %v", err)
	}
	presence, err := runA.js.KeyValue(ctx, topology.BucketRunners)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := presence.Put(ctx, "runner-a", []byte("{}")); err != nil {
		t.Fatalf("runner a announces itself: %v", err)
	}
	cancels, err := runA.js.KeyValue(ctx, topology.BucketCancels)
	if err != nil {
		t.Fatal(err)
	}
	w, err := cancels.WatchAll(ctx)
	if err != nil {
		t.Fatalf("runner a watches cancels: %v", err)
	}
	select {
	case <-w.Updates():
	case <-ctx.Done():
		t.Fatal("cancel watch never caught up")
	}
	_ = w.Stop()
	if _, err := runA.js.Publish(ctx, event.LifecycleSubject(event.TypeStepCompleted, "r1"), []byte("{}")); err != nil {
		t.Fatalf("runner a reports a step: %v (denied %q)", err, runA.denied)
	}
	if _, err := runA.js.Publish(ctx, event.LogSubject("r1", "s1"), []byte("log")); err != nil {
		t.Fatalf("runner a publishes a log: %v", err)
	}

	// What it may not do.
	runA.expectDenied(t, "runner a binds pool b's consumer", "$JS.API.CONSUMER.INFO."+event.StreamSteps+".runner-docker-b", func(ctx context.Context) error {
		_, err := runA.js.Consumer(ctx, event.StreamSteps, topology.RunnerDurable(event.KindDocker, "b"))
		return err
	})
	runA.expectDenied(t, "runner a fetches pool b's requests", "$JS.API.CONSUMER.MSG.NEXT."+event.StreamSteps+".runner-docker-b", func(ctx context.Context) error {
		_, err := runA.nc.RequestWithContext(ctx, "$JS.API.CONSUMER.MSG.NEXT."+event.StreamSteps+".runner-docker-b", []byte(`{"batch":1,"expires":500000000}`))
		return err
	})
	runA.expectDenied(t, "runner a reads run state", "$JS.API.STREAM.INFO.KV_"+topology.BucketRuns, func(ctx context.Context) error {
		_, err := runA.js.KeyValue(ctx, topology.BucketRuns)
		return err
	})
	runA.expectDenied(t, "runner a writes run state", "$KV."+topology.BucketRuns+".r1", func(ctx context.Context) error {
		_, err := runA.js.Publish(ctx, "$KV."+topology.BucketRuns+".r1", []byte("forged"))
		return err
	})
	runA.expectDenied(t, "runner a deletes a stream", "$JS.API.STREAM.DELETE."+event.StreamEvents, func(ctx context.Context) error {
		return runA.js.DeleteStream(ctx, event.StreamEvents)
	})
	runA.expectDenied(t, "runner a creates a stream", "$JS.API.STREAM.CREATE.Y", func(ctx context.Context) error {
		_, err := runA.js.CreateStream(ctx, jetstream.StreamConfig{Name: "Y", Subjects: []string{"y.>"}})
		return err
	})
	runA.expectDenied(t, "runner a requests a step", "ansflow.step.requested.docker.b", func(ctx context.Context) error {
		_, err := runA.js.Publish(ctx, event.StepRequestedSubject(event.KindDocker, "b"), []byte("forged"))
		return err
	})
	runA.expectDenied(t, "runner a reads the tokens", "$JS.API.STREAM.INFO.KV_"+topology.BucketTokens, func(ctx context.Context) error {
		_, err := runA.js.KeyValue(ctx, topology.BucketTokens)
		return err
	})
	for _, other := range []string{natsauth.DockerIdentity("b"), natsauth.Pipeline, "_INBOX"} {
		subj := natsutil.InboxPrefix(other) + ".>"
		if other == "_INBOX" {
			subj = "_INBOX.>"
		}
		runA.expectDenied(t, "runner a subscribes to "+subj, subj, func(context.Context) error {
			sub, err := runA.nc.SubscribeSync(subj)
			if err != nil {
				return err
			}
			defer sub.Unsubscribe()
			if _, err := sub.NextMsg(time.Second); !errors.Is(err, nats.ErrTimeout) {
				return err // the server's denial, with PermissionErrOnSubscribe
			}
			return nil
		})
	}

	// The audit service reads its consumers and the tokens, and nothing
	// else; it publishes nothing.
	audEvents, err := aud.js.Consumer(ctx, event.StreamEvents, topology.AuditDurable(topology.DefaultAuditPrefix, event.StreamEvents))
	if err != nil {
		t.Fatalf("audit binds its consumer: %v", err)
	}
	m, err := audEvents.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatalf("audit reads an event: %v", err)
	}
	if err := m.DoubleAck(ctx); err != nil {
		t.Fatalf("audit acks: %v", err)
	}
	audTokens, err := aud.js.KeyValue(ctx, topology.BucketTokens)
	if err != nil {
		t.Fatalf("audit binds the tokens: %v", err)
	}
	if _, err := audTokens.Get(ctx, "t1"); err != nil {
		t.Fatalf("audit reads a token: %v", err)
	}
	aud.expectDenied(t, "audit publishes an event", "ansflow.events.run.completed.r1", func(ctx context.Context) error {
		_, err := aud.js.Publish(ctx, "ansflow.events.run.completed.r1", []byte("{}"))
		return err
	})
	aud.expectDenied(t, "audit writes a token", "$KV."+topology.BucketTokens+".t2", func(ctx context.Context) error {
		_, err := audTokens.Put(ctx, "t2", []byte("forged"))
		return err
	})
	aud.expectDenied(t, "audit deletes a stream", "$JS.API.STREAM.DELETE."+event.StreamDLQ, func(ctx context.Context) error {
		return aud.js.DeleteStream(ctx, event.StreamDLQ)
	})
}

func TestReissueRevokesTheOldCredentials(t *testing.T) {
	dir, s := secureServer(t)
	oldCreds := filepath.Join(t.TempDir(), "old.creds")
	b, err := os.ReadFile(filepath.Join(dir, natsauth.CredsFile(natsauth.Audit)))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(oldCreds, b, 0o600); err != nil {
		t.Fatal(err)
	}
	ca := nats.RootCAs(filepath.Join(dir, natsauth.CAFile))
	disconnected := make(chan struct{}, 1)
	oldConn, err := nats.Connect(s.ClientURL(), nats.UserCredentials(oldCreds), ca, nats.NoReconnect(),
		nats.ClosedHandler(func(*nats.Conn) { disconnected <- struct{}{} }))
	if err != nil {
		t.Fatal(err)
	}
	defer oldConn.Close()

	if err := natsauth.Reissue(dir, natsauth.Audit, pools); err != nil {
		t.Fatal(err)
	}
	// Port -1 picked a port; the reload must keep it.
	if err := natsutil.ReloadFromConfig(s, filepath.Join(dir, natsauth.ConfFile), storeDirOf(dir), s.Addr().String()); err != nil {
		t.Fatalf("reload: %v", err)
	}
	select {
	case <-disconnected:
	case <-time.After(10 * time.Second):
		t.Fatal("the old credentials' connection survived the reload")
	}
	if nc, err := nats.Connect(s.ClientURL(), nats.UserCredentials(oldCreds), ca); err == nil {
		nc.Close()
		t.Fatal("old credentials accepted after the reissue")
	}
	c := connect(t, dir, s, natsauth.Audit)
	if !c.nc.IsConnected() {
		t.Fatal("new credentials not connected")
	}
	// Other identities are untouched.
	connect(t, dir, s, natsauth.Pipeline)
	if err := natsauth.Reissue(dir, "nobody", pools); err == nil {
		t.Fatal("reissue of an unknown identity succeeded")
	}
}

// A client speaking plain NATS over TCP, without the TLS handshake the
// server requires, gets no session: the server closes the connection.
func TestPlainTCPRefused(t *testing.T) {
	_, s := secureServer(t)
	conn, err := net.DialTimeout("tcp", s.Addr().String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	info, err := r.ReadString('\n')
	if err != nil || !strings.Contains(info, `"tls_required":true`) {
		t.Fatalf("server greeting %q, %v; want INFO with tls_required", info, err)
	}
	if _, err := conn.Write([]byte("CONNECT {\"verbose\":false}\r\nPUB ansflow.events.step.completed.r1 2\r\n{}\r\nPING\r\n")); err != nil {
		return // already closed
	}
	rest, _ := io.ReadAll(r)
	if strings.Contains(string(rest), "PONG") {
		t.Fatalf("plain TCP client got a session: %q", rest)
	}
}
