package notify

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"net/mail"
	"os"

	"github.com/ansflow/ansflow/pkg/envflag"
	"github.com/ansflow/ansflow/pkg/spec"
)

// Flags are the command-line settings of notifications, shared by the
// pipeline service's binary and `ansflow up`; [Flags.Config] turns them
// into a [Config].
type Flags struct {
	DefaultFile        string
	SMTPAddr           string
	SMTPFrom           string
	SMTPUsername       string
	SMTPPasswordSecret string
	SMTPCAFile         string
	AllowedHosts       string
}

// RegisterFlags defines the notification flags on fs, with defaults from
// the environment. The external URL notifications link to is the
// service's --external-url ([service.Config].ExternalURL).
func RegisterFlags(fs *flag.FlagSet) *Flags {
	f := &Flags{}
	fs.StringVar(&f.DefaultFile, "notify-default-file", os.Getenv("ANSFLOW_NOTIFY_DEFAULT_FILE"), "YAML list of notify rules for pipelines that declare none (env ANSFLOW_NOTIFY_DEFAULT_FILE)")
	fs.StringVar(&f.SMTPAddr, "smtp-addr", os.Getenv("ANSFLOW_SMTP_ADDR"), "SMTP relay host:port for email notifications, spoken to with STARTTLS (env ANSFLOW_SMTP_ADDR)")
	fs.StringVar(&f.SMTPFrom, "smtp-from", os.Getenv("ANSFLOW_SMTP_FROM"), "sender address of email notifications (env ANSFLOW_SMTP_FROM)")
	fs.StringVar(&f.SMTPUsername, "smtp-username", os.Getenv("ANSFLOW_SMTP_USERNAME"), "SMTP user name; authenticates with PLAIN after STARTTLS (env ANSFLOW_SMTP_USERNAME)")
	fs.StringVar(&f.SMTPPasswordSecret, "smtp-password-secret", os.Getenv("ANSFLOW_SMTP_PASSWORD_SECRET"), "name of the global secret holding the SMTP password (env ANSFLOW_SMTP_PASSWORD_SECRET)")
	fs.StringVar(&f.SMTPCAFile, "smtp-ca-file", os.Getenv("ANSFLOW_SMTP_CA_FILE"), "PEM file of the CA of the SMTP server's certificate (default: the system's; env ANSFLOW_SMTP_CA_FILE)")
	fs.StringVar(&f.AllowedHosts, "notify-allowed-hosts", envflag.New(os.LookupEnv).String("ANSFLOW_NOTIFY_ALLOWED_HOSTS", DefaultAllowedHosts), "hosts webhook and Slack notifications may reach, comma-separated: external (public addresses), private, loopback, *, CIDR prefixes, host names or *.domain (env ANSFLOW_NOTIFY_ALLOWED_HOSTS)")
	return f
}

// Config reads the files the flags name and returns the configuration.
func (f *Flags) Config() (Config, error) {
	c := Config{SMTP: SMTPConfig{Addr: f.SMTPAddr, From: f.SMTPFrom, Username: f.SMTPUsername, PasswordSecret: f.SMTPPasswordSecret},
		AllowedHosts: f.AllowedHosts}
	if _, err := ParseHostPolicy(f.AllowedHosts); err != nil {
		return c, fmt.Errorf("--notify-allowed-hosts: %w", err)
	}
	if f.DefaultFile != "" {
		b, err := os.ReadFile(f.DefaultFile)
		if err != nil {
			return c, fmt.Errorf("--notify-default-file: %w", err)
		}
		if c.Default, err = spec.ParseNotifyRules(f.DefaultFile, b); err != nil {
			return c, fmt.Errorf("--notify-default-file:\n%w", err)
		}
	}
	if (f.SMTPAddr == "") != (f.SMTPFrom == "") {
		return c, fmt.Errorf("--smtp-addr and --smtp-from go together")
	}
	if f.SMTPFrom != "" {
		if _, err := mail.ParseAddress(f.SMTPFrom); err != nil {
			return c, fmt.Errorf("--smtp-from %q: %w", f.SMTPFrom, err)
		}
	}
	if (f.SMTPUsername == "") != (f.SMTPPasswordSecret == "") {
		return c, fmt.Errorf("--smtp-username and --smtp-password-secret go together")
	}
	if f.SMTPCAFile != "" {
		pem, err := os.ReadFile(f.SMTPCAFile)
		if err != nil {
			return c, fmt.Errorf("--smtp-ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return c, fmt.Errorf("--smtp-ca-file %s: no PEM certificate", f.SMTPCAFile)
		}
		c.SMTP.TLS = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return c, nil
}
