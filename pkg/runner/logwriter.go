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
// tailBytes for the completion event.
type logWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	tail   []byte
	masker *Masker
	emit   func(text string)
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
	w.emit(text)
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
