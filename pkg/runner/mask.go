package runner

import (
	"encoding/base64"
	"io"
	"net/url"
	"sort"
	"strings"
	"sync"
)

// MinMaskBytes is the shortest secret a [Masker] masks: shorter values
// would garble ordinary output (the secret store refuses them, so every
// stored secret is masked).
const MinMaskBytes = 3

// minShiftedForm is the shortest base64 fragment of a secret seen inside a
// longer encoded text (see [encodedForms]) that is masked.
const minShiftedForm = 8

// mask replaces a secret.
const mask = "****"

// Masker replaces registered secret values, and their base64 (standard and
// URL alphabets, padded or not, also as part of a longer encoded text) and
// URL-encoded forms, in text. It is safe for concurrent use.
type Masker struct {
	mu    sync.RWMutex
	seen  map[string]bool
	forms []string // longest first
}

// Add registers a secret; values shorter than [MinMaskBytes] are ignored.
func (m *Masker) Add(secret string) {
	if len(secret) < MinMaskBytes {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.seen == nil {
		m.seen = map[string]bool{}
	}
	for _, f := range encodedForms(secret) {
		if !m.seen[f] {
			m.seen[f] = true
			m.forms = append(m.forms, f)
		}
	}
	sort.Slice(m.forms, func(i, j int) bool { return len(m.forms[i]) > len(m.forms[j]) })
}

// encodedForms is the secret and every encoding of it a step may print:
// its base64 at each of the three alignments it can have inside a longer
// encoded text (without the characters that depend on its neighbours), in
// both alphabets, and its URL (query and path) encodings.
func encodedForms(secret string) []string {
	forms := []string{secret, url.QueryEscape(secret), url.PathEscape(secret)}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
		full := enc.EncodeToString([]byte(secret))
		forms = append(forms, full, strings.TrimRight(full, "="))
		for shift := 0; shift < 3; shift++ {
			s := enc.EncodeToString(append(make([]byte, shift), secret...))
			s = strings.TrimRight(s, "=")
			drop := [3]int{0, 2, 3}[shift]
			end := len(s)
			if (shift+len(secret))%3 != 0 {
				end-- // the last character mixes in the next byte
			}
			if end-drop >= minShiftedForm {
				forms = append(forms, s[drop:end])
			}
		}
	}
	return forms
}

// Mask returns s with every registered form replaced by "****".
func (m *Masker) Mask(s string) string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	for _, f := range m.forms {
		s = strings.ReplaceAll(s, f, mask)
	}
	return s
}

// pendingPrefix returns the length of the longest suffix of s that is a
// proper prefix of a registered form: what may be the start of a secret
// whose rest has not been written yet.
func (m *Masker) pendingPrefix(s string) int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	best := 0
	for _, f := range m.forms {
		// The leftmost start of a prefix of f within the last len(f)-1
		// bytes is the longest; only bytes equal to f[0] can start one.
		for i := max(len(s)-(len(f)-1), 0); i < len(s) && len(s)-i > best; i++ {
			j := strings.IndexByte(s[i:], f[0])
			if j < 0 {
				break
			}
			i += j
			if len(s)-i > best && strings.HasPrefix(f, s[i:]) {
				best = len(s) - i
				break
			}
		}
	}
	return best
}

// maskWriter masks a stream written in pieces: it holds back a tail that
// may be the start of a secret until the next write (or Flush) shows
// whether it is, so a secret split across two writes is masked too. It is
// safe for concurrent use.
type maskWriter struct {
	mu      sync.Mutex
	m       *Masker
	w       io.Writer
	pending string
}

func (mw *maskWriter) Write(p []byte) (int, error) {
	mw.mu.Lock()
	defer mw.mu.Unlock()
	s := mw.m.Mask(mw.pending + string(p))
	hold := mw.m.pendingPrefix(s)
	mw.pending = s[len(s)-hold:]
	if out := s[:len(s)-hold]; out != "" {
		if _, err := io.WriteString(mw.w, out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Flush writes what is held back: the stream ended, so it is not the start
// of a secret.
func (mw *maskWriter) Flush() {
	mw.mu.Lock()
	defer mw.mu.Unlock()
	if mw.pending != "" {
		_, _ = io.WriteString(mw.w, mw.pending)
		mw.pending = ""
	}
}
