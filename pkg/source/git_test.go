package source

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestResolveRefAsksTheRepository: branches, tags (annotated ones
// peeled), full refs, and a clear error for a name the repository lacks
// or one that could be an option.
func TestResolveRefAsksTheRepository(t *testing.T) {
	bare, first := bareRepo(t)
	git := func(args ...string) string {
		out, err := exec.Command("git", append([]string{"-C", bare, "-c", "user.name=t", "-c", "user.email=t@example.com"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v: %s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	head := git("rev-parse", "main")
	git("branch", "old", first)
	git("tag", "v1", first)
	git("tag", "-a", "-m", "release", "v2", head)
	ctx, opts, repo := context.Background(), CloneOptions{AllowLocal: true}, "file://"+bare
	for ref, want := range map[string]string{"main": head, "old": first, "v1": first, "v2": head, "refs/heads/old": first, "HEAD": head} {
		got, err := ResolveRef(ctx, opts, repo, ref)
		if err != nil || got != want {
			t.Errorf("ResolveRef(%q) = %q, %v; want %q", ref, got, err, want)
		}
	}
	if _, err := ResolveRef(ctx, opts, repo, "nope"); !errors.Is(err, ErrRefNotFound) {
		t.Errorf("unknown branch: %v", err)
	}
	for _, bad := range []string{"", "--upload-pack=touch /tmp/x", "a b", "ma*"} {
		if _, err := ResolveRef(ctx, opts, repo, bad); err == nil {
			t.Errorf("ResolveRef(%q) accepted", bad)
		}
	}
	if _, err := ResolveRef(ctx, CloneOptions{}, repo, "main"); !errors.Is(err, ErrRepoRefused) {
		t.Errorf("file:// without AllowLocal: %v", err)
	}
}

// TestReadFileAtACommit: the file as it was at the commit, ErrNotExist
// for a missing one, and no path out of the repository.
func TestReadFileAtACommit(t *testing.T) {
	bare, first := bareRepo(t)
	ctx, opts, repo := context.Background(), CloneOptions{AllowLocal: true}, "file://"+bare
	b, err := ReadFile(ctx, opts, repo, first, "v.txt")
	if err != nil || string(b) != "v1\n" {
		t.Fatalf("v.txt at the first commit = %q, %v", b, err)
	}
	if b, err := ReadFile(ctx, opts, repo, "", "./v.txt"); err != nil || string(b) != "v2\n" {
		t.Errorf("v.txt at the default branch = %q, %v", b, err)
	}
	if _, err := ReadFile(ctx, opts, repo, first, ".ansflow.yml"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	for _, bad := range []string{"../etc/passwd", "/etc/passwd", "", "-x"} {
		if _, err := ReadFile(ctx, opts, repo, first, bad); err == nil || errors.Is(err, os.ErrNotExist) {
			t.Errorf("ReadFile(%q): %v, want a refusal", bad, err)
		}
	}
}
