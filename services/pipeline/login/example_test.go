package login_test

import (
	"context"
	"flag"
	"net/http"
	"os"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/ansflow/ansflow/services/pipeline/login"
)

// The pipeline service's main registers the flags, builds the service, and
// hands its routes and its authenticator to the API's guard (here a plain
// mux stands in for the guard, which checks each route's role first).
func Example() {
	fs := flag.NewFlagSet("pipeline", flag.ExitOnError)
	cfg := login.RegisterFlags(fs)
	_ = fs.Parse(os.Args[1:])

	var js jetstream.JetStream // the service's JetStream context
	svc, err := login.New(context.Background(), *cfg, js, zap.NewNop())
	if err != nil {
		return
	}
	mux := http.NewServeMux()
	for _, rt := range svc.Routes() {
		mux.Handle(rt.Pattern, rt.Handler) // the guard: authenticate with svc.Authenticate, check rt.Role and rt.Scope
	}
}
