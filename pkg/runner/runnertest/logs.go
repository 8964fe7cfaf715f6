package runnertest

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/event"
)

// StepLogs returns a step's stdout and stderr as its runner published them
// on the bus, reading the ANSFLOW_LOGS stream up to its current end.
func StepLogs(t testing.TB, js jetstream.JetStream, runID, stepID string) (stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, event.StreamLogs, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{event.LogSubject(runID, stepID)}})
	if err != nil {
		t.Fatal(err)
	}
	var out, errs strings.Builder
	for {
		batch, err := cons.FetchNoWait(500)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			var l event.StepLog
			if err := json.Unmarshal(msg.Data(), &l); err != nil {
				t.Fatal(err)
			}
			if l.Stream == event.Stderr {
				errs.WriteString(l.Text)
			} else {
				out.WriteString(l.Text)
			}
		}
		if n == 0 {
			return out.String(), errs.String()
		}
	}
}
