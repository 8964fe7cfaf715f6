// Command ansflow is AnsFlow in one binary: `ansflow up` runs the pipeline
// service, the runners and the audit service around an embedded nats-server;
// `ansflow run FILE` runs a pipeline file end to end; the other subcommands
// are clients of a running server's REST API.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/ansflow/ansflow/services/audit/audit"
)

// Exit codes of `ansflow run` and friends.
const (
	exitOK      = 0
	exitFailed  = 1
	exitInvalid = 2
)

// usageError is an error in the command line or its input (exit 2).
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func invalid(format string, args ...any) error { return &usageError{fmt.Errorf(format, args...)} }

// errRunFailed reports a run that ended unsuccessfully (exit 1).
var errRunFailed = errors.New("run did not succeed")

const usage = `usage: ansflow <command> [flags]

Embedded:
  up        run every service around an embedded nats-server
  run       run a pipeline file end to end (embedded unless --server)
  validate  check a pipeline file

Securing NATS (see docs/security.md):
  secure    init DIR: NATS config, TLS CA and one credentials file per service; reissue DIR IDENTITY
  nats      --config DIR/nats.conf: run the embedded nats-server with that configuration
  provision --nats URL --nats-creds DIR/creds/provisioner.creds --nats-ca DIR/tls/ca.pem: create every stream, bucket and consumer

Clients of a running server (--server URL, default $ANSFLOW_SERVER or http://127.0.0.1:8080;
--token TOKEN, default $ANSFLOW_TOKEN, else the admin token of --data-dir D or of the local server):
  pipelines apply|list|get|export|delete|versions
  runs      list|get|cancel|approve|rerun|logs
  runners   list: the runners, their pools and busy slots
  trigger   PIPELINE: start a run of a stored pipeline
  registries, clusters  list|add|delete
  audit     query|verify
  users     add|list|delete: the users who log in to the web UI
  tokens    create|list|revoke: API tokens
  secrets   set NAME (value on stdin)|list|delete NAME [--pipeline P]: secrets steps ask for
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := dispatch(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

func dispatch(ctx context.Context, args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(os.Stderr, usage)
		if len(args) == 0 {
			return exitInvalid
		}
		return exitOK
	}
	cmds := map[string]func(context.Context, []string) error{
		"up": cmdUp, "run": cmdRun, "validate": cmdValidate, "pipelines": cmdPipelines, "runs": cmdRuns,
		"trigger": cmdTrigger, "runners": cmdRunners, "registries": cmdCatalog("registries"), "clusters": cmdCatalog("clusters"), "audit": cmdAudit, "users": cmdUsers,
		"secure": cmdSecure, "nats": cmdNATS, "provision": cmdProvision,
		"tokens": cmdTokens, "secrets": cmdSecrets,
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(os.Stderr, "ansflow: unknown command %q\n\n%s", args[0], usage)
		return exitInvalid
	}
	err := cmd(ctx, args[1:])
	var ue *usageError
	var ae *apiError
	var he *audit.HTTPError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errRunFailed):
		return exitFailed
	case errors.As(err, &ue):
		fmt.Fprintln(os.Stderr, err)
		return exitInvalid
	case errors.As(err, &ae) && ae.Status >= 400 && ae.Status < 500,
		errors.As(err, &he) && he.Status >= 400 && he.Status < 500:
		fmt.Fprintln(os.Stderr, "ansflow:", err)
		return exitInvalid
	default:
		fmt.Fprintln(os.Stderr, "ansflow:", err)
		return exitFailed
	}
}
