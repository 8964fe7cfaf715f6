package source

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// archive builds a gzipped tar from entries written by add.
func archive(t testing.TB, add func(tw *tar.Writer)) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	add(tw)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// diskUse is the bytes of regular files under dir.
func diskUse(dir string) (n int64, files int) {
	filepath.Walk(dir, func(_ string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			n += info.Size()
			files++
		}
		return nil
	})
	return n, files
}

func TestGzipBombIsRefusedWithinTheCap(t *testing.T) {
	const size = 64 << 20 // 64 MiB of zeros: 64 KiB gzipped
	bomb := archive(t, func(tw *tar.Writer) {
		tw.WriteHeader(&tar.Header{Name: "small.txt", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5})
		tw.Write([]byte("hello"))
		tw.WriteHeader(&tar.Header{Name: "zeros", Typeflag: tar.TypeReg, Mode: 0o644, Size: size})
		io.CopyN(tw, zeros{}, size)
	})
	if len(bomb) > 2<<20 {
		t.Fatalf("the bomb is %d bytes gzipped: not a bomb", len(bomb))
	}
	dir := t.TempDir()
	err := UnpackLimited(bytes.NewReader(bomb), dir, Limits{MaxBytes: 1 << 20})
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err = %v, want ErrTooLarge", err)
	}
	if n, files := diskUse(dir); n != 0 || files != 0 {
		t.Errorf("refused archive left %d bytes in %d files", n, files)
	}
}

func TestEntryCountIsCapped(t *testing.T) {
	many := archive(t, func(tw *tar.Writer) {
		for i := 0; i < 50; i++ {
			tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("d%d/", i), Typeflag: tar.TypeDir, Mode: 0o755})
		}
	})
	dir := t.TempDir()
	if err := UnpackLimited(bytes.NewReader(many), dir, Limits{MaxEntries: 10}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err = %v, want ErrTooLarge", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("refused archive left %d entries", len(entries))
	}
	if err := UnpackLimited(bytes.NewReader(many), t.TempDir(), Limits{MaxEntries: 50}); err != nil {
		t.Errorf("50 entries under a cap of 50: %v", err)
	}
}

func TestUnpackRefusesOtherEntryTypes(t *testing.T) {
	for _, hdr := range []*tar.Header{
		{Name: "hard", Typeflag: tar.TypeLink, Linkname: "/etc/passwd"},
		{Name: "dev", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3},
		{Name: "fifo", Typeflag: tar.TypeFifo},
	} {
		a := archive(t, func(tw *tar.Writer) { tw.WriteHeader(hdr) })
		if err := Unpack(bytes.NewReader(a), t.TempDir()); err == nil {
			t.Errorf("%s: unpacked", hdr.Name)
		}
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func TestUnpackAcceptsTheRootEntryOfTarC(t *testing.T) {
	a := archive(t, func(tw *tar.Writer) {
		tw.WriteHeader(&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755})
		tw.WriteHeader(&tar.Header{Name: "./a.txt", Typeflag: tar.TypeReg, Mode: 0o644, Size: 2})
		tw.Write([]byte("hi"))
	})
	dir := t.TempDir()
	if err := Unpack(bytes.NewReader(a), dir); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "a.txt")); string(b) != "hi" {
		t.Errorf("a.txt = %q", b)
	}
}
