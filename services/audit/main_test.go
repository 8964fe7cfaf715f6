package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/services/audit/audit"
	"github.com/ansflow/ansflow/services/audit/store"
)

func TestParseFlags(t *testing.T) {
	t.Setenv("ANSFLOW_AUDIT_HTTP", "127.0.0.1:9999")
	t.Setenv("ANSFLOW_AUDIT_RETENTION", "720h")
	c, err := parseFlags([]string{"--nats", "nats://n:4222", "--data-dir", "/d", "--include-logs"}, os.LookupEnv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.NATSURL != "nats://n:4222" || c.DataDir != "/d" || c.HTTPAddr != "127.0.0.1:9999" || !c.Audit.IncludeLogs ||
		c.Audit.Retention != 720*time.Hour || c.Audit.BatchSize != 1000 {
		t.Fatalf("config %+v", c)
	}
	for _, bad := range [][]string{{"--http", "nonsense"}, {"--batch-size", "-3"}, {"--nats", ""}, {"--db", "", "--data-dir", ""}} {
		if _, err := parseFlags(bad, os.LookupEnv, io.Discard); err == nil {
			t.Errorf("parseFlags(%q) = nil error", bad)
		}
	}
}

// TestRun starts the binary's run against a real JetStream server, records
// an event and serves it over HTTP, then stops on cancellation.
func TestRun(t *testing.T) {
	ns := natstest.Run(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	ol, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opsAddr := ol.Addr().String()
	l.Close()
	ol.Close()
	dir := t.TempDir()
	cfg, err := parseFlags([]string{"--nats", ns.ClientURL(), "--data-dir", dir, "--http", addr, "--ops-addr", opsAddr, "--log-level", "warn"}, os.LookupEnv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg) }()
	e, err := event.New("test", event.TypeRunCreated, event.Meta{RunID: "r1"}, event.RunCreated{RunID: "r1", Pipeline: "p"})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	get := func(url, token string) (*http.Response, error) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		return http.DefaultClient.Do(req)
	}
	// Before the pipeline service made its tokens bucket, every token is
	// unknown, and the audit service does not make the bucket.
	for {
		resp, err := get("http://"+addr+audit.PathQuery, "ansf_0123456789abcdefghijklmnopqrstuvwxyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
				t.Fatalf("unknown token: %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("API not up: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := ns.JS.KeyValue(ctx, auth.TokensBucket); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("the audit service touched the tokens bucket: %v", err)
	}
	tokens, err := auth.OpenTokenStore(ctx, ns.JS, 1)
	if err != nil {
		t.Fatal(err)
	}
	viewer, _, err := tokens.Create(ctx, auth.TokenSpec{Role: auth.RoleViewer}, auth.System)
	if err != nil {
		t.Fatal(err)
	}
	for {
		// The streams exist once the service is up.
		if err := bus.Publish(ctx, ns.JS, event.LifecycleSubject(event.TypeRunCreated, "r1"), e); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("service did not create the streams")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for {
		resp, err := get("http://"+addr+audit.PathQuery+"?run=r1", viewer)
		if err == nil {
			var p store.Page
			err = json.NewDecoder(resp.Body).Decode(&p)
			resp.Body.Close()
			if err == nil && len(p.Records) == 1 && p.Records[0].ID == e.ID() {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("event not served: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	resp.Body.Close()
	// Ready, on the API and on the ops listener: NATS, the streams it
	// records and the tokens bucket, and a writable store.
	for _, base := range []string{"http://" + addr, "http://" + opsAddr} {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{"[+]nats ok", "[+]jetstream ok", "[+]store ok"} {
			if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
				t.Errorf("%s/readyz = %d %q, want 200 with %q", base, resp.StatusCode, body, want)
			}
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not stop")
	}
	if _, err := os.Stat(filepath.Join(dir, audit.DBFile)); err != nil {
		t.Fatalf("store not under the data dir: %v", err)
	}
}
