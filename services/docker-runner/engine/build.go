package engine

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/registry"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/spec/steps"
	"github.com/ansflow/ansflow/services/docker-runner/policy"
)

// build executes docker_build: the run's source (or its docker_config
// context subdirectory) is streamed as a tar to the daemon's classic
// builder, whose output goes to the step's stdout line by line.
//
// BuildKit is not used: through the plain Engine API it needs the
// client-side session protocol, and the classic builder gives the same
// results for the Dockerfiles pipelines use.
func (e *Engine) build(ctx context.Context, req *event.StepRequested, t stepIO, creds Credentials) (map[string]string, error) {
	ref, err := namedRef(req.Image, req.Tag)
	if err != nil {
		return nil, fmt.Errorf("docker_build: %w", err)
	}
	name := reference.FamiliarString(ref)
	c, err := decodeConfig[steps.DockerBuildConfig](req.DockerConfig)
	if err != nil {
		return nil, fmt.Errorf("docker_build %s: %w", name, err)
	}
	opts := buildOptions(c)
	opts.Tags = []string{name}
	if err := e.cfg.Policy.Check(policy.Step{Type: req.Type, Pipeline: req.Pipeline, Image: name, Network: opts.NetworkMode}); err != nil {
		return nil, fmt.Errorf("docker_build %s: %w", name, err)
	}

	src, err := t.SourceDir(ctx)
	if err != nil {
		return nil, fmt.Errorf("docker_build %s: source: %w", name, err)
	}
	sub := c.Context
	ctxDir, err := within(src, sub, "docker_config.context")
	if err != nil {
		return nil, fmt.Errorf("docker_build %s: %w", name, err)
	}
	if fi, err := os.Stat(ctxDir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("docker_build %s: %w: context %q is not a directory of the run's source", name, ErrInvalidStep, sub)
	}
	dfInContext, dfOutside, err := locateDockerfile(src, ctxDir, c.Dockerfile)
	if err != nil {
		return nil, fmt.Errorf("docker_build %s: %w", name, err)
	}
	opts.Dockerfile = dfInContext
	dfPath := dfOutside
	if dfPath == "" {
		dfPath = filepath.Join(ctxDir, filepath.FromSlash(dfInContext))
	}
	dfText, err := os.ReadFile(dfPath)
	if err != nil {
		return nil, fmt.Errorf("docker_build %s: read dockerfile: %w", name, err)
	}
	refs := append(dockerfileImages(dfText, c.BuildArgs), opts.CacheFrom...)
	refs = append(refs, name)
	opts.AuthConfigs = e.buildAuths(t, creds, refs)

	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeContext(pw, ctxDir, dfInContext, dfOutside)) }()
	defer pr.Close()

	resp, err := e.cli.ImageBuild(ctx, pr, opts)
	if err != nil {
		if ctx.Err() != nil {
			return nil, stopped(ctx, "docker_build "+name)
		}
		return nil, fmt.Errorf("docker_build %s: %w", name, registryErr(err, "", false))
	}
	defer resp.Body.Close()
	var id string
	steps := &stepSniffer{w: t.Stdout()}
	err = readProgress(resp.Body, steps, func(raw json.RawMessage) {
		var r build.Result
		if json.Unmarshal(raw, &r) == nil && r.ID != "" {
			id = r.ID
		}
	})
	if ctx.Err() != nil {
		return nil, stopped(ctx, "docker_build "+name)
	}
	if err != nil {
		if steps.last != "" {
			return nil, fmt.Errorf("docker_build %s: %s: %w", name, steps.last, registryErr(err, "", false))
		}
		return nil, fmt.Errorf("docker_build %s: %w", name, registryErr(err, "", false))
	}
	if id == "" {
		img, err := e.cli.ImageInspect(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("docker_build %s: inspect the built image: %w", name, err)
		}
		id = img.ID
	}
	return map[string]string{"image": name, "image_id": id}, nil
}

// buildOptions maps docker_config onto the build API's options.
func buildOptions(c *steps.DockerBuildConfig) build.ImageBuildOptions {
	opts := build.ImageBuildOptions{Remove: true, ForceRemove: true, Version: build.BuilderV1,
		Target: c.Target, Platform: c.Platform, NoCache: c.NoCache, PullParent: c.Pull,
		CacheFrom: c.CacheFrom, NetworkMode: c.Network, Labels: c.Labels}
	if len(c.BuildArgs) > 0 {
		opts.BuildArgs = map[string]*string{}
		for k, v := range c.BuildArgs {
			opts.BuildArgs[k] = &v
		}
	}
	return opts
}

// buildAuths hands the daemon the credentials of the registries refs name
// (the Dockerfile's base images, cache_from and the build's own tag), and
// no other: a build must not receive every credential the runner holds.
func (e *Engine) buildAuths(t stepIO, creds Credentials, refs []string) map[string]registry.AuthConfig {
	held := creds.hosts()
	auths := map[string]registry.AuthConfig{}
	for _, r := range refs {
		named, err := reference.ParseNormalizedNamed(r)
		if err != nil {
			continue
		}
		host := reference.Domain(named)
		c, ok := held[host]
		if !ok {
			continue
		}
		t.Mask(c.Password)
		auths[serverAddress(host)] = registry.AuthConfig{Username: c.Username, Password: c.Password, ServerAddress: serverAddress(host)}
	}
	return auths
}

// dockerfileImages returns the images a Dockerfile pulls: its FROM images
// and COPY/ADD --from images that are not stages, with ARGs declared before
// the first FROM expanded (build args win over their defaults). A reference
// that still holds a variable is left out: its registry gets no credential.
func dockerfileImages(df []byte, buildArgs map[string]string) []string {
	args := map[string]string{}
	stages := map[string]bool{}
	var out []string
	seenFrom := false
	expand := func(s string) (string, bool) {
		v := os.Expand(s, func(k string) string {
			name, def, hasDef := strings.Cut(k, ":-")
			if v, ok := args[name]; ok && v != "" {
				return v
			}
			if hasDef {
				return def
			}
			return "$" + k
		})
		return v, !strings.Contains(v, "$")
	}
	add := func(img string) {
		img, ok := expand(img)
		if !ok || img == "" || strings.EqualFold(img, "scratch") || stages[strings.ToLower(img)] {
			return
		}
		out = append(out, img)
	}
	for _, line := range dockerfileLines(df) {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch strings.ToUpper(f[0]) {
		case "ARG":
			if seenFrom {
				continue
			}
			for _, a := range f[1:] {
				k, v, _ := strings.Cut(a, "=")
				if bv, ok := buildArgs[k]; ok {
					v = bv
				}
				args[k] = strings.Trim(v, `"'`)
			}
		case "FROM":
			seenFrom = true
			rest := f[1:]
			for len(rest) > 0 && strings.HasPrefix(rest[0], "--") {
				rest = rest[1:]
			}
			if len(rest) == 0 {
				continue
			}
			add(rest[0])
			if len(rest) >= 3 && strings.EqualFold(rest[1], "AS") {
				stages[strings.ToLower(rest[2])] = true
			}
		case "COPY", "ADD":
			for _, a := range f[1:] {
				if from, ok := strings.CutPrefix(a, "--from="); ok {
					if _, err := strconv.Atoi(from); err != nil {
						add(from)
					}
				}
			}
		}
	}
	return out
}

// dockerfileLines returns a Dockerfile's instructions, continuation lines
// joined and comments dropped.
func dockerfileLines(df []byte) []string {
	var out []string
	var cur strings.Builder
	for _, l := range strings.Split(string(df), "\n") {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "#") {
			continue
		}
		if c, ok := strings.CutSuffix(t, "\\"); ok {
			cur.WriteString(c + " ")
			continue
		}
		cur.WriteString(t)
		out = append(out, cur.String())
		cur.Reset()
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}

// locateDockerfile finds the Dockerfile: df (default "Dockerfile") relative
// to the context directory, or else relative to the source root. It returns
// its path inside the context, or, for a Dockerfile outside the context, the
// name it is added under and its file path.
func locateDockerfile(src, ctxDir, df string) (inContext, outside string, err error) {
	if df == "" {
		df = "Dockerfile"
	}
	candidates := []string{}
	if p, err := within(ctxDir, df, "docker_config.dockerfile"); err == nil {
		candidates = append(candidates, p)
	}
	if p, err := within(src, df, "docker_config.dockerfile"); err == nil {
		candidates = append(candidates, p)
	}
	for _, p := range candidates {
		fi, err := os.Stat(p)
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		rel, err := filepath.Rel(ctxDir, p)
		if err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
			return filepath.ToSlash(rel), "", nil
		}
		return ".ansflow.dockerfile", p, nil
	}
	return "", "", fmt.Errorf("%w: dockerfile %q not found in the build context or the run's source", ErrInvalidStep, df)
}

// writeContext writes dir as the build context tar to w, honouring its
// .dockerignore the way the docker CLI does (the Dockerfile and
// .dockerignore are always sent). A Dockerfile from outside the context is
// added as dockerfile. Owners are reset to root, as the CLI does.
func writeContext(w io.Writer, dir, dockerfile, outside string) error {
	var pm *patternmatcher.PatternMatcher
	if f, err := os.Open(filepath.Join(dir, ".dockerignore")); err == nil {
		patterns, err := ignorefile.ReadAll(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("read .dockerignore: %w", err)
		}
		if pm, err = patternmatcher.New(patterns); err != nil {
			return fmt.Errorf(".dockerignore: %w", err)
		}
	}
	tw := tar.NewWriter(w)
	keep := map[string]bool{".dockerignore": true}
	if outside == "" {
		keep[dockerfile] = true
	}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		if pm != nil && !keep[rel] {
			skip, err := pm.MatchesOrParentMatches(rel)
			if err != nil {
				return fmt.Errorf(".dockerignore on %s: %w", rel, err)
			}
			if skip {
				if d.IsDir() && !pm.Exclusions() {
					return filepath.SkipDir
				}
				return nil
			}
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		return addFile(tw, path, rel, info)
	})
	if err != nil {
		return fmt.Errorf("build context %s: %w", dir, err)
	}
	if outside != "" {
		info, err := os.Stat(outside)
		if err != nil {
			return fmt.Errorf("dockerfile: %w", err)
		}
		if err := addFile(tw, outside, dockerfile, info); err != nil {
			return fmt.Errorf("dockerfile: %w", err)
		}
	}
	return tw.Close()
}

func addFile(tw *tar.Writer, path, name string, info fs.FileInfo) error {
	link := ""
	switch {
	case info.Mode()&fs.ModeSymlink != 0:
		var err error
		if link, err = os.Readlink(path); err != nil {
			return err
		}
	case info.Mode().IsRegular(), info.IsDir():
	default:
		return nil // sockets, devices and pipes are not sent
	}
	hdr, err := tar.FileInfoHeader(info, link)
	if err != nil {
		return err
	}
	hdr.Name = name
	if info.IsDir() {
		hdr.Name += "/"
	}
	// as the CLI sends it: owned by root, whole-second times (no PAX
	// record per file)
	hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
	hdr.ModTime, hdr.AccessTime, hdr.ChangeTime = hdr.ModTime.Truncate(time.Second), time.Time{}, time.Time{}
	hdr.Format = tar.FormatPAX
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if !info.Mode().IsRegular() {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.Copy(tw, f); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// stepSniffer passes build output through and remembers the last
// "Step N/M : INSTRUCTION" line, so that an error can name the instruction
// that failed.
type stepSniffer struct {
	w    io.Writer
	last string
}

func (s *stepSniffer) Write(p []byte) (int, error) {
	if line, ok := strings.CutPrefix(string(p), "Step "); ok {
		line, _, _ = strings.Cut(line, "\n")
		s.last = "Step " + line
	}
	return s.w.Write(p)
}
