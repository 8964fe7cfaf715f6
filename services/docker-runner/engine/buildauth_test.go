package engine

import (
	"errors"
	"reflect"
	"sort"
	"testing"

	"github.com/ansflow/ansflow/pkg/event"
)

// TestBuildAuths: a build is handed the credentials of the registries its
// Dockerfile, cache_from and tag name, and no other.
func TestBuildAuths(t *testing.T) {
	df := []byte(`# syntax=docker/dockerfile:1
ARG REG=base.example.com
ARG UNSET
FROM --platform=linux/amd64 ${REG}/golang:1.26 AS build
COPY --from=tools.example.com:5000/lint:1 /lint /lint
COPY --from=build /out /out
COPY --from=0 /x /x
FROM $UNSET/nothing
FROM \
  scratch
FROM build
`)
	got := dockerfileImages(df, map[string]string{"REG": "override.example.com"})
	want := []string{"override.example.com/golang:1.26", "tools.example.com:5000/lint:1"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("images %q, want %q", got, want)
	}

	e := &Engine{cfg: Config{Credentials: Credentials{
		"override":           {Server: "override.example.com", Username: "a", Password: "pa"},
		"tools":              {Server: "tools.example.com:5000", Username: "b", Password: "pb"},
		"cache":              {Server: "cache.example.com", Username: "c", Password: "pc"},
		"unused.example.com": {Username: "d", Password: "pd"},
		"hub":                {Server: "https://index.docker.io/v1/", Username: "e", Password: "pe"},
		"nameonly":           {Username: "f", Password: "pf"},
	}}}
	auths := e.buildAuths(&benchTask{}, e.cfg.Credentials, append(got, "cache.example.com/app:cache", "myorg/app:1"))
	var hosts []string
	for h := range auths {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	wantHosts := []string{"cache.example.com", "https://index.docker.io/v1/", "override.example.com", "tools.example.com:5000"}
	if !reflect.DeepEqual(hosts, wantHosts) {
		t.Errorf("build auths for %q, want %q", hosts, wantHosts)
	}
	if a := auths["tools.example.com:5000"]; a.Username != "b" || a.Password != "pb" {
		t.Errorf("tools auth %+v", a)
	}
}

// TestStepCredentials: a registry password from the secret store joins the
// runner's credentials for its step only, under the entry's name and id,
// bound to the entry's URL host; it replaces a runner credential of the
// same name, is never sent to another host, and a request without an
// opened password uses the runner's credentials alone.
func TestStepCredentials(t *testing.T) {
	held := Credentials{"prod": {Server: "old.example.com", Username: "runner", Password: "runner-pw"}}
	e := &Engine{cfg: Config{Credentials: held}}
	req := &event.StepRequested{Registry: &event.Registry{ID: "r1", Name: "prod", URL: "https://prod.example.com/team", Username: "ci"}}

	creds, err := e.stepCredentials(req, &benchTask{})
	if err != nil || !reflect.DeepEqual(creds, held) {
		t.Fatalf("without a sealed password: %v %v, want the runner's", creds, err)
	}
	creds, err = e.stepCredentials(req, &benchTask{registryPassword: "sealed-pw"})
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"prod", "r1"} {
		c, ok, err := creds.For("prod.example.com", key)
		if err != nil || !ok || c.Username != "ci" || c.Password != "sealed-pw" {
			t.Errorf("For(prod.example.com, %s) = %v %v %v, want the sealed credential", key, c, ok, err)
		}
	}
	if _, _, err := creds.For("other.example", "prod"); !errors.Is(err, ErrCredentialHost) {
		t.Errorf("For(other.example, prod): %v, want ErrCredentialHost", err)
	}
	if held["prod"].Password != "runner-pw" {
		t.Error("the runner's own credentials were changed")
	}
	req.Registry.URL = ""
	if _, err := e.stepCredentials(req, &benchTask{registryPassword: "sealed-pw"}); !errors.Is(err, ErrInvalidStep) {
		t.Errorf("an entry without URL: %v, want ErrInvalidStep", err)
	}
}
