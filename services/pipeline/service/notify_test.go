package service_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/runner/runnertest"
	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/services/pipeline/notify"
	"github.com/ansflow/ansflow/services/pipeline/notify/notifytest"
	"github.com/ansflow/ansflow/services/pipeline/orchestrator"
	"github.com/ansflow/ansflow/services/pipeline/service"
)

// TestTheServiceNotifies runs the assembled service (its Run serves the
// notifier) with a scripted runner, and checks a failed run reaches a
// signed webhook with the link under the configured external URL.
func TestTheServiceNotifies(t *testing.T) {
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

	ns := natstest.Run(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	nc, js := ns.Connect(t)
	rcfg := runner.Config{Kind: event.KindDocker, Targets: []string{"default"}}
	if err := rcfg.Validate(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = runner.New(rcfg, nc, js, &runnertest.Engine{}, nil, zap.NewNop()).Run(ctx) }()
	key, err := secret.ParseKey([]byte(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32))))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	svc, err := service.New(ctx, service.Config{Listener: ln, SecretsKey: key,
		Notify: notify.Config{ExternalURL: "https://ci.example.com/ansflow", AllowedHosts: "loopback"}}, ns.JS, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = svc.Run(ctx) }()
	if _, err := svc.Secrets.Set(ctx, secret.Scope{}, "HOOK", []byte(hookSecret), secret.Filters{}, "test"); err != nil {
		t.Fatal(err)
	}
	yaml := fmt.Sprintf("pipeline:\n  name: svc\n  steps:\n    - name: a\n      type: docker_run\n      command: exit 4\n"+
		"  notify:\n    - when: [failure]\n      targets:\n        - type: webhook\n          url: %s\n          secret: HOOK\n", rc.URL)
	p, err := spec.Parse("svc.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Store.PutPipeline(ctx, p, yaml, "test"); err != nil {
		t.Fatal(err)
	}
	// The runner's consumer must exist before the first dispatch.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := js.Consumer(ctx, event.StreamSteps, runner.DurableName(event.KindDocker, "default")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the runner did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	r, err := svc.Orc.Trigger(ctx, orchestrator.TriggerRequest{Pipeline: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(15 * time.Second)
	for {
		if len(rc.Bodies()) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no notification")
		}
		time.Sleep(10 * time.Millisecond)
	}
	got := received()
	if d := got[0].Data; d.RunID != r.ID || d.Status != event.StatusFailed || d.URL != "https://ci.example.com/ansflow/runs/"+r.ID ||
		len(d.FailedSteps) != 1 || d.FailedSteps[0].ExitCode == nil || *d.FailedSteps[0].ExitCode != 4 {
		t.Errorf("payload %+v", got[0])
	}
}
