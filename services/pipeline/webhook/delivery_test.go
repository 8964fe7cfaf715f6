package webhook_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/services/pipeline/service"
	"github.com/ansflow/ansflow/services/pipeline/store"
	"github.com/ansflow/ansflow/services/pipeline/webhook"
)

// fillRuns makes the runs bucket refuse new runs (full) or accept them
// again: a real store failure, not a stand-in.
func fillRuns(t *testing.T, js jetstream.JetStream, full bool) {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, "KV_"+store.BucketRuns)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.MaxBytes = -1
	if full {
		cfg.MaxBytes = 1
	}
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatalf("set runs bucket max bytes: %v", err)
	}
}

func TestDeliveryWhoseRunCannotBeCreatedIsRetried(t *testing.T) {
	f := setup(t)
	js := f.svc.Hooks.JS()
	body := pushBody("main", "first try", "src/a.go")
	want := webhook.RunID("github", "web", bodyKey(body))

	fillRuns(t, js, true)
	code, resp := f.post(t, "github", body, github(body, "retry-1"))
	if code != http.StatusServiceUnavailable || resp.Status != "failed" || resp.RunID != "" {
		t.Fatalf("delivery while the store refuses runs: %d %+v, want 503 failed", code, resp)
	}
	if _, err := f.svc.Store.GetRun(context.Background(), want); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("failed delivery left run %s behind: %v", want, err)
	}

	fillRuns(t, js, false)
	code, resp = f.post(t, "github", body, github(body, "retry-1"))
	if code != http.StatusAccepted || resp.Status != "accepted" || resp.RunID != want {
		t.Fatalf("the forge's retry: %d %+v, want accepted naming run %s", code, resp, want)
	}
	r, err := f.svc.Store.GetRun(context.Background(), want)
	if err != nil {
		t.Fatalf("retry's run: %v", err)
	}
	if r.Trigger.Delivery != "retry-1" || r.Vars["git_message"].Value != "first try" {
		t.Errorf("run trigger %+v, message %q", r.Trigger, r.Vars["git_message"].Value)
	}
	code, resp = f.post(t, "github", body, github(body, "retry-1"))
	if code != http.StatusOK || resp.Status != "duplicate" || resp.RunID != want {
		t.Errorf("second retry: %d %+v, want duplicate naming run %s", code, resp, want)
	}
	if n := len(f.runs(t)); n != 1 {
		t.Errorf("%d runs, want 1", n)
	}
}

func TestConcurrentCopiesOfADeliveryCreateOneRun(t *testing.T) {
	f := setup(t)
	// a second pipeline service instance on the same JetStream: copies are
	// spread over both, so they race in the store as well as in one process
	other, err := service.New(context.Background(), service.Config{HTTPAddr: "127.0.0.1:0"}, f.svc.Hooks.JS(), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	other.Hooks.Secret = f.svc.Hooks.Secret
	otherSrv := httptest.NewServer(other.API)
	t.Cleanup(otherSrv.Close)

	body := pushBody("main", "burst", "src/a.go")
	const copies = 20
	type answer struct {
		code int
		resp apiv1.WebhookResponse
	}
	answers := make([]answer, copies)
	var wg sync.WaitGroup
	for i := range copies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := *f
			if i%2 == 1 {
				g.srv = otherSrv
			}
			answers[i].code, answers[i].resp = g.post(t, "github", body, github(body, "burst-1"))
		}()
	}
	wg.Wait()

	want := webhook.RunID("github", "web", bodyKey(body))
	accepted := 0
	for i, a := range answers {
		switch {
		case a.code == http.StatusAccepted && a.resp.Status == "accepted":
			accepted++
		case a.code == http.StatusOK && a.resp.Status == "duplicate":
		default:
			t.Errorf("copy %d: %d %+v", i, a.code, a.resp)
		}
		if a.resp.RunID != want || a.resp.RunURL != "/api/v1/runs/"+want {
			t.Errorf("copy %d names run %q (%q), want %s", i, a.resp.RunID, a.resp.RunURL, want)
		}
	}
	if accepted != 1 {
		t.Errorf("%d copies accepted, want 1", accepted)
	}
	runs := f.runs(t)
	if len(runs) != 1 || runs[0].ID != want {
		ids := make([]string, len(runs))
		for i, r := range runs {
			ids[i] = r.ID
		}
		t.Errorf("runs %v, want exactly [%s]", ids, want)
	}
}

func TestRunIDIsDeterministicPerDelivery(t *testing.T) {
	cases := []struct {
		a, b [3]string
		same bool
	}{
		{[3]string{"github", "web", "d-1"}, [3]string{"github", "web", "d-1"}, true},
		{[3]string{"github", "web", "d-1"}, [3]string{"github", "Web", "d-1"}, true}, // one pipeline by slug
		{[3]string{"github", "web", "d-1"}, [3]string{"gitea", "web", "d-1"}, false},
		{[3]string{"github", "web", "d-1"}, [3]string{"github", "api", "d-1"}, false},
		{[3]string{"github", "web", "d-1"}, [3]string{"github", "web", "d-2"}, false},
	}
	for _, c := range cases {
		a, b := webhook.RunID(c.a[0], c.a[1], c.a[2]), webhook.RunID(c.b[0], c.b[1], c.b[2])
		if (a == b) != c.same {
			t.Errorf("RunID%v = %s, RunID%v = %s; same = %v, want %v", c.a, a, c.b, b, a == b, c.same)
		}
	}
	if id := webhook.RunID("github", "web", "d-1"); len(id) != 36 {
		t.Errorf("RunID = %q, want a UUID", id)
	}
}
