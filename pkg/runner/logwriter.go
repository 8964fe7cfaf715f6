package runner

import (
	"bytes"
	"sync"
	"time"
	"unicode/utf8"
)

const (
	flushBytes = 16 << 10
	tailBytes  = 4 << 10
)

// logWriter buffers one output stream of an attempt and hands complete lines
// to emit, masked; a partial line is emitted by Flush. It keeps the last
// tailBytes for the completion event. What it emits is bounded by budget
// (shared by the attempt's streams; nil: a budget of [DefaultMaxLogBytes]
// of its own): past it, output is dropped behind a marker line, and the
// final Flush says how many bytes were dropped. The tail keeps the real
// end of the output.
type logWriter struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	tail    []byte
	masker  *Masker
	emit    func(text string)
	budget  *logBudget
	dropped int64
	ended   bool
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if w.buf.Len() >= flushBytes {
		w.flushLocked(false)
	}
	return len(p), nil
}

// Flush emits buffered complete lines; with all set, also a trailing partial
// line.
func (w *logWriter) Flush(all bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.flushLocked(all)
}

func (w *logWriter) flushLocked(all bool) {
	data := w.buf.Bytes()
	n := len(data)
	if !all && n < flushBytes*4 {
		n = bytes.LastIndexByte(data, '\n') + 1
	}
	if n == 0 {
		if all {
			w.emitLocked("", true)
		}
		return
	}
	// never split a UTF-8 sequence
	for n < len(data) && n > 0 && !utf8.RuneStart(data[n]) {
		n--
	}
	text := w.masker.Mask(string(data[:n]))
	w.buf.Next(n)
	w.tail = append(w.tail, text...)
	if len(w.tail) > tailBytes {
		cut := len(w.tail) - tailBytes
		for cut < len(w.tail) && !utf8.RuneStart(w.tail[cut]) {
			cut++
		}
		w.tail = append([]byte(nil), w.tail[cut:]...)
	}
	w.emitLocked(text, all)
}

// emitLocked emits as much of text as the budget grants, and the cut
// markers.
func (w *logWriter) emitLocked(text string, final bool) {
	if w.budget == nil {
		w.budget = newLogBudget(0)
	}
	n := 0 // once cut, a stream stays cut
	if w.dropped == 0 {
		n = w.budget.take(text)
	}
	if n > 0 {
		w.emit(text[:n])
	}
	if n < len(text) {
		if w.dropped == 0 {
			w.emit(w.budget.cutMarker(0, false))
		}
		w.dropped += int64(len(text) - n)
	}
	if final && w.dropped > 0 && !w.ended {
		w.ended = true
		marker := w.budget.cutMarker(w.dropped, true)
		w.tail = append(w.tail, marker...)
		w.emit(marker)
	}
}

// Tail returns the last bytes written (masked).
func (w *logWriter) Tail() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return string(w.tail)
}

// flushEvery flushes w's lines every d until stop is closed.
func flushEvery(d time.Duration, stop <-chan struct{}, ws ...*logWriter) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			for _, w := range ws {
				w.Flush(false)
			}
		}
	}
}
