package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/ansflow/ansflow/pkg/natsutil"
	"github.com/ansflow/ansflow/services/audit/audit"
	"github.com/ansflow/ansflow/services/audit/store"
)

// startAudit runs the audit service in the embedded stack, with its SQLite
// store at <data-dir>/audit.db.
func startAudit(ctx context.Context, g *errgroup.Group, conn func(string) (*nats.Conn, error), cfg stackConfig, log *zap.Logger) (*audit.Service, error) {
	st, err := audit.OpenStore(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	nc, err := conn("ansflow-audit")
	if err != nil {
		st.Close()
		return nil, err
	}
	js, err := natsutil.JetStream(nc)
	if err != nil {
		nc.Close()
		st.Close()
		return nil, err
	}
	acfg := audit.Config{Metrics: cfg.Metrics}
	if err := acfg.Validate(); err != nil {
		nc.Close()
		st.Close()
		return nil, err
	}
	svc := audit.New(acfg, js, st, log)
	g.Go(func() error {
		defer st.Close()
		defer nc.Close()
		return svc.Run(ctx)
	})
	return svc, nil
}

// cmdAudit is "ansflow audit query|verify": against a server's REST API
// (--server), or directly on a store (--data-dir D, or --db DSN).
func cmdAudit(ctx context.Context, args []string) error {
	if len(args) == 0 || (args[0] != "query" && args[0] != "verify") {
		return invalid("usage: ansflow audit query|verify [--server URL | --data-dir D | --db DSN] [--output text|json|jsonl] [query flags]")
	}
	fs := flag.NewFlagSet("audit "+args[0], flag.ContinueOnError)
	server := fs.String("server", serverDefault(), "AnsFlow server URL")
	dataDir := fs.String("data-dir", "", "read the embedded audit store of this data directory, without a server")
	db := fs.String("db", os.Getenv("ANSFLOW_AUDIT_DB"), "read this audit store (PostgreSQL DSN or SQLite file), without a server")
	output := fs.String("output", "text", "text, json or jsonl")
	tf := addTokenFlags(fs, false)
	var filter func(time.Time) (store.Filter, error)
	if args[0] == "query" {
		filter = audit.FilterFlags(fs)
	}
	if err := fs.Parse(args[1:]); err != nil {
		return &usageError{err}
	}
	format, err := audit.ParseFormat(*output)
	if err != nil {
		return invalid("%v", err)
	}
	var r audit.Reader
	switch {
	case *db != "" || *dataDir != "":
		where := *db
		if where == "" {
			where = *dataDir
		}
		st, err := audit.OpenStore(where)
		if err != nil {
			return err
		}
		defer st.Close()
		r = st
	default:
		local := isLocalDefault(*server)
		if *server == "" {
			*server = localServer
		}
		token, err := tf.resolve(local)
		if err != nil {
			return err
		}
		hc, err := tf.httpClient(token)
		if err != nil {
			return err
		}
		r = audit.NewClient(*server, hc)
	}
	if args[0] == "verify" {
		res, err := r.Verify(ctx)
		if err != nil {
			return err
		}
		if err := audit.WriteVerify(os.Stdout, format, res); err != nil {
			return err
		}
		return res.Err() // a broken chain exits non-zero
	}
	f, err := filter(time.Now())
	if err != nil {
		return invalid("%v", err)
	}
	p, err := r.Query(ctx, f)
	if err != nil {
		return err
	}
	if err := audit.WriteRecords(os.Stdout, format, p); err != nil {
		return err
	}
	if format == audit.FormatJSONL && p.NextCursor != "" {
		fmt.Fprintln(os.Stderr, "next cursor:", p.NextCursor)
	}
	return nil
}
