package runner

import (
	"flag"
	"fmt"
	"os"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/envflag"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/pkg/source"
	"github.com/ansflow/ansflow/pkg/topology"
)

// Flags are the command-line flags both runner binaries read for the loop
// they share: the runner's [Config] (but its Targets, which each binary
// reads its own way) and how it fetches sources.
type Flags struct {
	// Config is the runner loop's configuration; Targets is left to the
	// binary.
	Config Config
	// AllowLocalClone lets runs clone file:// URLs and local paths of this
	// host ([source.Fetcher].AllowLocal; off by default).
	AllowLocalClone bool
	// CloneCA is the PEM file of the CAs trusted for https:// clones
	// instead of the system's ([source.CloneOptions].CAFile).
	CloneCA string

	identity string
}

// RegisterFlags registers the runner flags of a runner of kind on fs, each
// with its environment variable (read through ev) as its default;
// concurrency is the binary's default of --concurrency and per the unit it
// counts in ("per cluster").
func RegisterFlags(fs *flag.FlagSet, ev *envflag.Env, kind string, concurrency int, per string) *Flags {
	f := &Flags{Config: Config{Kind: kind}}
	c := &f.Config
	if per != "" {
		per = " " + per
	}
	fs.IntVar(&c.Concurrency, "concurrency", ev.Int("ANSFLOW_CONCURRENCY", concurrency), "steps executed at once"+per+" (env ANSFLOW_CONCURRENCY)")
	fs.StringVar(&c.ID, "id", ev.String("ANSFLOW_RUNNER_ID", ""), "runner instance id in events; default "+kind+"-runner@HOST-PID (env ANSFLOW_RUNNER_ID)")
	fs.StringVar(&c.WorkDir, "work-dir", ev.String("ANSFLOW_WORK_DIR", ""), "where run sources are unpacked (env ANSFLOW_WORK_DIR)")
	fs.DurationVar(&c.DefaultTimeout, "default-timeout", ev.Duration("ANSFLOW_DEFAULT_TIMEOUT", DefaultTimeout), "timeout of a step that sets none (env ANSFLOW_DEFAULT_TIMEOUT)")
	fs.DurationVar(&c.Lease, "lease", ev.Duration("ANSFLOW_LEASE", DefaultLease), "how long a step's claim stays held without renewal before another runner may take it over (env ANSFLOW_LEASE)")
	fs.DurationVar(&c.Heartbeat, "heartbeat", ev.Duration("ANSFLOW_HEARTBEAT", DefaultHeartbeat), "how often the runner announces itself (env ANSFLOW_HEARTBEAT)")
	fs.IntVar(&c.Replicas, "replicas", ev.Int("ANSFLOW_NATS_REPLICAS", 1), "replicas of the buckets the runner creates (3 on a NATS cluster); existing ones keep theirs (env ANSFLOW_NATS_REPLICAS)")
	fs.DurationVar(&c.Grace, "grace", ev.Duration("ANSFLOW_GRACE", DefaultGrace), "on SIGTERM, how long running steps may finish before they are stopped (env ANSFLOW_GRACE)")
	fs.BoolVar(&f.AllowLocalClone, "allow-local-clone", ev.Bool("ANSFLOW_ALLOW_LOCAL_CLONE", false), "let runs clone file:// URLs and paths on this host; default https, ssh and git only (env ANSFLOW_ALLOW_LOCAL_CLONE=true)")
	fs.StringVar(&f.CloneCA, "clone-ca", ev.String("ANSFLOW_CLONE_CA", ""), "PEM file of the CAs trusted for https:// clones instead of the system's (a forge with a private CA; env ANSFLOW_CLONE_CA)")
	fs.StringVar(&f.identity, "secrets-identity", ev.String("ANSFLOW_SECRETS_IDENTITY", ""), "the pool's secrets identity file (made on first use); without it steps asking for secrets fail (env ANSFLOW_SECRETS_IDENTITY)")
	return f
}

// Finish completes the configuration once the flags are parsed: it loads
// (or makes) the secrets identity and names the instance when --id was not
// given.
func (f *Flags) Finish() error {
	if f.identity != "" {
		id, _, err := secret.LoadOrCreateIdentity(f.identity)
		if err != nil {
			return err
		}
		f.Config.Identity = id
	}
	if f.Config.ID == "" {
		host, _ := os.Hostname()
		f.Config.ID = fmt.Sprintf("%s-runner@%s-%d", f.Config.Kind, host, os.Getpid())
	}
	return nil
}

// Fetcher returns the source fetcher the flags describe.
func (f *Flags) Fetcher(js jetstream.JetStream) *source.Fetcher {
	return &source.Fetcher{JS: js, AllowLocal: f.AllowLocalClone, CAFile: f.CloneCA}
}

// Streams names the streams a runner reads and writes, buckets by the
// streams behind them, for its readiness check.
func Streams() []string {
	return []string{event.StreamSteps, event.StreamEvents, event.StreamLogs,
		topology.KVStream(AttemptsBucket), topology.KVStream(CancelsBucket), topology.KVStream(RunnersBucket),
		topology.ObjectStream(topology.ObjectSources)}
}
