// Package topology is the one typed catalogue of AnsFlow's JetStream
// resources: every stream, key-value bucket, object store and durable
// consumer, with its name, subjects and configuration.
//
// Three readers share it, so that a resource defined in one place cannot be
// missing from another: `ansflow provision` creates or updates everything it
// lists, the services look up (and, in the embedded default, create) the
// same definitions at start, and package natsauth derives each NATS
// identity's permissions from the names it gives.
package topology

import (
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/event"
)

// DuplicateWindow is how long JetStream remembers a Nats-Msg-Id.
const DuplicateWindow = 10 * time.Minute

// MaxMessageBytes is the largest message the streams accept.
const MaxMessageBytes = 1 << 20

// dlqHeaderAllowance is how much more than [MaxMessageBytes] a dead letter
// may take: the largest message of another stream plus the reason and
// origin headers the dead-letter path adds must fit in the DLQ stream.
const dlqHeaderAllowance = 16 << 10

// Key-value buckets. The runner and pipeline packages keep their own names
// for them as aliases of these.
const (
	// BucketAttempts holds each attempt's claim (runners and the
	// orchestrator).
	BucketAttempts = "ansflow_attempts"
	// BucketCancels holds one key per cancelled or finished run.
	BucketCancels = "ansflow_cancels"
	// BucketRunners holds each runner's presence entry.
	BucketRunners = "ansflow_runners"
	// BucketSlots holds the pipelines' concurrency slots.
	BucketSlots = "ansflow_pipeline_slots"
	// BucketPipelines holds the current version of each pipeline.
	BucketPipelines = "ansflow_pipelines"
	// BucketVersions holds every version of each pipeline.
	BucketVersions = "ansflow_pipeline_versions"
	// BucketRuns holds run state.
	BucketRuns = "ansflow_runs"
	// BucketCatalog holds the registry and cluster catalogues.
	BucketCatalog = "ansflow_catalog"
	// BucketCounters holds run number counters.
	BucketCounters = "ansflow_counters"
	// BucketTokens holds API tokens by id (hashes only, never a token).
	BucketTokens = "ansflow_tokens"
	// BucketUsers holds human users (password hashes only).
	BucketUsers = "ansflow_users"
	// BucketSessions holds login sessions (hashes of session ids only).
	BucketSessions = "ansflow_sessions"
	// BucketSecrets holds the secret store: ciphertext and metadata only,
	// never a value (package secret). Only the pipeline service may read
	// or write it.
	BucketSecrets = "ansflow_secrets"
	// BucketNotifications records each notification delivery of a run,
	// by run, rule and target, so that a redelivered run completion does
	// not notify twice (package notify of the pipeline service).
	BucketNotifications = "ansflow_notifications"

	// BucketForgeStatus holds the last commit status posted to a forge per
	// run and status context, so a redelivered event never posts an older
	// state after a newer one.
	BucketForgeStatus = "ansflow_forge_status"
)

// ObjectSources is the object store bucket holding uploaded sources.
const ObjectSources = "ansflow_sources"

// TTLs of the buckets whose entries expire.
const (
	// AttemptsTTL is how long the attempts and cancels buckets keep an
	// entry: at least as long as the steps stream keeps a request.
	AttemptsTTL = 14 * 24 * time.Hour
	// RunnersTTL is how long the runners bucket keeps an entry that is no
	// longer rewritten.
	RunnersTTL = 24 * time.Hour
	// SessionsTTL is how long the sessions bucket keeps a login session:
	// the longest session lifetime the pipeline service accepts. A session
	// ends earlier by its own expiry or at logout.
	SessionsTTL = 7 * 24 * time.Hour
	// SourcesTTL is how long the sources object store keeps an uploaded
	// source tree: long enough for a run, its retries and a rerun within
	// the week, not forever. A rerun of an older uploaded run fails with
	// an error saying its source expired.
	SourcesTTL = 7 * 24 * time.Hour
	// NotificationsTTL is how long a delivery record is kept: longer than
	// the events stream keeps a run's completion.
	NotificationsTTL = 31 * 24 * time.Hour

	// ForgeStatusTTL is how long the forge status bucket remembers what
	// was posted for a run: longer than the events stream keeps the events
	// that could be redelivered.
	ForgeStatusTTL = 31 * 24 * time.Hour
)

// Durable consumers of the pipeline service.
const (
	// DurableOrchestrator reads step.started and step.completed events.
	DurableOrchestrator = "pipeline-orchestrator"
	// DurableDeadRequests reads dead-lettered step requests.
	DurableDeadRequests = "pipeline-dead-requests"
	// DurableNotify reads run.completed events to send notifications.
	DurableNotify = "pipeline-notify"

	// DurableForgeStatus reads run.created, step.completed and
	// run.completed events to post commit statuses to forges.
	DurableForgeStatus = "pipeline-forge-status"
)

// NotifySubjects are the subjects the notifier's consumer reads.
var NotifySubjects = []string{"ansflow.events.run.completed.*"}

// NotifyAckWait is the ack wait of the notifier's consumer.
const NotifyAckWait = 30 * time.Second

// DefaultLease is a runner's default lease, which is its consumer's
// AckWait; a runner started with another --lease against a provisioned
// server needs `ansflow provision --runner-lease` to match.
const DefaultLease = 30 * time.Second

// DefaultAuditPrefix is the audit service's default durable prefix.
const DefaultAuditPrefix = "audit"

// Streams returns the configuration of every AnsFlow stream. replicas is 1
// for a single server and 3 for a typical cluster.
func Streams(replicas int) []jetstream.StreamConfig {
	replicas = max(replicas, 1)
	base := func(name, subject, desc string) jetstream.StreamConfig {
		return jetstream.StreamConfig{
			Name:        name,
			Description: desc,
			Subjects:    []string{subject},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Duplicates:  DuplicateWindow,
			MaxMsgSize:  MaxMessageBytes,
			Replicas:    replicas,
			Discard:     jetstream.DiscardOld,
		}
	}
	steps := base(event.StreamSteps, event.SubjectStepsAll, "step requests for runner pools")
	steps.MaxAge = 7 * 24 * time.Hour
	events := base(event.StreamEvents, event.SubjectEventsAll, "lifecycle events")
	events.MaxAge = 30 * 24 * time.Hour
	logs := base(event.StreamLogs, event.SubjectLogsAll, "step log chunks")
	logs.MaxAge = 7 * 24 * time.Hour
	logs.MaxBytes = 2 << 30
	dlq := base(event.StreamDLQ, event.SubjectDLQAll, "dead-lettered messages")
	dlq.MaxAge = 30 * 24 * time.Hour
	dlq.MaxMsgSize = MaxMessageBytes + dlqHeaderAllowance
	return []jetstream.StreamConfig{steps, events, logs, dlq}
}

// Buckets returns the configuration of every key-value bucket.
func Buckets(replicas int) []jetstream.KeyValueConfig {
	replicas = max(replicas, 1)
	kv := func(name string, ttl time.Duration) jetstream.KeyValueConfig {
		return jetstream.KeyValueConfig{Bucket: name, History: 1, TTL: ttl, Replicas: replicas}
	}
	return []jetstream.KeyValueConfig{
		kv(BucketAttempts, AttemptsTTL), kv(BucketCancels, AttemptsTTL), kv(BucketRunners, RunnersTTL),
		kv(BucketSlots, 0), kv(BucketPipelines, 0), kv(BucketVersions, 0), kv(BucketRuns, 0),
		kv(BucketCatalog, 0), kv(BucketCounters, 0),
		kv(BucketTokens, 0), kv(BucketUsers, 0), kv(BucketSessions, SessionsTTL),
		kv(BucketSecrets, 0), kv(BucketNotifications, NotificationsTTL), kv(BucketForgeStatus, ForgeStatusTTL),
	}
}

// Bucket returns the configuration of the bucket name with replicas, and
// false when the catalogue has no such bucket.
func Bucket(name string, replicas int) (jetstream.KeyValueConfig, bool) {
	for _, b := range Buckets(replicas) {
		if b.Bucket == name {
			return b, true
		}
	}
	return jetstream.KeyValueConfig{Bucket: name, Replicas: max(replicas, 1)}, false
}

// MustBucket is [Bucket] for a name the catalogue defines; it panics
// otherwise, which is a programming error caught by any test that starts
// the caller.
func MustBucket(name string, replicas int) jetstream.KeyValueConfig {
	b, ok := Bucket(name, replicas)
	if !ok {
		panic("topology: no bucket " + name)
	}
	return b
}

// ObjectStores returns the configuration of every object store.
func ObjectStores(replicas int) []jetstream.ObjectStoreConfig {
	return []jetstream.ObjectStoreConfig{{Bucket: ObjectSources, Description: "run sources", TTL: SourcesTTL, Replicas: max(replicas, 1)}}
}

// KVStream is the name of the stream behind key-value bucket b.
func KVStream(b string) string { return "KV_" + b }

// ObjectStream is the name of the stream behind object store b.
func ObjectStream(b string) string { return "OBJ_" + b }

// Consumer is one durable consumer: the stream it reads and its
// configuration.
type Consumer struct {
	Stream string
	Config jetstream.ConsumerConfig
}

// WorkConsumer is the configuration of a durable consumer served by
// package bus's Consume: explicit acks, unlimited server-side deliveries
// (Consume counts them itself), and enough ack-pending room for
// concurrency handlers.
func WorkConsumer(stream, durable string, filters []string, ackWait time.Duration, concurrency int, deliverNew bool) Consumer {
	if ackWait <= 0 {
		ackWait = 30 * time.Second
	}
	cc := jetstream.ConsumerConfig{
		Durable:        durable,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        ackWait,
		MaxDeliver:     -1,
		FilterSubjects: filters,
		MaxAckPending:  max(1000, concurrency*4),
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	}
	if deliverNew {
		cc.DeliverPolicy = jetstream.DeliverNewPolicy
	}
	return Consumer{Stream: stream, Config: cc}
}

// RunnerDurable is the durable consumer shared by every runner of kind
// serving target.
func RunnerDurable(kind, target string) string { return "runner-" + kind + "-" + event.Token(target) }

// RunnerConsumer is the consumer of the runners of kind serving target.
func RunnerConsumer(kind, target string, lease time.Duration, concurrency int) Consumer {
	if lease <= 0 {
		lease = DefaultLease
	}
	return WorkConsumer(event.StreamSteps, RunnerDurable(kind, target),
		[]string{event.StepRequestedSubject(kind, target)}, lease, concurrency, false)
}

// OrchestratorConsumer is the pipeline service's consumer of step events.
func OrchestratorConsumer(concurrency int) Consumer {
	return WorkConsumer(event.StreamEvents, DurableOrchestrator,
		[]string{"ansflow.events.step.started.*", "ansflow.events.step.completed.*"}, 0, concurrency, false)
}

// NotifyConsumer is the pipeline service's consumer of run completions,
// for notifications. It starts at new messages: a deployment that gains
// notifications does not announce every run the stream still holds.
func NotifyConsumer(concurrency int) Consumer {
	return WorkConsumer(event.StreamEvents, DurableNotify, NotifySubjects, NotifyAckWait, concurrency, true)
}

// ForgeStatusSubjects are the events the forge status consumer reads.
var ForgeStatusSubjects = []string{"ansflow.events.run.created.*", "ansflow.events.step.completed.*", "ansflow.events.run.completed.*"}

// ForgeStatusConsumer is the pipeline service's consumer of the run events
// that commit statuses follow. It starts at new events: a deployment that
// gains it does not post statuses for the runs of the stream's past.
func ForgeStatusConsumer(concurrency int) Consumer {
	return WorkConsumer(event.StreamEvents, DurableForgeStatus, ForgeStatusSubjects, 0, concurrency, true)
}

// DeadRequestsConsumer is the pipeline service's consumer of dead-lettered
// step requests.
func DeadRequestsConsumer() Consumer {
	return Consumer{Stream: event.StreamDLQ, Config: jetstream.ConsumerConfig{
		Durable:       DurableDeadRequests,
		AckPolicy:     jetstream.AckExplicitPolicy,
		FilterSubject: event.DLQSubject(event.StreamSteps),
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       30 * time.Second,
	}}
}

// AuditStreams lists the streams the audit service records; logs only when
// includeLogs.
func AuditStreams(includeLogs bool) []string {
	s := []string{event.StreamSteps, event.StreamEvents, event.StreamDLQ}
	if includeLogs {
		s = append(s, event.StreamLogs)
	}
	return s
}

// AuditDurable is the name of the audit service's durable consumer on
// stream for durable prefix prefix.
func AuditDurable(prefix, stream string) string {
	return prefix + "-" + strings.ToLower(strings.TrimPrefix(stream, "ANSFLOW_"))
}

// AuditConsumer is the audit service's consumer of stream: it never gives
// up on a message (a store outage is waited out, bad messages are stored,
// not retried).
func AuditConsumer(prefix, stream string, ackWait time.Duration, batchSize int) Consumer {
	if ackWait <= 0 {
		ackWait = 30 * time.Second
	}
	if batchSize <= 0 {
		batchSize = 1000
	}
	return Consumer{Stream: stream, Config: jetstream.ConsumerConfig{
		Durable:       AuditDurable(prefix, stream),
		Description:   "AnsFlow audit trail",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxDeliver:    -1,
		MaxAckPending: max(8*batchSize, 1000),
	}}
}

// Pools names the runner pools and clusters a deployment serves.
type Pools struct {
	// Docker are the docker runner pools.
	Docker []string
	// K8s are the Kubernetes clusters.
	K8s []string
}

// Consumers returns every durable consumer of a deployment with the given
// pools, with default settings (runner lease [DefaultLease] and
// concurrency, audit prefix [DefaultAuditPrefix], logs not audited unless
// auditLogs).
func Consumers(p Pools, lease time.Duration, auditLogs bool) []Consumer {
	var out []Consumer
	for _, pool := range p.Docker {
		out = append(out, RunnerConsumer(event.KindDocker, pool, lease, 0))
	}
	for _, c := range p.K8s {
		out = append(out, RunnerConsumer(event.KindK8s, c, lease, 0))
	}
	out = append(out, OrchestratorConsumer(0), NotifyConsumer(0), DeadRequestsConsumer(), ForgeStatusConsumer(0))
	for _, s := range AuditStreams(auditLogs) {
		out = append(out, AuditConsumer(DefaultAuditPrefix, s, 0, 0))
	}
	return out
}
