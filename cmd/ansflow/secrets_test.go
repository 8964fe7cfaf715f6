package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/natsutil"
	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/services/audit/store"
	"github.com/ansflow/ansflow/services/docker-runner/dockertest"
)

// leakForms is a secret and every encoding of it the proof searches for.
func leakForms(v string) map[string]string {
	quoted, _ := json.Marshal(v) // Go's JSON escapes &, < and >
	return map[string]string{
		"JSON string":    strings.Trim(string(quoted), `"`),
		"plaintext":      v,
		"base64":         base64.StdEncoding.EncodeToString([]byte(v)),
		"base64 raw":     base64.RawStdEncoding.EncodeToString([]byte(v)),
		"base64url":      base64.URLEncoding.EncodeToString([]byte(v)),
		"base64url raw":  base64.RawURLEncoding.EncodeToString([]byte(v)),
		"url query form": url.QueryEscape(v),
		"url path form":  url.PathEscape(v),
	}
}

// TestSecretReachesItsContainerAndNothingElse is the proof of the secret
// model over the real Docker Engine and the embedded nats-server: a secret
// set for a step reaches its container (the step checks it and prints it,
// raw, base64 and split across two writes), and neither it nor any of its
// encodings is anywhere else: not in any message of any stream (every KV
// bucket is one), not in the audit trail (queried and its database file),
// not in any file of the data directory, not in the API's answers (run,
// export, secrets list) and not in the step's logs, where it is masked.
// A secret whose filter refuses the run fails its step with an error
// naming the filter, and a trigger naming an unknown secret is refused.
func TestSecretReachesItsContainerAndNothingElse(t *testing.T) {
	cli := dockertest.Client(t)
	image := dockertest.BusyboxImage(t, cli)
	const value = "s3cr3t/Value+With=Odd?Chars&more"
	forms := leakForms(value)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dataDir := t.TempDir()
	st, err := startStack(ctx, stackConfig{DataDir: dataDir, NATSAddr: "off", DockerRunner: true, Audit: true, Pipeline: true, Concurrency: 2}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer st.stop()
	for _, f := range []string{secretsKeyFile, secretsIdentityFile} {
		fi, err := os.Stat(filepath.Join(dataDir, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v, want a 0600 file", f, fi, err)
		}
	}
	c := newClient(st.URL, st.Token)
	yaml := `pipeline:
  name: publish
  steps:
    - name: use
      type: docker_run
      docker_image: "` + image + `"
      command: |
        test -n "$TOKEN" || exit 3
        echo -n "$TOKEN" | sha256sum
        echo "raw: $TOKEN"
        echo -n "$TOKEN" | base64
        printf 'split: %s' "${TOKEN:0:9}"; printf '%s\n' "${TOKEN:9}"
      secrets:
        - name: NPM_TOKEN
          env: TOKEN
`
	if _, err := c.applyPipeline(ctx, "publish.yaml", []byte(yaml)); err != nil {
		t.Fatal(err)
	}

	// An unknown secret: the trigger is refused, with the name.
	var ae *apiError
	if _, err := c.trigger(ctx, "publish", apiv1.TriggerBody{}); !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || !strings.Contains(err.Error(), "NPM_TOKEN") {
		t.Fatalf("trigger with an unknown secret: %v, want a 400 naming NPM_TOKEN", err)
	}

	body, _ := json.Marshal(apiv1.SetSecretRequest{Value: value})
	var answers [][]byte
	var set []byte
	if err := c.do(ctx, http.MethodPut, "/api/v1/pipelines/publish/secrets/NPM_TOKEN", "application/json", bytes.NewReader(body), &set); err != nil {
		t.Fatal(err)
	}
	answers = append(answers, set)
	run, err := c.trigger(ctx, "publish", apiv1.TriggerBody{})
	if err != nil {
		t.Fatal(err)
	}
	waitRun(t, c, run.ID)
	got := getRaw(t, ctx, c, "/api/v1/runs/"+run.ID)[0]
	answers = append(answers, got)
	var r apiv1.Run
	if err := json.Unmarshal(got, &r); err != nil {
		t.Fatal(err)
	}
	s := r.Steps[0]
	if r.Status != "succeeded" {
		t.Fatalf("run %s: %s\nstdout %s\nstderr %s", r.Status, s.Error, s.Logs.Stdout, s.Logs.Stderr)
	}
	want := fmt.Sprintf("%x", sha256.Sum256([]byte(value)))
	if !strings.Contains(s.Logs.Stdout, want) {
		t.Fatalf("stdout lacks the secret's SHA-256 %s (the container did not get it): %q", want, s.Logs.Stdout)
	}
	for _, line := range []string{"raw: ****", "split: ****"} {
		if !strings.Contains(s.Logs.Stdout, line) {
			t.Errorf("stdout lacks %q (masked): %q", line, s.Logs.Stdout)
		}
	}

	// A filter that refuses the run fails the step, naming the filter.
	filtered, _ := json.Marshal(apiv1.SetSecretRequest{Value: "release-only-value", Filters: secret.Filters{Branches: []string{"release/*"}}})
	if err := c.do(ctx, http.MethodPut, "/api/v1/secrets/NPM_TOKEN", "application/json", bytes.NewReader(filtered), nil); err != nil {
		t.Fatal(err)
	}
	if err := c.do(ctx, http.MethodDelete, "/api/v1/pipelines/publish/secrets/NPM_TOKEN", "", nil, nil); err != nil {
		t.Fatal(err)
	}
	run2, err := c.trigger(ctx, "publish", apiv1.TriggerBody{})
	if err != nil {
		t.Fatal(err)
	}
	waitRun(t, c, run2.ID)
	r2, err := c.getRun(ctx, run2.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r2.Status != "failed" || !strings.Contains(r2.Steps[0].Error, "branches filter") {
		t.Fatalf("run with a refused secret: %s, step error %q; want failed naming the branches filter", r2.Status, r2.Steps[0].Error)
	}
	// Put the proof's secret back, so the searches below look for it
	// after a set, a delete and a run.
	if err := c.do(ctx, http.MethodPut, "/api/v1/pipelines/publish/secrets/NPM_TOKEN", "application/json", bytes.NewReader(body), nil); err != nil {
		t.Fatal(err)
	}

	answers = append(answers, getRaw(t, ctx, c, "/api/v1/pipelines/publish/export", "/api/v1/pipelines/publish/secrets",
		"/api/v1/secrets", "/api/v1/runs", "/api/v1/runs/"+run.ID+"/logs")...)
	for i, a := range answers {
		assertNoLeak(t, fmt.Sprintf("API answer %d", i), a, forms)
	}

	setAudited := false
	found := searchStack(t, ctx, st, c, dataDir, forms, func(data []byte) {
		if bytes.Contains(data, []byte(`"secret.set"`)) && bytes.Contains(data, []byte("secret/pipeline/publish/NPM_TOKEN")) {
			setAudited = true
		}
	})
	if !setAudited || !found.sealed {
		t.Errorf("secret.set of publish/NPM_TOKEN audited: %v; a sealed step request seen: %v", setAudited, found.sealed)
	}
}

// searched counts what searchStack read.
type searched struct {
	records, streams, msgs, files int
	// sealed reports a step request carrying sealed boxes.
	sealed bool
}

// searchStack fails t when any form of a secret is in the audit trail
// (every record, after it caught up; each also handed to audited), in any
// message of any stream (the KV buckets, the object store, the steps,
// events, logs and dead letters, headers included), or in any file of the
// data directory (JetStream's store, the audit database, the keys).
func searchStack(t *testing.T, ctx context.Context, st *stack, c *client, dataDir string, forms map[string]string, audited func([]byte)) searched {
	t.Helper()
	var n searched
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	if err := st.audit.WaitCaughtUp(wctx); err != nil {
		t.Fatal(err)
	}
	wcancel()
	for cursor := ""; ; {
		q := url.Values{"limit": {"1000"}, "cursor": {cursor}}
		var page store.Page
		if err := c.do(ctx, http.MethodGet, "/api/v1/audit?"+q.Encode(), "", nil, &page); err != nil {
			t.Fatal(err)
		}
		for _, rec := range page.Records {
			n.records++
			assertNoLeak(t, fmt.Sprintf("audit record %d", rec.Seq), rec.Data, forms)
			audited(rec.Data)
		}
		if cursor = page.NextCursor; cursor == "" {
			break
		}
	}

	nc, err := natsutil.ConnectInProcess(st.ns, "secrets-proof")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := natsutil.JetStream(nc)
	if err != nil {
		t.Fatal(err)
	}
	for name := range js.StreamNames(ctx).Name() {
		n.streams++
		stream, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		info, err := stream.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
			m, err := stream.GetMsg(ctx, seq)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue
			}
			if err != nil {
				t.Fatalf("%s seq %d: %v", name, seq, err)
			}
			n.msgs++
			where := fmt.Sprintf("stream %s message %d (%s)", name, seq, m.Subject)
			assertNoLeak(t, where, m.Data, forms)
			for k, vs := range m.Header {
				assertNoLeak(t, where+" header "+k, []byte(strings.Join(vs, "\n")), forms)
			}
			if strings.HasPrefix(m.Subject, "ansflow.step.") && bytes.Contains(m.Data, []byte(`"boxes"`)) {
				n.sealed = true
			}
		}
	}

	err = filepath.WalkDir(dataDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil // removed meanwhile
		}
		n.files++
		assertNoLeak(t, "file "+p, b, forms)
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dataDir, err)
	}
	if n.records == 0 || n.streams < 5 || n.msgs == 0 || n.files == 0 {
		t.Errorf("searched too little: %d audit records, %d messages of %d streams, %d files", n.records, n.msgs, n.streams, n.files)
	}
	t.Logf("searched %d audit records, %d messages of %d streams, %d files", n.records, n.msgs, n.streams, n.files)
	return n
}

// getRaw GETs each path with c and returns the answers' bodies.
func getRaw(t *testing.T, ctx context.Context, c *client, paths ...string) [][]byte {
	t.Helper()
	out := make([][]byte, 0, len(paths))
	for _, path := range paths {
		var b []byte
		if err := c.do(ctx, http.MethodGet, path, "", nil, &b); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		out = append(out, b)
	}
	return out
}

func assertNoLeak(t *testing.T, where string, b []byte, forms map[string]string) {
	t.Helper()
	for name, f := range forms {
		if bytes.Contains(b, []byte(f)) {
			t.Errorf("%s holds the secret's %s", where, name)
		}
	}
}

// `ansflow run FILE --secret NAME=VAR` gives an embedded run's steps a
// secret from the environment; the run's output shows it masked only.
func TestRunWithSecretFromEnvironment(t *testing.T) {
	cli := dockertest.Client(t)
	image := dockertest.BusyboxImage(t, cli)
	const value = "run-flag-secret-value"
	t.Setenv("E2E_RUN_SECRET", value)
	file := filepath.Join(t.TempDir(), "secret-run.yaml")
	yaml := `pipeline:
  name: secret-run
  steps:
    - name: use
      type: docker_run
      docker_image: "` + image + `"
      command: 'printf %s "$TOKEN" | sha256sum; echo "raw: $TOKEN"'
      secrets: [{name: DEPLOY, env: TOKEN}]
`
	if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out := capture(t, "run", file, "--secret", "DEPLOY=E2E_RUN_SECRET", "--output", "json", "--data-dir", t.TempDir())
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, out)
	}
	if !strings.Contains(out, fmt.Sprintf("%x", sha256.Sum256([]byte(value)))) || !strings.Contains(out, "raw: ****") {
		t.Errorf("the step did not get the secret, or it was not masked: %s", out)
	}
	assertNoLeak(t, "ansflow run's output", []byte(out), leakForms(value))
	if code, _ = capture(t, "run", file, "--secret", "DEPLOY=E2E_UNSET_VARIABLE"); code != exitInvalid {
		t.Errorf("--secret from an unset variable: exit %d, want %d", code, exitInvalid)
	}
}
