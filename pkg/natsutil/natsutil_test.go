package natsutil

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
)

// TestEmbeddedToken: an embedded server with a token refuses clients
// without it and takes those that present it, in the process as an option
// or over TCP from a token file.
func TestEmbeddedToken(t *testing.T) {
	s, err := StartEmbedded(EmbeddedConfig{StoreDir: t.TempDir(), Token: "s3cret-token"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Shutdown(s) })
	if nc, err := nats.Connect(s.ClientURL(), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Error("a TCP client without the token was taken")
	} else if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Errorf("TCP without the token: %v", err)
	}
	nc, err := ConnectInProcess(s, "token", nats.Token("s3cret-token"))
	if err != nil {
		t.Fatalf("in-process with the token: %v", err)
	}
	nc.Close()

	file := filepath.Join(t.TempDir(), "nats.token")
	if err := os.WriteFile(file, []byte("s3cret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	nc, err = Connect(ConnectOptions{URL: s.ClientURL(), Name: "file", TokenFile: file})
	if err != nil {
		t.Fatalf("TCP with the token file: %v", err)
	}
	if _, err := JetStream(nc); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	for _, o := range []ConnectOptions{
		{URL: s.ClientURL(), TokenFile: filepath.Join(t.TempDir(), "missing")},
		{URL: s.ClientURL(), TokenFile: file, CredsFile: file},
	} {
		if nc, err := Connect(o); err == nil {
			nc.Close()
			t.Errorf("%+v: connected", o)
		}
	}
}
