package source

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ansflow/ansflow/pkg/event"
)

// bareRepo makes a real bare repository with two commits and returns its
// path and the first commit.
func bareRepo(t *testing.T) (string, string) {
	t.Helper()
	work, bare := t.TempDir(), filepath.Join(t.TempDir(), "repo.git")
	git := func(dir string, args ...string) string {
		cmd := exec.Command("git", append([]string{"-C", dir, "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v: %s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	git(work, "init", "-q")
	os.WriteFile(filepath.Join(work, "v.txt"), []byte("v1\n"), 0o644)
	git(work, "add", ".")
	git(work, "commit", "-q", "-m", "v1")
	first := git(work, "rev-parse", "HEAD")
	os.WriteFile(filepath.Join(work, "v.txt"), []byte("v2\n"), 0o644)
	git(work, "commit", "-q", "-am", "v2")
	git(work, "clone", "-q", "--bare", ".", bare)
	return bare, first
}

func TestCloneFetchesACommitOnNoBranch(t *testing.T) {
	bare, _ := bareRepo(t)
	work := t.TempDir()
	git := func(dir string, args ...string) string {
		out, err := exec.Command("git", append([]string{"-C", dir, "-c", "user.name=t", "-c", "user.email=t@example.com"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v: %s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	git(work, "clone", "-q", bare, "w")
	w := filepath.Join(work, "w")
	os.WriteFile(filepath.Join(w, "v.txt"), []byte("pr\n"), 0o644)
	git(w, "commit", "-q", "-am", "pull request")
	head := git(w, "rev-parse", "HEAD")
	git(w, "push", "-q", "origin", "HEAD:refs/pull/1/head") // as GitHub keeps a pull request's head
	dir := filepath.Join(t.TempDir(), "c")
	if err := Clone(context.Background(), CloneOptions{AllowLocal: true}, "file://"+bare, head, dir); err != nil {
		t.Fatalf("clone of a pull request head: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "v.txt")); string(b) != "pr\n" {
		t.Errorf("checked out %q", b)
	}
	err := Clone(context.Background(), CloneOptions{AllowLocal: true}, "file://"+bare, strings.Repeat("ab", 20), filepath.Join(t.TempDir(), "d"))
	if err == nil || !strings.Contains(err.Error(), "checkout") {
		t.Errorf("unknown commit: %v", err)
	}
}

func TestCheckRepoURL(t *testing.T) {
	cases := []struct {
		repo       string
		local, ok  bool
		wantReason string
	}{
		{"https://github.com/o/r.git", false, true, ""},
		{"ssh://git@host/o/r.git", false, true, ""},
		{"git://host/o/r.git", false, true, ""},
		{"git@github.com:o/r.git", false, true, ""},
		{"http://host/o/r.git", false, false, `scheme "http"`},
		{"file:///srv/repo.git", false, false, "--allow-local-clone"},
		{"FILE:///srv/repo.git", false, false, "--allow-local-clone"},
		{"/srv/repo.git", false, false, "local paths"},
		{"../repo", false, false, "local paths"},
		{"repo", false, false, "local paths"},
		{"ext::sh -c touch% /tmp/pwned", false, false, "remote helpers"},
		{"fd::3", true, false, "remote helpers"},
		{"--upload-pack=touch /tmp/pwned", true, false, "option"},
		{"", true, false, "empty"},
		{"file:///srv/repo.git", true, true, ""},
		{"/srv/repo.git", true, true, ""},
	}
	for _, c := range cases {
		err := CheckRepoURL(c.repo, CloneOptions{AllowLocal: c.local})
		if c.ok != (err == nil) {
			t.Errorf("%q (local %v): err = %v", c.repo, c.local, err)
			continue
		}
		if err != nil && (!errors.Is(err, ErrRepoRefused) || !strings.Contains(err.Error(), c.wantReason)) {
			t.Errorf("%q: error %v, want ErrRepoRefused naming %q", c.repo, err, c.wantReason)
		}
	}
}

func TestCloneRefusesLocalRepositoriesByDefault(t *testing.T) {
	bare, commit := bareRepo(t)
	for _, repo := range []string{"file://" + bare, bare} {
		dir := t.TempDir()
		err := (&Fetcher{}).Fetch(context.Background(), &event.Source{RepoURL: repo, Commit: commit}, dir)
		if !errors.Is(err, ErrRepoRefused) {
			t.Errorf("%s: err = %v, want ErrRepoRefused", repo, err)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("%s: refused clone left %d entries", repo, len(entries))
		}
	}
}

func TestCloneWhenAllowedUsesAMinimalEnvironment(t *testing.T) {
	bare, commit := bareRepo(t)
	// configuration the runner's environment would otherwise hand git: a
	// rewrite of every file:// URL to a repository that does not exist
	cfg := filepath.Join(t.TempDir(), "gitconfig")
	os.WriteFile(cfg, []byte("[url \"file:///nonexistent/\"]\n\tinsteadOf = file://\n"), 0o644)
	t.Setenv("GIT_CONFIG_GLOBAL", cfg)
	t.Setenv("GIT_CONFIG_COUNT", "1")
	t.Setenv("GIT_CONFIG_KEY_0", "url.file:///nonexistent/.insteadOf")
	t.Setenv("GIT_CONFIG_VALUE_0", "file://")
	if out, err := exec.Command("git", "clone", "-q", "file://"+bare, filepath.Join(t.TempDir(), "x")).CombinedOutput(); err == nil {
		t.Fatalf("the poisoned environment does not break a plain git clone (%s): the test proves nothing", out)
	}
	dir := t.TempDir()
	if err := (&Fetcher{AllowLocal: true}).Fetch(context.Background(), &event.Source{RepoURL: "file://" + bare, Commit: commit}, dir); err != nil {
		t.Fatalf("allowed clone: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "v.txt")); string(b) != "v1\n" {
		t.Errorf("checked out %q, want commit %s's v1", b, commit)
	}
}

func TestCloneErrorsCarryNoCredentials(t *testing.T) {
	const pass = "s3cret-pass-word"
	for _, repo := range []string{
		"https://deploy:" + pass + "@127.0.0.1:1/o/r.git",
		"https://" + pass + "@127.0.0.1:1/o/r.git",
		"ssh://deploy:" + pass + "@127.0.0.1:1/o/r.git",
		"http://deploy:" + pass + "@127.0.0.1:1/o/r.git", // refused: the refusal quotes it too
	} {
		err := Clone(context.Background(), CloneOptions{}, repo, "", filepath.Join(t.TempDir(), "c"))
		if err == nil {
			t.Fatalf("%s: clone of a closed port succeeded", repo)
		}
		if strings.Contains(err.Error(), pass) || !strings.Contains(err.Error(), "***@127.0.0.1") {
			t.Errorf("error %q: want the URL quoted with its credentials scrubbed", err)
		}
	}
}

func TestScrub(t *testing.T) {
	for in, want := range map[string]string{
		"fatal: unable to access 'https://u:p@h/r/'":       "fatal: unable to access 'https://***@h/r/'",
		"remote: token ghp_abcdefghijklmnopqrstuvwxyz0123": "remote: token ***",
		"glpat-abcdefghijklmnopqrst12 is bad":              "*** is bad",
		"> Authorization: Basic dXNlcjpwYXNz":              "> Authorization: Basic ***",
		"git@github.com:o/r.git not found":                 "git@github.com:o/r.git not found",
	} {
		if got := Scrub(in); got != want {
			t.Errorf("Scrub(%q) = %q, want %q", in, got, want)
		}
	}
	if got := scrubWith("Cloning from deploy:hunter22 failed", credentialsOf("https://deploy:hunter22@h/r")); strings.Contains(got, "hunter22") {
		t.Errorf("decoded credentials kept: %q", got)
	}
}
