package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sync/errgroup"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/natsauth"
	"github.com/ansflow/ansflow/pkg/natsutil"
	"github.com/ansflow/ansflow/services/audit/audit"
	"github.com/ansflow/ansflow/services/docker-runner/dockertest"
	"github.com/ansflow/ansflow/services/pipeline/service"
)

// TestSecureStack runs the whole pipeline against a nats-server started from
// `secure init`'s nats.conf: provisioning with provisioner.creds, then the
// pipeline service, a docker runner and the audit service, each connected
// over TLS with its own credentials. A run succeeds and is audited, and the
// server reports no permissions violation: no service needed more than its
// identity allows.
func TestSecureStack(t *testing.T) {
	cli := dockertest.Client(t)
	image := dockertest.BusyboxImage(t, cli)
	dir := t.TempDir()
	if err := cmdSecure(context.Background(), []string{"init", dir, "--docker-pools", "default"}); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.WarnLevel)
	ns, err := natsutil.StartFromConfig(filepath.Join(dir, natsauth.ConfFile), t.TempDir(), "127.0.0.1:-1", zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { natsutil.Shutdown(ns) })
	url, ca := ns.ClientURL(), filepath.Join(dir, natsauth.CAFile)
	if err := cmdProvision(context.Background(), []string{"--nats", url, "--nats-creds", filepath.Join(dir, natsauth.CredsFile(natsauth.Provisioner)),
		"--nats-ca", ca, "--docker-pools", "default"}); err != nil {
		t.Fatalf("provision: %v", err)
	}

	var mu sync.Mutex
	var conns []*nats.Conn
	as := func(identity string) func(string) (*nats.Conn, error) {
		return func(name string) (*nats.Conn, error) {
			nc, err := natsutil.Connect(natsutil.ConnectOptions{URL: url, Name: name, CredsFile: filepath.Join(dir, natsauth.CredsFile(identity)), CAFile: ca})
			if err == nil {
				mu.Lock()
				conns = append(conns, nc)
				mu.Unlock()
			}
			return nc, err
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	g, gctx := errgroup.WithContext(ctx)
	t.Cleanup(func() {
		cancel()
		_ = g.Wait()
		for _, nc := range conns {
			nc.Close()
		}
	})
	log := zap.NewNop()
	cfg := stackConfig{DataDir: t.TempDir(), Concurrency: 2}

	served, err := newDockerEngine(ctx, &fileConfig{}, stackConfig{}, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := (&stack{}).startRunner(ctx, gctx, g, as(natsauth.DockerIdentity("default")), "docker", served[0], cfg, log); err != nil {
		t.Fatalf("runner: %v", err)
	}
	aud, err := startAudit(gctx, g, as(natsauth.Audit), cfg, log)
	if err != nil {
		t.Fatalf("audit: %v", err)
	}
	pnc, err := as(natsauth.Pipeline)("ansflow-pipeline")
	if err != nil {
		t.Fatal(err)
	}
	pjs, err := natsutil.JetStream(pnc)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tokenFile, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	adminToken := strings.TrimSpace(string(tokenFile))
	svc, err := service.New(ctx, service.Config{Listener: ln, AdminToken: adminToken}, pjs, log)
	if err != nil {
		t.Fatalf("pipeline service: %v", err)
	}
	svc.API.Mount(aud.Routes()...)
	g.Go(func() error { return svc.Run(gctx) })

	c := newClient("http://"+ln.Addr().String(), adminToken)
	yaml := fmt.Sprintf("pipeline:\n  name: secure\n  steps:\n    - {name: hello, type: docker_run, docker_image: %q, command: \"echo secured\"}\n", image)
	if _, err := c.applyPipeline(ctx, "secure.yaml", []byte(yaml)); err != nil {
		t.Fatal(err)
	}
	run, err := c.trigger(ctx, "secure", apiv1.TriggerBody{})
	if err != nil {
		t.Fatal(err)
	}
	var r *apiv1.Run
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if r, err = c.getRun(ctx, run.ID); err != nil {
			t.Fatal(err)
		}
		if r.Terminal() || time.Now().After(deadline) {
			break
		}
	}
	if r.Status != "succeeded" || r.Steps[0].Logs.Stdout != "secured\n" {
		t.Fatalf("run %s (%s), stdout %q; server warnings: %v", r.Status, r.Error, r.Steps[0].Logs.Stdout, logs.All())
	}
	var page struct {
		Records []struct {
			Type string `json:"type"`
		} `json:"records"`
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		page.Records = nil
		if err := c.do(ctx, http.MethodGet, audit.PathQuery+"?run="+run.ID+"&limit=500", "", nil, &page); err != nil {
			t.Fatal(err)
		}
		types := map[string]bool{}
		for _, rec := range page.Records {
			types[rec.Type] = true
		}
		if types["io.ansflow.step.requested.v1"] && types["io.ansflow.step.completed.v1"] && types["io.ansflow.run.completed.v1"] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit of run %s holds %v, want step.requested, step.completed and run.completed", run.ID, types)
		}
	}
	for _, e := range logs.All() {
		if strings.Contains(e.Message, "Violation") {
			t.Errorf("server reported: %s", e.Message)
		}
	}
}

// `secure init` on an initialized directory exits 2 and keeps the keys,
// succeeds without a change with --if-missing, and replaces them with
// --force; bad usage exits 2.
func TestSecureInitCommand(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	read := func() string {
		b, err := os.ReadFile(filepath.Join(dir, natsauth.CredsFile(natsauth.DockerIdentity("gpu"))))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if code := dispatch(ctx, []string{"secure", "init", dir, "--docker-pools", "default,gpu", "--hosts", "nats,10.0.0.5"}); code != exitOK {
		t.Fatalf("init: exit %d", code)
	}
	first := read()
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"secure", "init", dir, "--docker-pools", "default,gpu"}, exitInvalid},
		{[]string{"secure", "init", "--if-missing", dir, "--docker-pools", "default,gpu"}, exitOK},
		{[]string{"secure", "init"}, exitInvalid},
		{[]string{"secure"}, exitInvalid},
		{[]string{"secure", "reissue", dir, "docker-nope"}, exitInvalid},
		{[]string{"nats"}, exitInvalid},
		{[]string{"provision", "--replicas", "0"}, exitInvalid},
	} {
		if code := dispatch(ctx, c.args); code != c.code {
			t.Errorf("%v: exit %d, want %d", c.args, code, c.code)
		}
	}
	if read() != first {
		t.Fatal("a refused or --if-missing init changed the credentials")
	}
	if code := dispatch(ctx, []string{"secure", "init", dir, "--docker-pools", "default,gpu", "--force", "--hosts", "nats,10.0.0.5"}); code != exitOK {
		t.Fatalf("init --force: exit %d", code)
	}
	if read() == first {
		t.Fatal("init --force kept the old credentials")
	}
	pem, err := os.ReadFile(filepath.Join(dir, "tls", "server.pem"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pemDecode(pem)
	cert, err := x509.ParseCertificate(block)
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.VerifyHostname("nats"); err != nil {
		t.Error(err)
	}
	if err := cert.VerifyHostname("10.0.0.5"); err != nil {
		t.Error(err)
	}
}

func pemDecode(b []byte) ([]byte, []byte) {
	block, rest := pem.Decode(b)
	if block == nil {
		return nil, rest
	}
	return block.Bytes, rest
}
