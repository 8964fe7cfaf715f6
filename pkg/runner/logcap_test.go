package runner

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

// collect is an emit that keeps every chunk.
type collect struct {
	mu     sync.Mutex
	chunks []string
}

func (c *collect) emit(text string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.chunks = append(c.chunks, text)
}

func (c *collect) all() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.chunks, "")
}

func TestLogIsCutWithAVisibleMarker(t *testing.T) {
	out, errs := &collect{}, &collect{}
	b := newLogBudget(4 << 10)
	stdout := &logWriter{masker: &Masker{}, emit: out.emit, budget: b}
	stderr := &logWriter{masker: &Masker{}, emit: errs.emit, budget: b}
	line := strings.Repeat("x", 99) + "\n" // 100 bytes
	for i := 0; i < 30; i++ {
		fmt.Fprint(stdout, line) // 3000 bytes
	}
	stdout.Flush(false)
	for i := 0; i < 30; i++ {
		fmt.Fprint(stderr, line) // 3000 more: over the shared 4 KiB
	}
	fmt.Fprint(stderr, "the end\n")
	stdout.Flush(true)
	stderr.Flush(true)

	if got := out.all(); got != strings.Repeat(line, 30) {
		t.Errorf("stdout under the budget was changed: %d bytes", len(got))
	}
	got := errs.all()
	kept, rest, ok := strings.Cut(got, "\n[ansflow: log cut at 4 KiB; the rest of this stream is dropped]\n")
	if !ok {
		t.Fatalf("stderr has no cut marker:\n%s", got)
	}
	if len(kept) != 4<<10-3000 {
		t.Errorf("stderr kept %d bytes, want the budget's remaining %d", len(kept), 4<<10-3000)
	}
	dropped := 3000 + len("the end\n") - len(kept)
	if want := fmt.Sprintf("[ansflow: log cut at 4 KiB; %d bytes dropped]\n", dropped); rest != want {
		t.Errorf("after the cut: %q, want %q", rest, want)
	}
	if tail := stderr.Tail(); !strings.Contains(tail, "the end\n") || !strings.HasSuffix(tail, "bytes dropped]\n") {
		t.Errorf("tail lost the real end or the marker: %q", tail)
	}
	// nothing more once cut, and the final marker only once
	fmt.Fprint(stderr, "later\n")
	stderr.Flush(true)
	if again := errs.all(); again != got {
		t.Errorf("output after the final flush: %q", strings.TrimPrefix(again, got))
	}
}

func TestLogCapDefaultsAndUTF8(t *testing.T) {
	if b := newLogBudget(0); b.max != DefaultMaxLogBytes {
		t.Errorf("default budget %d, want %d", b.max, DefaultMaxLogBytes)
	}
	b := newLogBudget(4)
	if n := b.take("ab€"); n != 2 { // 5 bytes; € is bytes 2-4
		t.Errorf("take granted %d bytes, want 2: a cut never splits a rune", n)
	}
	if n := b.take("zz"); n != 2 {
		t.Errorf("take of the 2 bytes left = %d", n)
	}
	if n := b.take("z"); n != 0 {
		t.Errorf("take from a spent budget = %d", n)
	}
	if s := sizeString(10 << 20); s != "10 MiB" {
		t.Errorf("sizeString = %q", s)
	}
}
