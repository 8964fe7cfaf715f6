package runner

import (
	"fmt"
	"sync"
	"unicode/utf8"
)

// DefaultMaxLogBytes bounds the log one step attempt publishes when the
// runner sets no cap: past it the log is cut with a visible marker line,
// so a step printing without end cannot fill the logs stream.
const DefaultMaxLogBytes = 10 << 20

// logBudget is the log volume one attempt may still publish. Its streams
// share one budget; it is safe for concurrent use.
type logBudget struct {
	mu   sync.Mutex
	max  int64
	used int64
}

// newLogBudget returns a budget of max bytes ([DefaultMaxLogBytes] when
// max is 0 or less).
func newLogBudget(max int64) *logBudget {
	if max <= 0 {
		max = DefaultMaxLogBytes
	}
	return &logBudget{max: max}
}

// take grants up to n bytes and returns how many, cut back to a UTF-8
// boundary of text.
func (b *logBudget) take(text string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := int64(len(text))
	if left := b.max - b.used; n > left {
		n = max(left, 0)
		for n > 0 && int(n) < len(text) && !utf8.RuneStart(text[n]) {
			n--
		}
	}
	b.used += n
	return int(n)
}

// cutMarker is the line a stream gets where its log is cut, and again at
// its end with the count of bytes dropped.
func (b *logBudget) cutMarker(dropped int64, final bool) string {
	if !final {
		return fmt.Sprintf("\n[ansflow: log cut at %s; the rest of this stream is dropped]\n", sizeString(b.max))
	}
	return fmt.Sprintf("[ansflow: log cut at %s; %d bytes dropped]\n", sizeString(b.max), dropped)
}

// sizeString writes n in the largest binary unit that divides it.
func sizeString(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}
