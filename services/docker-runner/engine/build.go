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
	"strings"
	"time"

	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/registry"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/services/docker-runner/policy"
)

// build executes docker_build: the run's source (or its docker_config
// context subdirectory) is streamed as a tar to the daemon's classic
// builder, whose output goes to the step's stdout line by line.
//
// BuildKit is not used: through the plain Engine API it needs the
// client-side session protocol, and the classic builder gives the same
// results for the Dockerfiles pipelines use.
func (e *Engine) build(ctx context.Context, req *event.StepRequested, t stepIO) (map[string]string, error) {
	ref, err := namedRef(req.Image, req.Tag)
	if err != nil {
		return nil, fmt.Errorf("docker_build: %w", err)
	}
	name := reference.FamiliarString(ref)
	p := params(req.DockerConfig)
	opts, err := buildOptions(p)
	if err != nil {
		return nil, fmt.Errorf("docker_build %s: %w", name, err)
	}
	opts.Tags = []string{name}
	if err := e.cfg.Policy.Check(policy.Step{Type: req.Type, Pipeline: req.Pipeline, Image: name, Network: opts.NetworkMode}); err != nil {
		return nil, fmt.Errorf("docker_build %s: %w", name, err)
	}
	opts.AuthConfigs = e.buildAuths(t)

	src, err := t.SourceDir(ctx)
	if err != nil {
		return nil, fmt.Errorf("docker_build %s: source: %w", name, err)
	}
	sub, _ := p.str("context")
	if sub == "" {
		sub = "."
	}
	ctxDir, err := within(src, sub, "docker_config.context")
	if err != nil {
		return nil, fmt.Errorf("docker_build %s: %w", name, err)
	}
	if fi, err := os.Stat(ctxDir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("docker_build %s: %w: context %q is not a directory of the run's source", name, ErrInvalidStep, sub)
	}
	df, _ := p.str("dockerfile")
	dfInContext, dfOutside, err := locateDockerfile(src, ctxDir, df)
	if err != nil {
		return nil, fmt.Errorf("docker_build %s: %w", name, err)
	}
	opts.Dockerfile = dfInContext

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
func buildOptions(p params) (build.ImageBuildOptions, error) {
	opts := build.ImageBuildOptions{Remove: true, ForceRemove: true, Version: build.BuilderV1}
	var err error
	if opts.Target, err = p.str("target"); err != nil {
		return opts, err
	}
	if opts.Platform, err = p.str("platform"); err != nil {
		return opts, err
	}
	if opts.NoCache, err = p.boolean("no_cache", false); err != nil {
		return opts, err
	}
	if opts.PullParent, err = p.boolean("pull", false); err != nil {
		return opts, err
	}
	if opts.CacheFrom, err = p.list("cache_from"); err != nil {
		return opts, err
	}
	if opts.NetworkMode, err = p.str("network"); err != nil {
		return opts, err
	}
	if opts.Labels, err = p.strMap("labels"); err != nil {
		return opts, err
	}
	args, err := p.strMap("build_args")
	if err != nil {
		return opts, err
	}
	if len(args) > 0 {
		opts.BuildArgs = map[string]*string{}
		for k, v := range args {
			opts.BuildArgs[k] = &v
		}
	}
	return opts, nil
}

// buildAuths hands the daemon every credential whose registry host is
// known, for base images in private registries.
func (e *Engine) buildAuths(t stepIO) map[string]registry.AuthConfig {
	auths := map[string]registry.AuthConfig{}
	for key, c := range e.cfg.Credentials {
		host := c.Server
		if host == "" && (strings.ContainsAny(key, ".:") || key == "localhost") {
			host = registryHost(key)
		}
		if host == "" {
			continue
		}
		t.Mask(c.Password)
		auths[host] = registry.AuthConfig{Username: c.Username, Password: c.Password, ServerAddress: serverAddress(host)}
	}
	return auths
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
