package webhook_test

import (
	"bytes"
	"fmt"
	"net/http"
	"sort"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// BenchmarkWebhookToStepRequested measures a signed GitHub push received to
// the run's first step.requested published on the bus.
func BenchmarkWebhookToStepRequested(b *testing.B) {
	f := setup(b)
	nc, err := nats.Connect(f.svc.Hooks.JS().Conn().ConnectedUrl())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	got := make(chan time.Time, 16)
	sub, err := nc.Subscribe("ansflow.step.requested.>", func(*nats.Msg) { got <- time.Now() })
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	nc.Flush()
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		body := pushBody("main", fmt.Sprintf("bench %d", i), "src/x.go")
		req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/webhooks/github/web", bytes.NewReader(body))
		for k, v := range github(body, fmt.Sprintf("bench-%d", i)) {
			req.Header.Set(k, v)
		}
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			b.Fatalf("status %d", resp.StatusCode)
		}
		select {
		case t := <-got:
			lat = append(lat, t.Sub(start))
		case <-time.After(10 * time.Second):
			b.Fatal("no step.requested")
		}
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2])/1e6, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100])/1e6, "p99-ms")
	b.ReportMetric(0, "ns/op")
}
