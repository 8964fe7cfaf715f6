package source

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
)

// ErrRepoRefused is wrapped by the errors of [CheckRepoURL] and [Clone]
// for a repository URL the runner's policy does not allow.
var ErrRepoRefused = errors.New("repository refused")

// ErrRefNotFound is wrapped by [ResolveRef]'s error when the repository
// has no such branch or tag.
var ErrRefNotFound = errors.New("no such branch or tag")

// CloneOptions is the runner operator's clone policy.
type CloneOptions struct {
	// AllowLocal allows file:// URLs and local paths (default off).
	AllowLocal bool
	// CAFile, when set, is the PEM file of the certificate authorities
	// git trusts for https:// repositories instead of the system's (a
	// forge with a private CA).
	CAFile string
}

// allowedSchemes are the transports a run may clone over; file is added
// only by [CloneOptions.AllowLocal].
var allowedSchemes = []string{"https", "ssh", "git"}

// scpLike is git's user@host:path form, which git reads as ssh.
var scpLike = regexp.MustCompile(`^(?:[A-Za-z0-9._~-]+@)?[A-Za-z0-9.-]+:[^/]`)

// CheckRepoURL reports whether a run may clone repo under opts: https://,
// ssh://, git:// and scp-like user@host:path always; file:// and local
// paths only with AllowLocal; nothing else (http://, ext::, fd::, options).
// Its errors wrap [ErrRepoRefused] and quote repo with credentials scrubbed.
func CheckRepoURL(repo string, opts CloneOptions) error {
	shown := Scrub(repo)
	refuse := func(why string) error { return fmt.Errorf("clone %s: %w: %s", shown, ErrRepoRefused, why) }
	switch {
	case repo == "":
		return refuse("empty repository URL")
	case strings.HasPrefix(repo, "-"):
		return refuse("it looks like an option")
	case strings.ContainsAny(repo, "\x00\n\r"):
		return refuse("control characters")
	case strings.Contains(repo, "::"):
		return refuse("git remote helpers (transport::address) are not allowed")
	}
	if scheme, _, ok := strings.Cut(repo, "://"); ok {
		scheme = strings.ToLower(scheme)
		if scheme == "file" {
			if !opts.AllowLocal {
				return refuse("file:// repositories are refused by the runner's policy (allow them with the runner's --allow-local-clone)")
			}
			return nil
		}
		for _, s := range allowedSchemes {
			if scheme == s {
				if _, err := url.Parse(repo); err != nil {
					return refuse("not a valid URL")
				}
				return nil
			}
		}
		return refuse(fmt.Sprintf("scheme %q: want https, ssh or git", scheme))
	}
	if scpLike.MatchString(repo) && !strings.HasPrefix(repo, "/") && !strings.HasPrefix(repo, ".") {
		return nil // user@host:path, ssh
	}
	if !opts.AllowLocal {
		return refuse("local paths are refused by the runner's policy (allow them with the runner's --allow-local-clone)")
	}
	return nil
}

// Clone clones repo into dir and checks out commit (the default branch's
// head when commit is empty; a commit on no branch, such as a pull
// request's head, is fetched by its id), after [CheckRepoURL]. Arguments go to git as
// argv, never through a shell; git runs with a minimal environment (PATH,
// a fresh HOME, no system or global config, no prompts, only the allowed
// protocols, for submodules too), so it neither reads the runner's
// credentials nor its configuration. Errors quote git's output with
// credentials scrubbed ([Scrub]).
func Clone(ctx context.Context, opts CloneOptions, repo, commit, dir string) error {
	if err := checkClone(repo, commit, opts); err != nil {
		return err
	}
	g, err := newGit(repo, opts)
	if err != nil {
		return err
	}
	defer g.close()
	return g.clone(ctx, commit, dir)
}

// checkClone refuses what [Clone] must not pass to git: a repository the
// policy refuses ([CheckRepoURL]) or a commit that looks like an option.
func checkClone(repo, commit string, opts CloneOptions) error {
	if err := CheckRepoURL(repo, opts); err != nil {
		return err
	}
	if strings.HasPrefix(commit, "-") || strings.ContainsAny(commit, " \x00\n") {
		return fmt.Errorf("clone %s: refusing commit %q that looks like an option", Scrub(repo), commit)
	}
	return nil
}

// clone is [Clone] with g's environment, once the arguments are checked.
func (g *sandboxedGit) clone(ctx context.Context, commit, dir string) error {
	repo := g.repo
	run := func(args ...string) error {
		_, err := g.run(ctx, args...)
		return err
	}
	if err := run("clone", "--quiet", "--", repo, dir); err != nil {
		return err
	}
	if commit != "" {
		if err := run("-C", dir, "checkout", "--quiet", "--detach", commit); err != nil {
			// a commit on no branch (a pull request's head, refs/pull/N/head
			// on GitHub, a fork's commit) is fetched by its id
			if ferr := run("-C", dir, "fetch", "--quiet", "origin", "--", commit); ferr != nil {
				return err
			}
			return run("-C", dir, "checkout", "--quiet", "--detach", commit)
		}
	}
	return nil
}

// gitEnv is the whole environment git gets.
func gitEnv(home string, opts CloneOptions) []string {
	protocols := strings.Join(allowedSchemes, ":")
	if opts.AllowLocal {
		protocols += ":file"
	}
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + home,
		"XDG_CONFIG_HOME=" + home,
		"GIT_TERMINAL_PROMPT=0",
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_CONFIG_GLOBAL=/dev/null",
		"GIT_ALLOW_PROTOCOL=" + protocols,
		"GIT_SSH_COMMAND=ssh -o BatchMode=yes",
		"LC_ALL=C",
	}
	if opts.CAFile != "" {
		env = append(env, "GIT_SSL_CAINFO="+opts.CAFile)
	}
	return env
}

var (
	// urlUserinfo matches the user[:password]@ of a URL.
	urlUserinfo = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'"]+@`)
	// knownTokens matches forge tokens however they got into a text.
	knownTokens = regexp.MustCompile(`\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_-]{20,})\b`)
	// authHeaders matches HTTP authorization values git may trace.
	authHeaders = regexp.MustCompile(`(?i)(authorization:\s*(?:basic|bearer|token)\s+)\S+`)
)

// Scrub removes credentials from s: the user:password@ of every URL,
// forge tokens (ghp_, github_pat_, glpat-) and authorization headers. It
// is applied to every text a clone error quotes.
func Scrub(s string) string {
	s = urlUserinfo.ReplaceAllString(s, "${1}***@")
	s = knownTokens.ReplaceAllString(s, "***")
	return authHeaders.ReplaceAllString(s, "${1}***")
}

// credentialsOf returns the user and password of repo's URL, raw and
// decoded, so that they are scrubbed wherever git quotes them.
func credentialsOf(repo string) []string {
	u, err := url.Parse(repo)
	if err != nil || u.User == nil {
		return nil
	}
	var out []string
	add := func(v string) {
		if len(v) >= 4 { // shorter values would mangle ordinary text
			out = append(out, v)
		}
	}
	add(u.User.Username())
	if p, ok := u.User.Password(); ok {
		add(p)
		add(url.QueryEscape(p))
	}
	if raw, _, ok := strings.Cut(strings.TrimPrefix(repo, u.Scheme+"://"), "@"); ok {
		add(raw)
	}
	return out
}

func scrubWith(s string, secrets []string) string {
	s = Scrub(s)
	for _, v := range secrets {
		s = strings.ReplaceAll(s, v, "***")
	}
	return s
}
