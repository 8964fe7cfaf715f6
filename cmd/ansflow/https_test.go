package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/httpserver"
	"github.com/ansflow/ansflow/pkg/natsauth"
)

// TestUpOverHTTPS serves the embedded API over HTTPS with the certificate
// `secure init` issues: a client given the CA with --ca-cert is served, one
// without it refuses the certificate, and plain HTTP gets no answer from the
// API.
func TestUpOverHTTPS(t *testing.T) {
	useScriptedEngines(t)
	dir := t.TempDir()
	if err := natsauth.Init(natsauth.InitConfig{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	st, err := startStack(context.Background(), stackConfig{DataDir: t.TempDir(), NATSAddr: "off", Pipeline: true,
		TLS: httpserver.TLS{CertFile: filepath.Join(dir, natsauth.ServerCert), KeyFile: filepath.Join(dir, natsauth.ServerKey)}}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.stop)
	if !strings.HasPrefix(st.URL, "https://") {
		t.Fatalf("API URL %s, want https://", st.URL)
	}
	ca := filepath.Join(dir, natsauth.CAFile)
	if code, out := capture(t, "pipelines", "list", "--server", st.URL, "--token", st.Token, "--ca-cert", ca, "--output", "json"); code != exitOK || !strings.HasPrefix(strings.TrimSpace(out), "[") {
		t.Fatalf("with --ca-cert: exit %d, %q", code, out)
	}
	if code, _ := capture(t, "pipelines", "list", "--server", st.URL, "--token", st.Token); code == exitOK {
		t.Fatal("a client that does not trust the CA was served")
	}
	plain := "http://" + strings.TrimPrefix(st.URL, "https://")
	if code, _ := capture(t, "pipelines", "list", "--server", plain, "--token", st.Token); code == exitOK {
		t.Fatal("plain HTTP was served")
	}
	if code, _ := capture(t, "pipelines", "list", "--server", st.URL, "--token", st.Token, "--ca-cert", filepath.Join(dir, "nope.pem")); code != exitInvalid {
		t.Fatalf("missing --ca-cert file: exit %d, want %d", code, exitInvalid)
	}
}
