package api_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/services/pipeline/orchestrator"
	"github.com/ansflow/ansflow/services/pipeline/pipelinetest"
)

// The finishing pipeline's runs end at once; the waiting pipeline's wait ten
// minutes for the retry of their failed first attempt, so they stay running
// without holding a runner slot.
const (
	finishingPipe = "pipeline:\n  name: finishing\n  steps:\n    - name: say\n      type: docker_run\n      command: \"echo one; warn two; echo three\"\n"
	waitingPipe   = "pipeline:\n  name: waiting\n  steps:\n    - name: try\n      type: docker_run\n      command: \"echo trying; exit 1\"\n      retry_policy: {max_retries: 1, retry_delay_seconds: 600}\n"
)

// follow is how a test client reads a run's logs.
type follow int

const (
	toTheEnd     follow = iota // read until the server ends the stream
	hangUpEarly                // close the connection after the first event
	cancelTheRun               // after the first event, cancel the run, then read to the end
)

func TestLogsReleaseTheirGoroutinesAndConsumers(t *testing.T) {
	env := pipelinetest.Start(t)
	ctx := context.Background()
	for file, y := range map[string]string{"finishing.yaml": finishingPipe, "waiting.yaml": waitingPipe} {
		p, err := spec.Parse(file, []byte(y))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := env.Svc.Store.PutPipeline(ctx, p, y, "test"); err != nil {
			t.Fatal(err)
		}
	}
	const followed, warmUp = 100, 2
	type target struct {
		id  string
		how follow
	}
	var targets []target
	for i := range warmUp + followed {
		pipeline := "finishing"
		if i%2 == 1 {
			pipeline = "waiting"
		}
		r, err := env.Svc.Orc.Trigger(ctx, orchestrator.TriggerRequest{Pipeline: pipeline})
		if err != nil {
			t.Fatal(err)
		}
		how := toTheEnd
		switch {
		case pipeline == "finishing" && i%4 == 2:
			how = hangUpEarly
		case pipeline == "waiting" && i%10 == 1:
			how = cancelTheRun
		case pipeline == "waiting":
			how = hangUpEarly
		}
		targets = append(targets, target{r.ID, how})
	}
	// every finishing run over, every waiting run's first attempt failed
	if err := waitFor(60*time.Second, func() error {
		for _, tg := range targets {
			r, err := env.Svc.Store.GetRun(ctx, tg.id)
			if err != nil {
				return err
			}
			s := r.Steps[0]
			switch {
			case r.Pipeline == "finishing" && !r.Terminal():
				return fmt.Errorf("run %s of finishing is %s", r.ID, r.Status)
			case r.Pipeline == "waiting" && (r.Terminal() || s.ExitCode == nil):
				return fmt.Errorf("run %s of waiting is %s, step %s after %d attempts", r.ID, r.Status, s.Status, s.Attempts)
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("runs did not settle: %v", err)
	}

	// Warm up: the first cancel starts what stays (the API's async publish
	// machinery), so one of each kind of follow runs before the baseline.
	client := &http.Client{Transport: &auth.BearerTransport{Token: env.AdminToken, Base: &http.Transport{DisableKeepAlives: true}}}
	for _, tg := range targets[:warmUp] { // a finishing run to the end, a waiting run cancelled
		if err := followLogs(client, env.Srv.URL, tg.id, tg.how); err != nil {
			t.Fatalf("warm-up on run %s: %v", tg.id, err)
		}
	}
	targets = targets[warmUp:]
	modes := map[follow]int{}
	for _, tg := range targets {
		modes[tg.how]++
	}
	t.Logf("following %d runs: %d to the end, %d hanging up early, %d cancelled while followed",
		len(targets), modes[toTheEnd], modes[hangUpEarly], modes[cancelTheRun])

	js := env.NATS.JS
	baseConsumers := consumers(t, js)
	baseGoroutines := steadyGoroutines()
	baseStacks := goroutines()
	t.Logf("baseline: %d goroutines, consumers %v", baseGoroutines, baseConsumers)

	var wg sync.WaitGroup
	sem := make(chan struct{}, 20)
	errs := make(chan error, len(targets))
	for _, tg := range targets {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := followLogs(client, env.Srv.URL, tg.id, tg.how); err != nil {
				errs <- fmt.Errorf("run %s: %w", tg.id, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	client.CloseIdleConnections()

	// after the leak, each request left two ordered consumers and their
	// readers (two feeders, and the iterators' goroutines) behind
	if err := waitFor(20*time.Second, func() error {
		if now := consumers(t, js); fmt.Sprint(now) != fmt.Sprint(baseConsumers) {
			return fmt.Errorf("consumers %v, baseline %v", now, baseConsumers)
		}
		return nil
	}); err != nil {
		t.Errorf("consumers not back to the baseline: %v", err)
	}
	if err := waitFor(20*time.Second, func() error {
		if n := runtime.NumGoroutine(); n > baseGoroutines {
			return fmt.Errorf("%d goroutines, baseline %d; more than then:\n%s", n, baseGoroutines, moreGoroutines(baseStacks))
		}
		return nil
	}); err != nil {
		t.Errorf("goroutines not back to the baseline: %v", err)
	}
}

// followLogs reads one run's logs over HTTP the way how says.
func followLogs(client *http.Client, base, id string, how follow) error {
	resp, err := client.Get(base + "/api/v1/runs/" + id + "/logs")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("logs: %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	first := true
	sawEnd := false
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "event: ") {
			continue
		}
		sawEnd = sawEnd || line == "event: end"
		if !first {
			continue
		}
		first = false
		switch how {
		case hangUpEarly:
			return nil // the deferred Close hangs up mid-stream
		case cancelTheRun:
			cresp, err := client.Post(base+"/api/v1/runs/"+id+"/cancel", "application/json", nil)
			if err != nil {
				return err
			}
			cresp.Body.Close()
			if cresp.StatusCode != http.StatusOK {
				return fmt.Errorf("cancel: %s", cresp.Status)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if !sawEnd {
		return fmt.Errorf("stream ended without its end event")
	}
	return nil
}

// consumers counts the consumers of the streams the logs endpoint reads.
func consumers(t *testing.T, js jetstream.JetStream) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, name := range []string{event.StreamLogs, event.StreamEvents} {
		s, err := js.Stream(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		names := s.ConsumerNames(context.Background())
		for range names.Name() {
			out[name]++
		}
		if err := names.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// steadyGoroutines waits until the number of goroutines stops changing for
// a few samples and returns it.
func steadyGoroutines() int {
	n, same := runtime.NumGoroutine(), 0
	for deadline := time.Now().Add(5 * time.Second); same < 5 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		if m := runtime.NumGoroutine(); m == n {
			same++
		} else {
			n, same = m, 0
		}
	}
	return n
}

// goroutines counts the goroutines by stack (function names only).
func goroutines() map[string]int {
	var b strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
	out := map[string]int{}
	for _, block := range strings.Split(b.String(), "\n\n") {
		lines := strings.Split(strings.TrimSpace(block), "\n")
		var n int
		if _, err := fmt.Sscanf(lines[0], "%d @", &n); err != nil {
			continue
		}
		var fns []string
		for _, l := range lines[1:] {
			if f := strings.Fields(l); len(f) >= 3 && f[0] == "#" && f[1] != "labels:" {
				fns = append(fns, f[2])
			}
		}
		out[strings.Join(fns, " < ")] += n
	}
	return out
}

// moreGoroutines describes the stacks with more goroutines now than in base.
func moreGoroutines(base map[string]int) string {
	var b strings.Builder
	for stack, n := range goroutines() {
		if n > base[stack] {
			fmt.Fprintf(&b, "  +%d %s\n", n-base[stack], stack)
		}
	}
	return b.String()
}

// waitFor polls cond until it returns nil or d has passed, and then
// returns cond's last error.
func waitFor(d time.Duration, cond func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}
