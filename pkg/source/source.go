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
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

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

// Ensure creates the sources bucket with replicas when it does not exist;
// the pipeline service calls it at start.
func Ensure(ctx context.Context, js jetstream.JetStream, replicas int) error {
	_, err := open(ctx, js, replicas)
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

// Unpack extracts a gzipped tar into dir, refusing entries that would land
// outside it.
func Unpack(r io.Reader, dir string) error {
	gz, err := gzip.NewReader(r)
	if err != nil {
		return fmt.Errorf("unpack source: %w", err)
	}
	tr := tar.NewReader(gz)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("unpack source: %w", err)
		}
		target := filepath.Join(dir, filepath.FromSlash(hdr.Name))
		if !strings.HasPrefix(target, filepath.Clean(dir)+string(os.PathSeparator)) {
			return fmt.Errorf("unpack source: entry %q escapes the directory", hdr.Name)
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(hdr.Mode)&0o777)
			if err != nil {
				return err
			}
			if _, err := io.Copy(f, io.LimitReader(tr, MaxArchiveBytes)); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if filepath.IsAbs(hdr.Linkname) || strings.HasPrefix(filepath.Clean(hdr.Linkname), "..") {
				return fmt.Errorf("unpack source: symlink %q points outside the directory", hdr.Name)
			}
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			if err := os.Symlink(hdr.Linkname, target); err != nil {
				return err
			}
		}
	}
}

// Fetcher materialises sources from the object store or a Git repository.
type Fetcher struct {
	JS jetstream.JetStream
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
		if err != nil {
			return fmt.Errorf("get source %s/%s: %w", src.ObjectStore, src.Object, err)
		}
		defer obj.Close()
		return Unpack(obj, dir)
	case src.RepoURL != "":
		return Clone(ctx, src.RepoURL, src.Commit, dir)
	default:
		return errors.New("source names neither an object nor a repository")
	}
}

// Clone clones repo into dir and checks out commit (the default branch's head
// when commit is empty). Arguments go to git as argv, never through a shell.
func Clone(ctx context.Context, repo, commit, dir string) error {
	if strings.HasPrefix(repo, "-") || strings.HasPrefix(commit, "-") {
		return fmt.Errorf("clone: refusing repository %q / commit %q that look like options", repo, commit)
	}
	run := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "git", args...)
		cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("git %s: %w: %s", args[0], err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	if err := run("clone", "--quiet", "--", repo, dir); err != nil {
		return err
	}
	if commit != "" {
		if err := run("-C", dir, "checkout", "--quiet", "--detach", commit); err != nil {
			return err
		}
	}
	return nil
}
