package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/services/pipeline/notify"
	"github.com/ansflow/ansflow/services/pipeline/notify/notifytest"
	"github.com/ansflow/ansflow/services/pipeline/orchestrator"
)

// TestStackNotifiesWithTheServerDefault starts the embedded stack with the
// notification flags (a default rules file and an external URL), runs a
// pipeline without notify: rules that fails on the scripted engine, and
// checks the default rule's signed webhook arrives with the run's link.
func TestStackNotifiesWithTheServerDefault(t *testing.T) {
	useScriptedEngines(t)
	const hookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	rc := notifytest.StartReceiver(t, func(h http.Header, body []byte) error {
		return notify.Verify(hookSecret, h, body, time.Now(), time.Minute)
	})
	received := func() []notify.Payload {
		var out []notify.Payload
		for _, b := range rc.Bodies() {
			var p notify.Payload
			if err := json.Unmarshal(b, &p); err != nil {
				t.Errorf("payload %s: %v", b, err)
			}
			out = append(out, p)
		}
		return out
	}
	defaults := filepath.Join(t.TempDir(), "notify.yaml")
	if err := os.WriteFile(defaults, fmt.Appendf(nil, "- when: [failure]\n  targets:\n    - type: webhook\n      url: %s/ci\n      secret: CI_HOOK\n", rc.URL), 0o600); err != nil {
		t.Fatal(err)
	}
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	nf := notify.RegisterFlags(fs)
	if err := fs.Parse([]string{"--notify-default-file", defaults, "--notify-allowed-hosts", "loopback"}); err != nil {
		t.Fatal(err)
	}
	ncfg, err := nf.Config()
	if err != nil {
		t.Fatal(err)
	}
	st, err := startStack(context.Background(), stackConfig{DataDir: t.TempDir(), NATSAddr: "off", Pipeline: true, DockerRunner: true, Notify: ncfg,
		ExternalURL: "https://ci.example.com"}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.stop)
	ctx := context.Background()
	if _, err := st.svc.Secrets.Set(ctx, secret.Scope{}, "CI_HOOK", []byte(hookSecret), secret.Filters{}, "test"); err != nil {
		t.Fatal(err)
	}
	yaml := "pipeline:\n  name: plain\n  steps:\n    - name: unit\n      type: docker_run\n      command: warn FAIL TestX; exit 1\n"
	p, err := spec.Parse("plain.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.svc.Store.PutPipeline(ctx, p, yaml, "test"); err != nil {
		t.Fatal(err)
	}
	r, err := st.svc.Orc.Trigger(ctx, orchestrator.TriggerRequest{Pipeline: "plain", Git: orchestrator.GitInfo{Branch: "main", Commit: "feedface"}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the default rule's notification", func() (bool, string) {
		n := len(rc.Bodies())
		return n > 0, fmt.Sprintf("%d received", n)
	})
	d := received()[0].Data
	if d.RunID != r.ID || d.Status != "failed" || d.URL != "https://ci.example.com/runs/"+r.ID || d.Branch != "main" || d.Commit != "feedface" ||
		len(d.FailedSteps) != 1 || !strings.Contains(d.FailedSteps[0].Stderr, "FAIL TestX") {
		t.Errorf("payload %+v", d)
	}
}

// TestNotifyFlagErrors: a bad default rules file is refused at start with
// its file, line and field.
func TestNotifyFlagErrors(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "notify.yaml")
	if err := os.WriteFile(bad, []byte("- when: [failed]\n  targets: [{type: email, to: [a@b.c]}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--notify-default-file", bad}, bad + `:1: notify[0].when: "failed": want failure, success, recovery, change, always`},
		{[]string{"--smtp-addr", "smtp.example.com:587"}, "--smtp-addr and --smtp-from go together"},
		{[]string{"--smtp-addr", "smtp.example.com:587", "--smtp-from", "not an address"}, "--smtp-from"},
		{[]string{"--smtp-username", "u"}, "--smtp-username and --smtp-password-secret go together"},
		{[]string{"--notify-allowed-hosts", "external,10.0.0.0/33"}, `--notify-allowed-hosts: "10.0.0.0/33": not a CIDR prefix`},
		{[]string{"--notify-allowed-hosts", "hooks.*.example.com"}, `--notify-allowed-hosts: "hooks.*.example.com": want external, private, loopback`},
	} {
		fs := flag.NewFlagSet("up", flag.ContinueOnError)
		nf := notify.RegisterFlags(fs)
		if err := fs.Parse(c.args); err != nil {
			t.Fatal(err)
		}
		if _, err := nf.Config(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: got %v, want %q", c.args, err, c.want)
		}
	}
}
