package engine_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/services/docker-runner/dockertest"
	"github.com/ansflow/ansflow/services/docker-runner/engine"
)

// recorder is an HTTP server standing in for a registry on another host: it
// records every request, so a test can show that nothing was sent to it.
type recorder struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []string
}

func newRecorder(t *testing.T) *recorder {
	r := &recorder{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.reqs = append(r.reqs, req.Method+" "+req.URL.Path+" auth="+req.Header.Get("Authorization"))
		r.mu.Unlock()
		w.Header().Set("WWW-Authenticate", `Basic realm="other"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *recorder) host() string { return strings.TrimPrefix(r.URL, "http://") }

func (r *recorder) requests() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.reqs...)
}

// TestCredentialsBoundToHost: a registry credential goes only to the host it
// was made for. A step naming registry "prod" whose registry_url (or image)
// is on another host fails with a clear error, and that host receives
// nothing; the right host still gets it.
func TestCredentialsBoundToHost(t *testing.T) {
	reg := dockertest.StartRegistry(t, regUser, regPass)
	other := newRecorder(t)
	h := newHarness(t, engine.Config{Credentials: engine.Credentials{
		"prod": {Server: reg.Host, Username: regUser, Password: regPass}}})

	for _, tc := range []struct {
		name  string
		setup func(*event.StepRequested)
		want  string
	}{
		{"push: catalogue entry without URL, registry_url elsewhere", func(r *event.StepRequested) {
			r.Type, r.Image = engine.TypePush, h.base
			r.Registry = &event.Registry{Name: "prod"}
			r.DockerConfig["registry_url"] = other.URL
		}, `registry credential bound to another host: the runner's credential for registry "prod" is for ` + reg.Host + `, not ` + other.host() + `: nothing was sent`},
		{"pull: catalogue entry without URL, registry_url elsewhere", func(r *event.StepRequested) {
			r.Type, r.Image = engine.TypePull, "ansflow-test/busybox"
			r.Registry = &event.Registry{Name: "prod"}
			r.DockerConfig["registry_url"] = other.URL
		}, `the runner's credential for registry "prod" is for ` + reg.Host + `, not ` + other.host()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := h.newRequest(engine.TypePush)
			tc.setup(req)
			r := h.exec(req, time.Minute)
			wantStatus(t, r, event.StatusFailed)
			wantContains(t, "error", r.Error, tc.want)
			if got := other.requests(); len(got) != 0 {
				t.Fatalf("the other host received %q", got)
			}
			if strings.Contains(r.Error+r.Stdout+r.Stderr, regPass) {
				t.Fatalf("password leaked:\n%s", r)
			}
		})
	}

	// with the catalogue's URL, a contradicting registry_url is ignored
	// (as it always was): the credential goes to the catalogue's host only
	push := h.newRequest(engine.TypePush)
	push.Image, push.Tag = h.base, ""
	push.DockerConfig["repository"] = "ansflow-e2e/bound"
	push.DockerConfig["registry_url"] = other.URL
	push.Registry = &event.Registry{Name: "prod", URL: reg.URL()}
	t.Cleanup(func() { dockertest.RemoveImage(t, h.cli, reg.Host+"/ansflow-e2e/bound:latest") })
	r := h.exec(push, time.Minute)
	wantStatus(t, r, event.StatusSucceeded)
	wantContains(t, "stdout", r.Stdout, "docker_config.registry_url "+other.URL+" is ignored: registry prod has the URL "+reg.URL())
	if r.Outputs["image"] != reg.Host+"/ansflow-e2e/bound:latest" {
		t.Errorf("pushed %v", r.Outputs)
	}
	if got := other.requests(); len(got) != 0 {
		t.Fatalf("the other host received %q", got)
	}
}

// TestBuildFromPrivateBase: a build whose FROM names a private registry
// receives that registry's credential (found by its host) and pulls the
// base image.
func TestBuildFromPrivateBase(t *testing.T) {
	reg := dockertest.StartRegistry(t, regUser, regPass)
	h := newHarness(t, engine.Config{Credentials: engine.Credentials{
		"private": {Server: reg.Host, Username: regUser, Password: regPass}}})
	tag := fmt.Sprint(time.Now().UnixNano())
	baseRemote := reg.Host + "/ansflow-e2e/private-base:" + tag
	t.Cleanup(func() {
		dockertest.RemoveImage(t, h.cli, baseRemote)
		dockertest.RemoveImage(t, h.cli, "ansflow-e2e/from-private:"+tag)
	})
	push := h.newRequest(engine.TypePush)
	push.Image = h.base
	push.Registry = &event.Registry{Name: "private"}
	push.DockerConfig["repository"] = "ansflow-e2e/private-base"
	// push the busybox base as private-base:tag
	b := h.newRequest(engine.TypeBuild)
	b.Image, b.Tag = "ansflow-e2e/private-base", tag
	h.upload(b, writeTree(t, map[string]string{"Dockerfile": "FROM " + h.base + "\n"}))
	wantStatus(t, h.exec(b, time.Minute), event.StatusSucceeded)
	push.Image, push.Tag = "ansflow-e2e/private-base", tag
	wantStatus(t, h.exec(push, time.Minute), event.StatusSucceeded)
	dockertest.RemoveImage(t, h.cli, baseRemote)
	dockertest.RemoveImage(t, h.cli, "ansflow-e2e/private-base:"+tag)

	build := h.newRequest(engine.TypeBuild)
	build.Image, build.Tag = "ansflow-e2e/from-private", tag
	build.DockerConfig["build_args"] = map[string]any{"BASE_TAG": tag}
	h.upload(build, writeTree(t, map[string]string{"Dockerfile": "ARG BASE_TAG=none\nFROM " + reg.Host + "/ansflow-e2e/private-base:${BASE_TAG} AS base\nFROM base\nRUN echo built on the private base\n"}))
	r := h.exec(build, 2*time.Minute)
	wantStatus(t, r, event.StatusSucceeded)
	wantContains(t, "build log", r.Stdout, "built on the private base")

	// a runner holding only another registry's credential hands the build
	// none for this one: the base cannot be pulled
	dockertest.RemoveImage(t, h.cli, baseRemote)
	dockertest.RemoveImage(t, h.cli, "ansflow-e2e/from-private:"+tag)
	h2 := newHarness(t, engine.Config{Credentials: engine.Credentials{
		"elsewhere": {Server: "registry.example.com", Username: regUser, Password: regPass}}})
	build2 := h2.newRequest(engine.TypeBuild)
	build2.Image, build2.Tag, build2.DockerConfig = build.Image, build.Tag, build.DockerConfig
	h2.upload(build2, writeTree(t, map[string]string{"Dockerfile": "FROM " + baseRemote + "\nRUN true\n"}))
	r = h2.exec(build2, 2*time.Minute)
	wantStatus(t, r, event.StatusFailed)
	wantContains(t, "error", r.Error, "no basic auth credentials")
}
