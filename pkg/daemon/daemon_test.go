package daemon_test

import (
	"context"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/daemon"
	"github.com/ansflow/ansflow/pkg/envflag"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
)

// get fetches url and returns the status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func parse(t *testing.T, env map[string]string, args ...string) (*daemon.Common, error) {
	t.Helper()
	ev := envflag.New(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	var c daemon.Common
	fs := flag.NewFlagSet("svc", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.RegisterFlags(fs, ev, daemon.Defaults{OpsAddr: "127.0.0.1:9099"})
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if ev.Err() != nil {
		return nil, ev.Err()
	}
	return &c, c.Validate()
}

func TestCommonFlagsReadTheEnvironmentAndFlagsWin(t *testing.T) {
	c, err := parse(t, map[string]string{"ANSFLOW_NATS_URL": "nats://a:4222", "ANSFLOW_OPS_ADDR": "0.0.0.0:9090", "ANSFLOW_LOG_JSON": "true"},
		"--nats", "nats://b:4222")
	if err != nil {
		t.Fatal(err)
	}
	if c.NATSURL != "nats://b:4222" || c.OpsAddr != "0.0.0.0:9090" || !c.LogJSON {
		t.Errorf("got %+v", c)
	}
	if c, _ = parse(t, nil); c.OpsAddr != "127.0.0.1:9099" || c.LogLevel != "info" {
		t.Errorf("defaults: got %+v", c)
	}
	if _, err := parse(t, nil, "--ops-addr", "9090"); err == nil || !strings.Contains(err.Error(), "--ops-addr") {
		t.Errorf("--ops-addr 9090: got %v, want an error naming the flag", err)
	}
	if _, err := parse(t, map[string]string{"ANSFLOW_LOG_JSON": "yes please"}); err == nil || !strings.Contains(err.Error(), "ANSFLOW_LOG_JSON") {
		t.Errorf("bad ANSFLOW_LOG_JSON: got %v", err)
	}
	if c, err := parse(t, nil, "--ops-addr", "off"); err != nil || c.OpsAddr != daemon.Off {
		t.Errorf("--ops-addr off: %v %+v", err, c)
	}
}

// TestReadyzFollowsNATS starts a process on a real nats-server: /readyz
// passes while it is connected and its stream exists, names the missing
// stream, and fails once the server is gone, while /healthz stays alive.
func TestReadyzFollowsNATS(t *testing.T) {
	ns := natstest.Run(t)
	ctx := context.Background()
	if _, err := ns.JS.CreateStream(ctx, jetstream.StreamConfig{Name: "PRESENT", Subjects: []string{"present.>"}}); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	c, err := parse(t, nil, "--nats", ns.ClientURL(), "--ops-addr", addr, "--log-level", "error")
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.Start("svc", "svc-test")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.Ops.Ready("jetstream", daemon.Streams(p.JS, "PRESENT"))
	p.Ops.Metrics(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "svc_up 1\n") }))
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(runCtx, func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }) }()

	base := "http://" + addr
	waitFor(t, 5*time.Second, "the ops listener answers", func() bool {
		resp, err := http.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	if code, body := get(t, base+"/readyz"); code != 200 || !strings.Contains(body, "[+]nats ok") || !strings.Contains(body, "[+]jetstream ok") {
		t.Fatalf("/readyz = %d %q, want 200 with both checks passed", code, body)
	}
	if code, body := get(t, base+"/metrics"); code != 200 || body != "svc_up 1\n" {
		t.Errorf("/metrics = %d %q", code, body)
	}

	p.Ops.Ready("absent", daemon.Streams(p.JS, "ABSENT"))
	if code, body := get(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "[-]absent failed: stream ABSENT") || !strings.Contains(body, "[+]nats ok") {
		t.Fatalf("/readyz with a missing stream = %d %q, want 503 naming it", code, body)
	}

	ns.Shutdown()
	ns.WaitForShutdown()
	waitFor(t, 10*time.Second, "/readyz reports NATS gone", func() bool {
		code, body := get(t, base+"/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "[-]nats failed: connection")
	})
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz with NATS gone = %d, want 200 (liveness does not follow NATS)", code)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run after cancel = %v, want nil (a clean stop)", err)
	}
}

// TestReadyzOnACluster: an R3 stream on three clustered servers stays ready
// with one server gone and is reported unready, not hung, with two gone.
func TestReadyzOnACluster(t *testing.T) {
	cl := natstest.RunCluster(t, 3)
	ctx := context.Background()
	if _, err := cl.JS.CreateStream(ctx, jetstream.StreamConfig{Name: "R3", Subjects: []string{"r3.>"}, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	ops := daemon.NewOps()
	ops.Timeout = 2 * time.Second
	ops.Ready("jetstream", daemon.Streams(cl.JS, "R3"))
	srv := &http.Server{Handler: ops.Handler()}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	url := "http://" + ln.Addr().String() + "/readyz"

	waitFor(t, 10*time.Second, "ready on a full cluster", func() bool { code, _ := get(t, url); return code == 200 })
	// Stop a server the client is not connected to first, then another.
	connected := cl.NC.ConnectedUrl()
	var stopped int
	for i, s := range cl.Servers {
		if stopped == 2 {
			break
		}
		if strings.Contains(connected, ":"+portOf(s.ClientURL())) {
			continue
		}
		s.Shutdown()
		s.WaitForShutdown()
		stopped++
		if stopped == 1 {
			waitFor(t, 20*time.Second, "ready again with one of three servers gone", func() bool { code, _ := get(t, url); return code == 200 })
			t.Logf("server %d stopped: still ready", i)
		}
	}
	waitFor(t, 30*time.Second, "unready with two of three servers gone", func() bool {
		start := time.Now()
		code, body := get(t, url)
		if took := time.Since(start); took > 2*ops.Timeout {
			t.Fatalf("/readyz took %s, want at most about its timeout %s", took, ops.Timeout)
		}
		return code == http.StatusServiceUnavailable && strings.Contains(body, "[-]jetstream failed")
	})
}

func portOf(url string) string { return url[strings.LastIndex(url, ":")+1:] }

func TestAPanickingOrHangingCheckFailsOnlyItself(t *testing.T) {
	ops := daemon.NewOps()
	ops.Timeout = 200 * time.Millisecond
	ops.Ready("fine", func(context.Context) error { return nil })
	ops.Ready("panics", func(context.Context) error { panic("boom") })
	ops.Ready("hangs", func(context.Context) error { select {} })
	ops.Ready("fails", func(context.Context) error { return errors.New("engine\nunreachable") })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: ops.Handler()}
	go srv.Serve(ln)
	defer srv.Close()
	code, body := get(t, "http://"+ln.Addr().String()+"/readyz")
	want := []string{"[+]fine ok", "[-]panics failed: check panicked: boom", "[-]hangs failed: no answer within 200ms", "[-]fails failed: engine unreachable", "readyz check failed"}
	for _, w := range want {
		if !strings.Contains(body, w) {
			t.Errorf("body lacks %q:\n%s", w, body)
		}
	}
	if code != http.StatusServiceUnavailable {
		t.Errorf("code %d, want 503", code)
	}
	if code, body := get(t, "http://"+ln.Addr().String()+"/metrics"); code != 404 {
		t.Errorf("/metrics without a handler = %d %q, want 404", code, body)
	}
}

// TestHealthcheck asks a real ops listener, as a container health check
// would, through a wildcard listen address.
func TestHealthcheck(t *testing.T) {
	ops := daemon.NewOps()
	ready := make(chan struct{})
	ops.Ready("gate", func(context.Context) error {
		select {
		case <-ready:
			return nil
		default:
			return errors.New("not yet")
		}
	})
	ln, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: ops.Handler()}
	go srv.Serve(ln)
	defer srv.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	env := func(k string) (string, bool) { return "0.0.0.0:" + port, k == "ANSFLOW_OPS_ADDR" }
	if err := daemon.Healthcheck(nil, env); err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "[-]gate failed: not yet") {
		t.Fatalf("unready: %v, want the 503 and the failed check", err)
	}
	close(ready)
	if err := daemon.Healthcheck(nil, env); err != nil {
		t.Fatalf("ready: %v", err)
	}
	if err := daemon.Healthcheck([]string{"--ops-addr", ":" + port}, nil); err != nil {
		t.Fatalf("--ops-addr :%s: %v", port, err)
	}
	if err := daemon.Healthcheck(nil, func(string) (string, bool) { return "", false }); err == nil {
		t.Fatal("no address: nil error")
	}
}
