// Package notifytest holds a real SMTP server for the tests of
// notifications: github.com/emersion/go-smtp on loopback, offering
// STARTTLS with a certificate of its own and PLAIN authentication.
package notifytest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// MailServer is a running SMTP server that keeps what it receives.
type MailServer struct {
	// Addr is its host:port.
	Addr string
	// Roots trusts its certificate.
	Roots *x509.CertPool
	user  string
	pass  string
	mu    sync.Mutex
	mails []Mail
}

// Mail is one message received.
type Mail struct {
	From string
	To   []string
	// Data is the message as sent (headers and body).
	Data string
	// TLS says the message came over STARTTLS; Authenticated that the
	// client logged in first.
	TLS, Authenticated bool
}

// StartMail starts a server on loopback accepting mail only after a login
// as user with password, offering STARTTLS when withTLS (without it, it
// allows logins in the clear, to test that clients refuse them). It stops
// when the test ends.
func StartMail(t testing.TB, user, password string, withTLS bool) *MailServer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ms := &MailServer{Roots: x509.NewCertPool(), user: user, pass: password}
	ms.Roots.AddCert(cert)
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) { return &session{srv: ms, conn: c}, nil }))
	srv.Domain = "localhost"
	if withTLS {
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	} else {
		srv.AllowInsecureAuth = true
	}
	srv.ReadTimeout, srv.WriteTimeout = 10*time.Second, 10*time.Second
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ms.Addr = ln.Addr().String()
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ms
}

// Received returns the messages received so far.
func (ms *MailServer) Received() []Mail {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return append([]Mail(nil), ms.mails...)
}

type session struct {
	srv  *MailServer
	conn *smtp.Conn
	cur  Mail
}

func (s *session) AuthMechanisms() []string { return []string{sasl.Plain} }

func (s *session) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if user != s.srv.user || pass != s.srv.pass {
			return errors.New("bad credentials")
		}
		s.cur.Authenticated = true
		return nil
	}), nil
}

func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	if !s.cur.Authenticated {
		return smtp.ErrAuthRequired
	}
	s.cur.From = from
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.cur.To = append(s.cur.To, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	m := s.cur
	m.Data = string(b)
	_, m.TLS = s.conn.TLSConnectionState()
	s.srv.mu.Lock()
	s.srv.mails = append(s.srv.mails, m)
	s.srv.mu.Unlock()
	return nil
}

func (s *session) Reset() { s.cur = Mail{Authenticated: s.cur.Authenticated} }

func (s *session) Logout() error { return nil }
