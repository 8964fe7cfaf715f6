package source

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"strings"
)

// sandboxedGit runs git for one repository with the minimal environment of
// [gitEnv] and a fresh HOME; its errors quote git's output with the
// repository's credentials scrubbed.
type sandboxedGit struct {
	repo, home string
	env        []string
	secrets    []string
}

func newGit(repo string, opts CloneOptions) (*sandboxedGit, error) {
	home, err := os.MkdirTemp("", "ansflow-git-home-")
	if err != nil {
		return nil, fmt.Errorf("git home: %w", err)
	}
	return &sandboxedGit{repo: repo, home: home, env: gitEnv(home, opts), secrets: credentialsOf(repo)}, nil
}

func (g *sandboxedGit) close() { os.RemoveAll(g.home) }

// run runs git with args (argv, never a shell) and returns its standard
// output.
func (g *sandboxedGit) run(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Env = g.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		sub := args[0]
		if sub == "-C" && len(args) > 2 {
			sub = args[2]
		}
		out := strings.TrimSpace(stderr.String() + stdout.String())
		return nil, fmt.Errorf("clone %s: git %s: %w: %s", Scrub(g.repo), sub, err, scrubWith(out, g.secrets))
	}
	return stdout.Bytes(), nil
}

// ResolveRef asks repo, with git ls-remote under the rules of [Clone],
// which commit ref names: a branch, a tag (annotated tags are peeled to
// their commit), a full ref such as refs/heads/main, or HEAD (the default
// branch). A branch is looked
// up before a tag of the same name.
func ResolveRef(ctx context.Context, opts CloneOptions, repo, ref string) (string, error) {
	if err := CheckRepoURL(repo, opts); err != nil {
		return "", err
	}
	if ref == "" || strings.HasPrefix(ref, "-") || strings.ContainsAny(ref, " \x00\n\r*?[\\") {
		return "", fmt.Errorf("resolve %q in %s: not a branch or tag name", ref, Scrub(repo))
	}
	g, err := newGit(repo, opts)
	if err != nil {
		return "", err
	}
	defer g.close()
	candidates := []string{"refs/heads/" + ref, "refs/tags/" + ref}
	if strings.HasPrefix(ref, "refs/") || ref == "HEAD" {
		candidates = []string{ref}
	}
	args := []string{"ls-remote", "--", repo}
	for _, c := range candidates {
		args = append(args, c, c+"^{}") // an annotated tag's commit is listed as its peeled ref
	}
	out, err := g.run(ctx, args...)
	if err != nil {
		return "", err
	}
	found := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		sha, name, ok := strings.Cut(sc.Text(), "\t")
		if ok {
			found[name] = sha
		}
	}
	for _, c := range candidates {
		if sha, ok := found[c+"^{}"]; ok {
			return sha, nil
		}
		if sha, ok := found[c]; ok {
			return sha, nil
		}
	}
	return "", fmt.Errorf("resolve %q in %s: %w", ref, Scrub(repo), ErrRefNotFound)
}

// ReadFile returns the file at name (a path relative to the repository's
// root) in repo at commit, cloned under the rules of [Clone] into a
// temporary directory that is removed before it returns. It answers
// [os.ErrNotExist] (wrapped) when the commit has no such file.
func ReadFile(ctx context.Context, opts CloneOptions, repo, commit, name string) ([]byte, error) {
	clean := path.Clean("/" + name)[1:]
	if clean == "" || clean != strings.TrimPrefix(name, "./") || strings.HasPrefix(name, "-") {
		return nil, fmt.Errorf("read %q from %s: want a relative path inside the repository", name, Scrub(repo))
	}
	dir, err := os.MkdirTemp("", "ansflow-read-")
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	defer os.RemoveAll(dir)
	if err := checkClone(repo, commit, opts); err != nil {
		return nil, err
	}
	g, err := newGit(repo, opts)
	if err != nil {
		return nil, err
	}
	defer g.close()
	if err := g.clone(ctx, commit, dir); err != nil {
		return nil, err
	}
	out, err := g.run(ctx, "-C", dir, "ls-tree", "--name-only", "HEAD", "--", clean)
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(string(out)) != clean {
		return nil, fmt.Errorf("read %s at %.12s from %s: %w", clean, commit, Scrub(repo), os.ErrNotExist)
	}
	return g.run(ctx, "-C", dir, "show", "HEAD:"+clean)
}
