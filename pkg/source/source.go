// Package source moves a run's source tree: a directory packed as a tar.gz
// into the JetStream object store by the CLI, unpacked by a runner, or a Git
// repository cloned at the trigger's commit.
package source

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/topology"
)

// Bucket is the object store bucket holding uploaded sources.
const Bucket = topology.ObjectSources

// MaxArchiveBytes bounds an uploaded source archive.
const MaxArchiveBytes = 512 << 20

// Store opens the sources bucket, creating it with one replica when it
// does not exist. An existing bucket is never changed, so the replicas the
// pipeline service gave it ([Ensure]) are never lowered.
func Store(ctx context.Context, js jetstream.JetStream) (jetstream.ObjectStore, error) {
	return open(ctx, js, 1)
}

// Ensure creates the sources bucket with replicas when it does not exist,
// and brings an existing one to the catalogue's time to live
// ([topology.SourcesTTL]) without lowering its replicas; the pipeline
// service calls it at start (so does `ansflow provision`).
func Ensure(ctx context.Context, js jetstream.JetStream, replicas int) error {
	_, err := bus.EnsureObjectStore(ctx, js, topology.ObjectStores(replicas)[0])
	return err
}

func open(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.ObjectStore, error) {
	os, err := js.ObjectStore(ctx, Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		os, err = js.CreateObjectStore(ctx, topology.ObjectStores(replicas)[0])
		if errors.Is(err, jetstream.ErrBucketExists) || errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			os, err = js.ObjectStore(ctx, Bucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("object store %s: %w", Bucket, err)
	}
	return os, nil
}

// Upload packs dir (skipping .git) and stores it as object name.
func Upload(ctx context.Context, js jetstream.JetStream, dir, name string) (*event.Source, error) {
	store, err := Store(ctx, js)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := Pack(dir, &buf); err != nil {
		return nil, err
	}
	if buf.Len() > MaxArchiveBytes {
		return nil, fmt.Errorf("source %s packs to %d bytes, over the %d limit", dir, buf.Len(), MaxArchiveBytes)
	}
	if _, err := store.PutBytes(ctx, name, buf.Bytes()); err != nil {
		return nil, fmt.Errorf("upload source %s: %w", dir, err)
	}
	return &event.Source{ObjectStore: Bucket, Object: name}, nil
}

// Pack writes dir as a gzipped tar to w, skipping .git directories.
func Pack(dir string, w io.Writer) error {
	gz := gzip.NewWriter(w)
	tw := tar.NewWriter(gz)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil || rel == "." {
			return err
		}
		if d.IsDir() && d.Name() == ".git" {
			return filepath.SkipDir
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&os.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		} else if !info.Mode().IsRegular() && !info.IsDir() {
			return nil
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("pack %s: %w", dir, err)
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return gz.Close()
}

// Limits bound what unpacking one upload may put on a runner's disk.
type Limits struct {
	// MaxBytes bounds the total size of the unpacked files.
	MaxBytes int64
	// MaxEntries bounds the number of files, directories and links.
	MaxEntries int
}

// DefaultLimits are the [Limits] a zero field falls back to: four times
// the largest archive [Upload] accepts, and 100 000 entries.
var DefaultLimits = Limits{MaxBytes: 4 * MaxArchiveBytes, MaxEntries: 100_000}

func (l Limits) withDefaults() Limits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultLimits.MaxBytes
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = DefaultLimits.MaxEntries
	}
	return l
}

// ErrTooLarge is wrapped by [Unpack]'s error for an archive over its
// [Limits].
var ErrTooLarge = errors.New("source archive over the runner's limits")

// Unpack extracts a gzipped tar into dir within [DefaultLimits]; see
// [UnpackLimited].
func Unpack(r io.Reader, dir string) error { return UnpackLimited(r, dir, DefaultLimits) }

// UnpackLimited extracts a gzipped tar into dir, refusing entries that
// would land outside it, links other than relative symlinks inside it,
// devices and pipes, and archives whose unpacked size or entry count is
// over lim (zero fields take [DefaultLimits]): an error wrapping
// [ErrTooLarge] is returned without writing a byte over the cap. On any
// error what was unpacked is removed, leaving dir empty.
func UnpackLimited(r io.Reader, dir string, lim Limits) (err error) {
	lim = lim.withDefaults()
	defer func() {
		if err != nil {
			emptyDir(dir)
		}
	}()
	gz, err := gzip.NewReader(r)
	if err != nil {
		return fmt.Errorf("unpack source: %w", err)
	}
	tr := tar.NewReader(gz)
	var written int64
	entries := 0
	root := filepath.Clean(dir) + string(os.PathSeparator)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("unpack source: %w", err)
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		if entries++; entries > lim.MaxEntries {
			return fmt.Errorf("unpack source: %w: more than %d entries", ErrTooLarge, lim.MaxEntries)
		}
		target := filepath.Join(dir, filepath.FromSlash(hdr.Name))
		if target == filepath.Clean(dir) && hdr.Typeflag == tar.TypeDir {
			continue // "./" of `tar -C dir .`
		}
		if !strings.HasPrefix(target, root) {
			return fmt.Errorf("unpack source: entry %q escapes the directory", hdr.Name)
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return fmt.Errorf("unpack source: %w", err)
			}
		case tar.TypeReg:
			if hdr.Size > lim.MaxBytes-written {
				return fmt.Errorf("unpack source: %w: %q would take the tree over %d bytes", ErrTooLarge, hdr.Name, lim.MaxBytes)
			}
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return fmt.Errorf("unpack source: %w", err)
			}
			f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(hdr.Mode)&0o777)
			if err != nil {
				return fmt.Errorf("unpack source: %w", err)
			}
			// the header's size is what tar reads; the limit is
			// checked again so that a lying reader cannot pass it
			n, err := io.Copy(f, io.LimitReader(tr, lim.MaxBytes-written+1))
			written += n
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("unpack source %q: %w", hdr.Name, err)
			}
			if written > lim.MaxBytes {
				return fmt.Errorf("unpack source: %w: over %d bytes", ErrTooLarge, lim.MaxBytes)
			}
		case tar.TypeSymlink:
			if filepath.IsAbs(hdr.Linkname) || strings.HasPrefix(filepath.Clean(hdr.Linkname), "..") {
				return fmt.Errorf("unpack source: symlink %q points outside the directory", hdr.Name)
			}
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return fmt.Errorf("unpack source: %w", err)
			}
			if err := os.Symlink(hdr.Linkname, target); err != nil {
				return fmt.Errorf("unpack source: %w", err)
			}
		default:
			return fmt.Errorf("unpack source: entry %q: type %q is not allowed (files, directories and relative symlinks only)", hdr.Name, string(hdr.Typeflag))
		}
	}
}

// emptyDir removes dir's contents, keeping dir.
func emptyDir(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		_ = os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}

// Fetcher materialises sources from the object store or a Git repository.
type Fetcher struct {
	JS jetstream.JetStream
	// AllowLocal lets runs clone file:// URLs and paths on the runner's
	// host (the runner's --allow-local-clone policy; default off: a run's
	// repo_url must not read the runner's disk).
	AllowLocal bool
	// CAFile is [CloneOptions.CAFile]: the CAs trusted for https://
	// repositories instead of the system's.
	CAFile string
	// Limits bound an unpacked upload (zero fields take
	// [DefaultLimits]).
	Limits Limits
}

// Fetch puts src into dir (which must exist and be empty).
func (f *Fetcher) Fetch(ctx context.Context, src *event.Source, dir string) error {
	switch {
	case src == nil:
		return errors.New("the run has no source: run it with `ansflow run FILE` or from a Git trigger")
	case src.Object != "":
		store, err := f.JS.ObjectStore(ctx, src.ObjectStore)
		if err != nil {
			return fmt.Errorf("open object store %s: %w", src.ObjectStore, err)
		}
		obj, err := store.Get(ctx, src.Object)
		if errors.Is(err, jetstream.ErrObjectNotFound) {
			return fmt.Errorf("get source %s/%s: it expired (sources are kept %s) or was never uploaded: %w", src.ObjectStore, src.Object, topology.SourcesTTL, err)
		}
		if err != nil {
			return fmt.Errorf("get source %s/%s: %w", src.ObjectStore, src.Object, err)
		}
		defer obj.Close()
		return UnpackLimited(obj, dir, f.Limits)
	case src.RepoURL != "":
		return Clone(ctx, CloneOptions{AllowLocal: f.AllowLocal, CAFile: f.CAFile}, src.RepoURL, src.Commit, dir)
	default:
		return errors.New("source names neither an object nor a repository")
	}
}
