package runner

import (
	"encoding/base64"
	"io"
	"net/url"
	"strings"
	"testing"
)

func TestMaskerCoversEncodings(t *testing.T) {
	const secret = "p@ss w0rd/with+odd=chars"
	m := &Masker{}
	m.Add(secret)
	for name, text := range map[string]string{
		"plain":             "token " + secret + " end",
		"base64 std":        base64.StdEncoding.EncodeToString([]byte(secret)),
		"base64 url":        base64.URLEncoding.EncodeToString([]byte(secret)),
		"base64 raw":        base64.RawStdEncoding.EncodeToString([]byte(secret)),
		"base64 user:pass":  base64.StdEncoding.EncodeToString([]byte("user:" + secret)),
		"base64 in a JSON":  base64.StdEncoding.EncodeToString([]byte(`{"auth":"` + secret + `"}`)),
		"base64 url inside": base64.URLEncoding.EncodeToString([]byte("xy" + secret + "tail")),
		"query escaped":     "https://h/?t=" + url.QueryEscape(secret),
		"path escaped":      "https://h/" + url.PathEscape(secret),
	} {
		got := m.Mask(text)
		if !strings.Contains(got, "****") {
			t.Errorf("%s: %q not masked: %q", name, text, got)
		}
		for _, leak := range []string{secret, base64.StdEncoding.EncodeToString([]byte(secret))[:12]} {
			if strings.Contains(got, leak) {
				t.Errorf("%s: %q still holds %q", name, got, leak)
			}
		}
	}
}

func TestMaskerLengths(t *testing.T) {
	m := &Masker{}
	m.Add("ab")  // too short: ignored
	m.Add("xyz") // the shortest masked
	if got := m.Mask("ab xyz abc"); got != "ab **** abc" {
		t.Errorf("Mask = %q, want %q", got, "ab **** abc")
	}
	long := strings.Repeat("0123456789abcdef", 300)
	m.Add(long)
	if got := m.Mask("[" + long + "]"); got != "[****]" {
		t.Errorf("a 4800-byte secret is not masked: %d bytes left", len(got))
	}
}

type chunkSink struct{ chunks []string }

func (c *chunkSink) Write(p []byte) (int, error) {
	c.chunks = append(c.chunks, string(p))
	return len(p), nil
}

// A secret written in two pieces (two log chunks) is masked as a whole,
// and text that merely starts like a secret is let through once it turns
// out not to be one.
func TestMaskWriterSplitAcrossWrites(t *testing.T) {
	const secret = "hunter2-is-the-secret"
	m := &Masker{}
	m.Add(secret)
	c := &chunkSink{}
	w := &maskWriter{m: m, w: c}
	for _, p := range []string{"line one\nthe value is hunter2-i", "s-the-secret and more\n", "almost hunter", "3 but not\n", "ends with hunt"} {
		if _, err := w.Write([]byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	if got := strings.Join(c.chunks, ""); !strings.HasSuffix(got, "ends with ") {
		t.Fatalf("the possible start of a secret was not held back: %q", got)
	}
	w.Flush()
	got := strings.Join(c.chunks, "")
	want := "line one\nthe value is **** and more\nalmost hunter3 but not\nends with hunt"
	if got != want {
		t.Fatalf("stream = %q, want %q", got, want)
	}
	for _, ch := range c.chunks {
		if strings.Contains(ch, "hunter2-i") {
			t.Fatalf("a chunk holds part of the secret: %q", ch)
		}
	}
}

// Split base64 forms are caught as well.
func TestMaskWriterSplitEncoded(t *testing.T) {
	const secret = "a-base64-split-secret"
	m := &Masker{}
	m.Add(secret)
	c := &chunkSink{}
	w := &maskWriter{m: m, w: c}
	enc := base64.StdEncoding.EncodeToString([]byte(secret))
	_, _ = w.Write([]byte("auth " + enc[:10]))
	_, _ = w.Write([]byte(enc[10:] + "\n"))
	w.Flush()
	if got := strings.Join(c.chunks, ""); got != "auth ****\n" {
		t.Fatalf("stream = %q", got)
	}
}

// A large secret (a 64 KiB key file) costs little per write.
func BenchmarkMaskWriterLargeSecret(b *testing.B) {
	m := &Masker{}
	m.Add(strings.Repeat("MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", 2048))
	w := &maskWriter{m: m, w: io.Discard}
	line := []byte(strings.Repeat("ordinary build output ", 4) + "\n")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_, _ = w.Write(line)
	}
}
