package orchestrator

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// foldWindow is how long a step.started waits for its attempt's
// step.completed before it is written on its own. A step that ends within
// it (a no-op, a failed image pull, a rejected request) costs the run one
// write instead of two, and its completion does not queue behind the
// started write. A longer step shows as running foldWindow later.
const foldWindow = 2 * time.Millisecond

// folder pairs each attempt's step.started with its step.completed when both
// arrive within foldWindow: the completion carries the start time and the
// runner, so the started update is then dropped. A started handled after its
// completion finds the step no longer pending and changes nothing.
type folder struct {
	mu      sync.Mutex
	waiting map[string]chan struct{} // attempt -> closed when its completion arrives
}

func attemptID(runID, stepID string, attempt int) string {
	return fmt.Sprintf("%s/%s/%d", runID, stepID, attempt)
}

// started waits up to foldWindow for the attempt's completion and reports
// whether it arrived, in which case the started update is not needed.
func (f *folder) started(ctx context.Context, id string) bool {
	ch := make(chan struct{})
	f.mu.Lock()
	f.waiting[id] = ch
	f.mu.Unlock()
	t := time.NewTimer(foldWindow)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-ch: // arrived while the timer fired
		return true
	default:
	}
	if f.waiting[id] == ch { // a redelivered started may have replaced it
		delete(f.waiting, id)
	}
	return false
}

// completing notes the arrival of the attempt's completion, releasing its
// waiting step.started.
func (f *folder) completing(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ch, ok := f.waiting[id]; ok {
		close(ch)
		delete(f.waiting, id)
	}
}
