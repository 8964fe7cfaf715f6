package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/distribution/reference"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/services/docker-runner/dockertest"
)

// A registry entry whose password is kept in the secret store: the push
// authenticates with it (the registry refuses anonymous pushes), a filter
// of the secret that refuses the run stops the push before anything is
// sent, an entry that could send it to an unknown host is refused, and the
// password appears in no answer, record, message or file.
func TestRegistryPasswordFromSecretStore(t *testing.T) {
	cli := dockertest.Client(t)
	image := dockertest.BusyboxImage(t, cli)
	const password = "reg1stry/Pa55+word=odd?chars"
	reg := dockertest.StartRegistry(t, "ci", password)
	forms := leakForms(password)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dataDir := t.TempDir()
	st, err := startStack(ctx, stackConfig{DataDir: dataDir, NATSAddr: "off", DockerRunner: true, Audit: true, Pipeline: true, Concurrency: 2}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer st.stop()
	c := newClient(st.URL, st.Token)
	post := func(path string, v any) error {
		b, _ := json.Marshal(v)
		return c.do(ctx, http.MethodPost, path, "application/json", bytes.NewReader(b), nil)
	}

	// An entry that could not bind the password to a host is refused.
	var ae *apiError
	for _, bad := range []apiv1.Registry{
		{ID: "nourl", Name: "nourl", Username: "ci", PasswordSecret: "REGISTRY_PASSWORD"},
		{ID: "nouser", Name: "nouser", URL: reg.URL(), PasswordSecret: "REGISTRY_PASSWORD"},
		{ID: "badname", Name: "badname", URL: reg.URL(), Username: "ci", PasswordSecret: "not-a-name"},
	} {
		if err := post("/api/v1/registries", bad); !errors.As(err, &ae) || ae.Status != http.StatusBadRequest {
			t.Fatalf("registry %s: %v, want a 400", bad.ID, err)
		}
	}
	if err := post("/api/v1/registries", apiv1.Registry{ID: "private", Name: "private", URL: reg.URL(), Username: "ci", PasswordSecret: "REGISTRY_PASSWORD"}); err != nil {
		t.Fatal(err)
	}
	yaml := `pipeline:
  name: ship
  steps:
    - name: push
      type: docker_push
      docker_image: "` + image + `"
      docker_registry: private
`
	if _, err := c.applyPipeline(ctx, "ship.yaml", []byte(yaml)); err != nil {
		t.Fatal(err)
	}
	// The entry's secret does not exist: the trigger is refused, naming it.
	if _, err := c.trigger(ctx, "ship", apiv1.TriggerBody{}); !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || !strings.Contains(err.Error(), "REGISTRY_PASSWORD") {
		t.Fatalf("trigger without the registry's secret: %v, want a 400 naming REGISTRY_PASSWORD", err)
	}
	body, _ := json.Marshal(apiv1.SetSecretRequest{Value: password, Filters: secret.Filters{Branches: []string{"main"}}})
	var answers [][]byte
	var set []byte
	if err := c.do(ctx, http.MethodPut, "/api/v1/secrets/REGISTRY_PASSWORD", "application/json", bytes.NewReader(body), &set); err != nil {
		t.Fatal(err)
	}
	answers = append(answers, set)

	repo := reference.Path(mustParse(t, image))
	tags := func() string {
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("%s/v2/%s/tags/list", reg.URL(), repo), nil)
		req.SetBasicAuth(reg.Username, reg.Password)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}

	// Branch "feature" is not one the secret allows: the step fails
	// naming the filter, and nothing reaches the registry.
	run, err := c.trigger(ctx, "ship", apiv1.TriggerBody{Branch: "feature"})
	if err != nil {
		t.Fatal(err)
	}
	waitRun(t, c, run.ID)
	r, err := c.getRun(ctx, run.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != "failed" || !strings.Contains(r.Steps[0].Error, "branches filter") || !strings.Contains(r.Steps[0].Error, "password_secret") {
		t.Fatalf("push on a branch the secret refuses: %s, %q; want failed naming the registry's password_secret and the branches filter", r.Status, r.Steps[0].Error)
	}
	if got := tags(); !strings.Contains(got, "NAME_UNKNOWN") {
		t.Fatalf("registry after the refused push: %s, want no repository", got)
	}

	// On main the push authenticates with the sealed password.
	run, err = c.trigger(ctx, "ship", apiv1.TriggerBody{Branch: "main"})
	if err != nil {
		t.Fatal(err)
	}
	waitRun(t, c, run.ID)
	got := getRaw(t, ctx, c, "/api/v1/runs/"+run.ID)[0]
	answers = append(answers, got)
	var ok apiv1.Run
	if err := json.Unmarshal(got, &ok); err != nil {
		t.Fatal(err)
	}
	if s := ok.Steps[0]; ok.Status != "succeeded" {
		t.Fatalf("push: %s %s\nstdout %s\nstderr %s", ok.Status, s.Error, s.Logs.Stdout, s.Logs.Stderr)
	}
	tag := "latest"
	if tagged, isTagged := mustParse(t, image).(reference.Tagged); isTagged {
		tag = tagged.Tag()
	}
	if got := tags(); !strings.Contains(got, `"`+tag+`"`) {
		t.Fatalf("registry tags after the push: %s, want %s", got, tag)
	}
	answers = append(answers, getRaw(t, ctx, c, "/api/v1/registries", "/api/v1/secrets", "/api/v1/runs",
		"/api/v1/runs/"+run.ID+"/logs", "/api/v1/pipelines/ship/export")...)
	for i, a := range answers {
		assertNoLeak(t, fmt.Sprintf("API answer %d", i), a, forms)
	}
	found := searchStack(t, ctx, st, c, dataDir, forms, func([]byte) {})
	if !found.sealed {
		t.Error("no step request carried a sealed box")
	}
}

func mustParse(t *testing.T, ref string) reference.Named {
	t.Helper()
	n, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
