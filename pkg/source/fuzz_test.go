package source

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzUnpack feeds the unpacker arbitrary archives: it must never panic,
// never write outside its directory, never exceed its limits, and leave
// nothing behind when it fails.
func FuzzUnpack(f *testing.F) {
	lim := Limits{MaxBytes: 64 << 10, MaxEntries: 32}
	seed := func(hdrs ...*tar.Header) {
		f.Add(archive(f, func(tw *tar.Writer) {
			for _, h := range hdrs {
				tw.WriteHeader(h)
				if h.Size > 0 {
					tw.Write(bytes.Repeat([]byte("a"), int(h.Size)))
				}
			}
		}))
	}
	seed(&tar.Header{Name: "a/b.txt", Typeflag: tar.TypeReg, Mode: 0o644, Size: 3}, &tar.Header{Name: "a/l", Typeflag: tar.TypeSymlink, Linkname: "b.txt"})
	seed(&tar.Header{Name: "../evil", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1})
	seed(&tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "x/../.."}, &tar.Header{Name: "l/evil", Typeflag: tar.TypeReg, Size: 1})
	seed(&tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644, Size: 70 << 10})
	seed(&tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: "/etc/passwd"})
	f.Add([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff})
	f.Add([]byte("not gzip"))
	f.Fuzz(func(t *testing.T, data []byte) {
		parent := t.TempDir()
		dir := filepath.Join(parent, "root")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		err := UnpackLimited(bytes.NewReader(data), dir, lim)
		if entries, _ := os.ReadDir(parent); len(entries) != 1 {
			t.Fatalf("unpack wrote beside its directory: %d entries", len(entries))
		}
		n, files := diskUse(dir)
		if n > lim.MaxBytes || files > lim.MaxEntries {
			t.Fatalf("unpacked %d bytes in %d files, over %+v", n, files, lim)
		}
		if err != nil {
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Fatalf("failed unpack (%v) left %d entries", err, len(entries))
			}
		}
	})
}
