package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/logging"
	"github.com/ansflow/ansflow/pkg/natsutil"
)

// cmdNATS runs the embedded nats-server from a configuration file, such as
// the one `ansflow secure init` writes, until ctx ends.
func cmdNATS(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("nats", flag.ContinueOnError)
	conf := fs.String("config", "", "nats-server configuration file (e.g. DIR/nats.conf of `ansflow secure init`)")
	dataDir := fs.String("data-dir", "", "JetStream store directory (default: the configuration's)")
	listen := fs.String("listen", "", "client listen address host:port (default: the configuration's)")
	level := fs.String("log-level", "info", "log level")
	if err := fs.Parse(args); err != nil {
		return &usageError{err}
	}
	if *conf == "" {
		return invalid("nats: --config is required")
	}
	log, err := logging.New(*level, false)
	if err != nil {
		return &usageError{err}
	}
	s, err := natsutil.StartFromConfig(*conf, *dataDir, *listen, log)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "ansflow nats: listening on %s\n", s.ClientURL())
	// SIGHUP reloads the configuration: after `ansflow secure reissue`, it
	// applies the revocation of the replaced credentials.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			natsutil.Shutdown(s)
			return nil
		case <-hup:
			if err := natsutil.ReloadFromConfig(s, *conf, *dataDir, *listen); err != nil {
				log.Error("reload NATS configuration", zap.Error(err))
				continue
			}
			log.Info("NATS configuration reloaded")
		}
	}
}
