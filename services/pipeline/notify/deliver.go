package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/mail"
	"net/smtp"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// SecretPrefix starts a Standard Webhooks signing secret: whsec_ and the
// key in base64.
const SecretPrefix = "whsec_"

// Standard Webhooks headers.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// errPermanent marks a delivery failure that retrying cannot mend (a 4xx
// answer, a missing secret, no SMTP server).
type errPermanent struct{ err error }

func (e errPermanent) Error() string { return e.err.Error() }
func (e errPermanent) Unwrap() error { return e.err }

func permanent(format string, args ...any) error { return errPermanent{fmt.Errorf(format, args...)} }

// IsPermanent reports whether a delivery error is not worth retrying.
func IsPermanent(err error) bool {
	var p errPermanent
	return errors.As(err, &p)
}

// SigningKey decodes a whsec_ secret into its HMAC key.
func SigningKey(secret string) ([]byte, error) {
	b64, ok := strings.CutPrefix(strings.TrimSpace(secret), SecretPrefix)
	if !ok {
		return nil, errors.New("the signing secret does not start with whsec_")
	}
	key, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(key) < 16 {
		return nil, errors.New("the signing secret is not whsec_ and at least 16 bytes in base64")
	}
	return key, nil
}

// Sign is the Standard Webhooks signature of body sent as message id at
// timestamp ts: "v1," and the base64 HMAC-SHA256 of "id.ts.body".
func Sign(key []byte, id string, ts int64, body []byte) string {
	mac := hmac.New(sha256.New, key)
	fmt.Fprintf(mac, "%s.%d.", id, ts)
	mac.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// Verify checks a Standard Webhooks request's headers against body with
// the whsec_ secret, accepting timestamps within tolerance of now. It is
// what a receiver does, and what the tests use.
func Verify(secret string, h http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	key, err := SigningKey(secret)
	if err != nil {
		return err
	}
	id, tsText := h.Get(HeaderID), h.Get(HeaderTimestamp)
	ts, err := strconv.ParseInt(tsText, 10, 64)
	if id == "" || err != nil {
		return errors.New("missing webhook-id or webhook-timestamp")
	}
	if d := now.Sub(time.Unix(ts, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("timestamp %d is outside the tolerance", ts)
	}
	want := Sign(key, id, ts, body)
	for _, sig := range strings.Fields(h.Get(HeaderSignature)) {
		if hmac.Equal([]byte(sig), []byte(want)) {
			return nil
		}
	}
	return errors.New("no valid v1 signature")
}

// postJSON posts body to u and classifies the outcome: 2xx is success;
// 408, 429 and 5xx are retried; other answers are permanent. Errors never
// hold the URL (a Slack webhook's URL is a secret).
func postJSON(ctx context.Context, hc *http.Client, u string, body []byte, header http.Header) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return 0, permanent("bad URL")
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "AnsFlow-Notify/1")
	resp, err := hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		if isHostDenied(err) {
			return 0, errPermanent{fmt.Errorf("post: %w", err)}
		}
		return 0, fmt.Errorf("post: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch c := resp.StatusCode; {
	case c >= 200 && c < 300:
		return c, nil
	case c == http.StatusRequestTimeout || c == http.StatusTooManyRequests || c >= 500:
		return c, fmt.Errorf("answered %d %s", c, http.StatusText(c))
	default:
		return c, permanent("answered %d %s", c, http.StatusText(c))
	}
}

// SMTPConfig is the server-wide email relay. The connection must offer
// STARTTLS: no message or password is sent in the clear.
type SMTPConfig struct {
	// Addr is the relay's host:port (587 typically); "" disables email.
	Addr string
	// From is the sender address.
	From string
	// Username, when set, authenticates with PLAIN after STARTTLS, with
	// the password held by the global secret PasswordSecret.
	Username       string
	PasswordSecret string
	// TLS, when set, is the TLS configuration of STARTTLS (its ServerName
	// defaults to Addr's host); tests set RootCAs.
	TLS *tls.Config
	// HelloName is the name given in EHLO (default "localhost").
	HelloName string
}

// sendMail sends one message to rcpts over STARTTLS.
func sendMail(ctx context.Context, cfg SMTPConfig, password string, rcpts []string, subject, text string) error {
	if cfg.Addr == "" || cfg.From == "" {
		return permanent("no SMTP server configured (--smtp-addr, --smtp-from)")
	}
	host, _, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return permanent("--smtp-addr %q: %v", cfg.Addr, err)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("connect to the SMTP server: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	c, err := smtp.NewClient(conn, host)
	if err != nil {
		conn.Close()
		return smtpErr("greeting", err)
	}
	defer c.Close()
	hello := cfg.HelloName
	if hello == "" {
		hello = "localhost"
	}
	if err := c.Hello(hello); err != nil {
		return smtpErr("EHLO", err)
	}
	if ok, _ := c.Extension("STARTTLS"); !ok {
		return permanent("the SMTP server does not offer STARTTLS; AnsFlow sends no mail in the clear")
	}
	tc := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	if cfg.TLS != nil {
		tc = cfg.TLS.Clone()
		if tc.ServerName == "" {
			tc.ServerName = host
		}
	}
	if err := c.StartTLS(tc); err != nil {
		return smtpErr("STARTTLS", err)
	}
	if cfg.Username != "" {
		if err := c.Auth(smtp.PlainAuth("", cfg.Username, password, host)); err != nil {
			return smtpErr("AUTH", err)
		}
	}
	sender, err := mail.ParseAddress(cfg.From)
	if err != nil {
		return permanent("--smtp-from %q: %v", cfg.From, err)
	}
	if err := c.Mail(sender.Address); err != nil {
		return smtpErr("MAIL FROM", err)
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r); err != nil {
			return smtpErr("RCPT TO "+r, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return smtpErr("DATA", err)
	}
	if _, err := w.Write(mailMessage(cfg.From, rcpts, subject, text, time.Now())); err != nil {
		return smtpErr("DATA", err)
	}
	if err := w.Close(); err != nil {
		return smtpErr("DATA", err)
	}
	return c.Quit()
}

// smtpErr wraps an SMTP failure; a 5xx reply is permanent.
func smtpErr(stage string, err error) error {
	var te *textproto.Error
	if errors.As(err, &te) && te.Code >= 500 {
		return permanent("SMTP %s: %v", stage, err)
	}
	return fmt.Errorf("SMTP %s: %w", stage, err)
}

// mailMessage is the RFC 5322 message: headers and a UTF-8 plain-text
// body with CRLF line ends.
func mailMessage(from string, to []string, subject, text string, now time.Time) []byte {
	var b bytes.Buffer
	h := func(k, v string) { b.WriteString(k + ": " + v + "\r\n") }
	h("From", from)
	h("To", strings.Join(to, ", "))
	h("Subject", mimeHeader(subject))
	h("Date", now.Format(time.RFC1123Z))
	h("Message-ID", fmt.Sprintf("<%d.ansflow@%s>", now.UnixNano(), domainOf(from)))
	h("MIME-Version", "1.0")
	h("Content-Type", `text/plain; charset="utf-8"`)
	h("Content-Transfer-Encoding", "8bit")
	b.WriteString("\r\n")
	for l := range strings.Lines(text) {
		// The DATA writer dot-stuffs lines starting with ".".
		b.WriteString(strings.TrimRight(l, "\r\n") + "\r\n")
	}
	return b.Bytes()
}

// mimeHeader encodes a header value that is not plain ASCII, and drops
// line breaks so that no header can be injected.
func mimeHeader(s string) string {
	s = strings.NewReplacer("\r", " ", "\n", " ").Replace(s)
	for _, r := range s {
		if r > 126 {
			return mimeQ(s)
		}
	}
	return s
}

func mimeQ(s string) string { return mime.QEncoding.Encode("utf-8", s) }

func domainOf(addr string) string {
	if a, err := mail.ParseAddress(addr); err == nil {
		addr = a.Address
	}
	if _, d, ok := strings.Cut(addr, "@"); ok {
		return d
	}
	return "ansflow"
}
