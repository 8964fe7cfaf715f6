package engine

import (
	"reflect"
	"sort"
	"testing"
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
	auths := e.buildAuths(&benchTask{}, append(got, "cache.example.com/app:cache", "myorg/app:1"))
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
