package runner

import (
	"strings"
	"sync"
)

// Masker replaces registered secret values in text. It is safe for
// concurrent use.
type Masker struct {
	mu      sync.RWMutex
	secrets []string
}

// Add registers a secret; values shorter than 4 bytes are ignored because
// masking them would garble ordinary output.
func (m *Masker) Add(secret string) {
	if len(secret) < 4 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.secrets {
		if s == secret {
			return
		}
	}
	m.secrets = append(m.secrets, secret)
}

// Mask returns s with every registered secret replaced by "****".
func (m *Masker) Mask(s string) string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	for _, sec := range m.secrets {
		s = strings.ReplaceAll(s, sec, "****")
	}
	return s
}
