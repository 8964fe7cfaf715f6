package source

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/pkg/topology"
)

func TestUploadAndFetchRoundTrip(t *testing.T) {
	ns := natstest.Run(t)
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "sub", ".git"), 0o755)
	os.WriteFile(filepath.Join(src, "Dockerfile"), []byte("FROM scratch\n"), 0o644)
	os.WriteFile(filepath.Join(src, "sub", "run.sh"), []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(src, "sub", ".git", "HEAD"), []byte("x"), 0o644)
	os.Symlink("run.sh", filepath.Join(src, "sub", "link"))
	ref, err := Upload(context.Background(), ns.JS, src, "run-1")
	if err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	if err := (&Fetcher{JS: ns.JS}).Fetch(context.Background(), ref, dst); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "Dockerfile")); string(b) != "FROM scratch\n" {
		t.Errorf("Dockerfile = %q", b)
	}
	if st, err := os.Stat(filepath.Join(dst, "sub", "run.sh")); err != nil || st.Mode()&0o100 == 0 {
		t.Errorf("run.sh lost its mode: %v", err)
	}
	if l, _ := os.Readlink(filepath.Join(dst, "sub", "link")); l != "run.sh" {
		t.Errorf("symlink = %q", l)
	}
	if _, err := os.Stat(filepath.Join(dst, "sub", ".git")); err == nil {
		t.Error(".git was uploaded")
	}
}

func TestUnpackRefusesEscapes(t *testing.T) {
	for _, hdr := range []*tar.Header{
		{Name: "../evil", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "ok/../../evil", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "/etc/passwd"},
		{Name: "link2", Typeflag: tar.TypeSymlink, Linkname: "../../x"},
	} {
		var buf bytes.Buffer
		gz := gzip.NewWriter(&buf)
		tw := tar.NewWriter(gz)
		tw.WriteHeader(hdr)
		tw.Close()
		gz.Close()
		err := Unpack(&buf, t.TempDir())
		if err == nil || !strings.Contains(err.Error(), "outside") && !strings.Contains(err.Error(), "escapes") {
			t.Errorf("%s: err = %v", hdr.Name, err)
		}
	}
}

func TestCloneRefusesOptionLikeArguments(t *testing.T) {
	err := Clone(context.Background(), CloneOptions{AllowLocal: true}, "--upload-pack=touch /tmp/pwned", "", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "looks like an option") {
		t.Errorf("err = %v", err)
	}
	err = Clone(context.Background(), CloneOptions{}, "https://example.invalid/r.git", "--output=/tmp/pwned", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "looks like an option") {
		t.Errorf("commit option: err = %v", err)
	}
}

// TestStoreKeepsTheBucketsReplicas checks that opening the sources bucket
// (as every upload and runner does) never lowers the replicas the pipeline
// service created it with.
func TestStoreKeepsTheBucketsReplicas(t *testing.T) {
	c := natstest.RunCluster(t, 3)
	ctx := context.Background()
	if err := Ensure(ctx, c.JS, 3); err != nil {
		t.Fatal(err)
	}
	if _, err := Upload(ctx, c.JS, t.TempDir(), "r1"); err != nil {
		t.Fatal(err)
	}
	os, err := Store(ctx, c.JS)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := st.Replicas(); n != 3 {
		t.Fatalf("sources bucket has %d replicas after opening, want 3", n)
	}
}

func TestSourcesExpire(t *testing.T) {
	ns := natstest.Run(t)
	ctx := context.Background()
	if _, err := Upload(ctx, ns.JS, t.TempDir(), "r1"); err != nil {
		t.Fatal(err)
	}
	store, err := Store(ctx, ns.JS)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.TTL() != topology.SourcesTTL || st.TTL() == 0 {
		t.Errorf("sources bucket TTL %s, want %s", st.TTL(), topology.SourcesTTL)
	}
	err = (&Fetcher{JS: ns.JS}).Fetch(ctx, &event.Source{ObjectStore: Bucket, Object: "gone"}, t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("missing source: %v", err)
	}
}

// TestEnsureBringsAnOldStoreToItsTTL: a sources bucket made before it had
// a time to live (by an older release) gets one when the pipeline service
// starts (as inside `ansflow up`), and keeps its objects and replicas.
func TestEnsureBringsAnOldStoreToItsTTL(t *testing.T) {
	c := natstest.RunCluster(t, 3)
	ctx := context.Background()
	old, err := c.JS.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: Bucket, Description: "run sources", Replicas: 3})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.PutBytes(ctx, "r0", []byte("kept")); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := Ensure(ctx, c.JS, 1); err != nil {
			t.Fatal(err)
		}
		store, err := Store(ctx, c.JS)
		if err != nil {
			t.Fatal(err)
		}
		st, err := store.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.TTL() != topology.SourcesTTL || st.Replicas() != 3 {
			t.Fatalf("after Ensure: TTL %s, %d replicas; want %s, 3", st.TTL(), st.Replicas(), topology.SourcesTTL)
		}
		if b, err := store.GetBytes(ctx, "r0"); err != nil || string(b) != "kept" {
			t.Fatalf("object r0 after Ensure: %q %v", b, err)
		}
	}
}
