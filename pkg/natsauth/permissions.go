// Package natsauth gives every AnsFlow service its own least-privilege NATS
// identity: [Init] writes a nats-server configuration with decentralized JWT
// authentication and TLS from a CA it generates, and one credentials file
// per identity; [Permissions] derives what each identity may publish and
// subscribe from package topology's catalogue; [Provision] creates or
// updates every stream, bucket, object store and durable consumer with the
// provisioner identity, the only one allowed to.
package natsauth

import (
	"slices"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil"
	"github.com/ansflow/ansflow/pkg/topology"
)

// Fixed identity names; runner identities are [DockerIdentity] and
// [K8sIdentity].
const (
	Pipeline    = "pipeline"
	Audit       = "audit"
	Provisioner = "provisioner"
)

// DockerIdentity is the identity of the runners of docker pool pool.
func DockerIdentity(pool string) string { return "docker-" + event.Token(pool) }

// K8sIdentity is the identity of the runners of Kubernetes cluster c.
func K8sIdentity(cluster string) string { return "k8s-" + event.Token(cluster) }

// Perms is one identity's subject permissions. Deny wins over Allow.
type Perms struct {
	PubAllow, PubDeny, SubAllow []string
}

// jsAPI prefixes a JetStream API subject.
func jsAPI(s string) string { return "$JS.API." + s }

// acks returns the subjects a client acknowledging messages of consumer on
// stream publishes to, in both reply formats of nats-server 2.14+: v1
// $JS.ACK.<stream>.<consumer>.<5 tokens> and v2
// $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<5+ tokens> (feature
// flag js_ack_fc_v2, off by default in 2.15 but accepted).
func acks(stream, consumer string) []string {
	return []string{"$JS.ACK." + stream + "." + consumer + ".>", "$JS.ACK.*.*." + stream + "." + consumer + ".>"}
}

// pullFrom is what a client of the durable consumer on stream needs: its
// info, pull requests and acks.
func pullFrom(stream, consumer string) []string {
	return append([]string{
		jsAPI("CONSUMER.INFO." + stream + "." + consumer),
		jsAPI("CONSUMER.MSG.NEXT." + stream + "." + consumer),
	}, acks(stream, consumer)...)
}

// readStream is what reading stream by sequence or subject and watching it
// with ordered consumers (KV Get and Watch, object Get) needs: info, direct
// and message gets, and ordered consumers' creation, deletion and flow
// control. Ordered consumers have random names, so a consumer name cannot
// be pinned.
func readStream(stream string) []string {
	return []string{
		jsAPI("STREAM.INFO." + stream),
		jsAPI("STREAM.MSG.GET." + stream),
		jsAPI("DIRECT.GET." + stream), jsAPI("DIRECT.GET." + stream + ".>"),
		jsAPI("CONSUMER.CREATE." + stream + ".>"), jsAPI("CONSUMER.DELETE." + stream + ".>"),
		jsAPI("CONSUMER.INFO." + stream + ".>"),
		"$JS.FC." + stream + ".>", "$JS.FC.*.*." + stream + ".>",
	}
}

// getKV is reading keys of bucket b without watching it.
func getKV(b string) []string {
	s := topology.KVStream(b)
	return []string{jsAPI("STREAM.INFO." + s), jsAPI("STREAM.MSG.GET." + s), jsAPI("DIRECT.GET." + s), jsAPI("DIRECT.GET." + s + ".>")}
}

// writeKV is writing keys of bucket b.
func writeKV(b string) []string { return []string{"$KV." + b + ".>"} }

// streamInfos lets a service look up every AnsFlow stream, as
// bus.EnsureStreams does before it would create any.
func streamInfos() []string {
	var out []string
	for _, s := range topology.Streams(1) {
		out = append(out, jsAPI("STREAM.INFO."+s.Name))
	}
	return out
}

// lifecycleAll is the subject of events of type typ of every run.
func lifecycleAll(typ string) string {
	noun, verb := event.NounVerb(typ)
	return "ansflow.events." + noun + "." + verb + ".*"
}

// base is what every identity needs: account info and its own inbox.
func base(identity string) Perms {
	return Perms{PubAllow: []string{jsAPI("INFO")}, SubAllow: []string{natsutil.InboxPrefix(identity) + ".>"}}
}

// runnerPerms is the identity of the runners of kind serving target.
func runnerPerms(identity, kind, target string) Perms {
	p := base(identity)
	durable := topology.RunnerDurable(kind, target)
	p.PubAllow = append(p.PubAllow, streamInfos()...)
	p.PubAllow = append(p.PubAllow, pullFrom(event.StreamSteps, durable)...)
	// Leases and presence: read and write claims, write presence.
	p.PubAllow = append(p.PubAllow, getKV(topology.BucketAttempts)...)
	p.PubAllow = append(p.PubAllow, writeKV(topology.BucketAttempts)...)
	p.PubAllow = append(p.PubAllow, getKV(topology.BucketRunners)...)
	p.PubAllow = append(p.PubAllow, writeKV(topology.BucketRunners)...)
	// Cancellations: watch the bucket (read only) and the cancel events.
	p.PubAllow = append(p.PubAllow, readStream(topology.KVStream(topology.BucketCancels))...)
	p.SubAllow = append(p.SubAllow, "ansflow.events.step.cancel.*")
	// Sources: read only.
	p.PubAllow = append(p.PubAllow, readStream(topology.ObjectStream(topology.ObjectSources))...)
	// Its own step events and logs, and dead letters of its requests.
	p.PubAllow = append(p.PubAllow,
		lifecycleAll(event.TypeStepStarted), lifecycleAll(event.TypeStepCompleted),
		event.SubjectLogsAll, event.DLQSubject(event.StreamSteps))
	return p
}

// Permissions returns every identity of a deployment serving pools, with
// its permissions, by identity name.
func Permissions(pools topology.Pools) map[string]Perms {
	out := map[string]Perms{}
	for _, pool := range pools.Docker {
		id := DockerIdentity(pool)
		out[id] = runnerPerms(id, event.KindDocker, pool)
	}
	for _, c := range pools.K8s {
		id := K8sIdentity(c)
		out[id] = runnerPerms(id, event.KindK8s, c)
	}

	// The pipeline service publishes every event, reads and writes every
	// bucket and the sources, and reads streams with ordered consumers,
	// but creates, updates or deletes no stream and creates no consumer
	// on the steps stream (it never reads requests).
	p := base(Pipeline)
	p.PubAllow = append(p.PubAllow, "ansflow.>", "$O."+topology.ObjectSources+".>",
		jsAPI("STREAM.NAMES"), jsAPI("STREAM.LIST"), jsAPI("CONSUMER.NAMES.>"), jsAPI("CONSUMER.LIST.>"),
		jsAPI("STREAM.PURGE."+topology.ObjectStream(topology.ObjectSources)),
		"$JS.ACK.>", "$JS.FC.>")
	p.PubAllow = append(p.PubAllow, streamInfos()...)
	for _, s := range []string{event.StreamEvents, event.StreamLogs, event.StreamDLQ, topology.ObjectStream(topology.ObjectSources)} {
		p.PubAllow = append(p.PubAllow, readStream(s)...)
	}
	p.PubAllow = append(p.PubAllow, pullFrom(event.StreamEvents, topology.DurableOrchestrator)...)
	p.PubAllow = append(p.PubAllow, pullFrom(event.StreamEvents, topology.DurableNotify)...)
	p.PubAllow = append(p.PubAllow, pullFrom(event.StreamDLQ, topology.DurableDeadRequests)...)
	p.PubAllow = append(p.PubAllow, pullFrom(event.StreamEvents, topology.DurableForgeStatus)...)
	for _, b := range topology.Buckets(1) {
		p.PubAllow = append(p.PubAllow, readStream(topology.KVStream(b.Bucket))...)
		p.PubAllow = append(p.PubAllow, writeKV(b.Bucket)...)
	}
	p.PubDeny = []string{jsAPI("STREAM.CREATE.>"), jsAPI("STREAM.UPDATE.>"), jsAPI("STREAM.DELETE.>"),
		jsAPI("CONSUMER.DURABLE.CREATE.>"), jsAPI("CONSUMER.CREATE." + event.StreamSteps + ".>"),
		jsAPI("CONSUMER.DELETE." + event.StreamSteps + ".>")}
	out[Pipeline] = p

	// The audit service only reads: its consumers, and the tokens bucket
	// to authenticate its API's callers.
	a := base(Audit)
	a.PubAllow = append(a.PubAllow, streamInfos()...)
	for _, s := range topology.AuditStreams(true) {
		a.PubAllow = append(a.PubAllow, pullFrom(s, topology.AuditDurable(topology.DefaultAuditPrefix, s))...)
	}
	a.PubAllow = append(a.PubAllow, readStream(topology.KVStream(topology.BucketTokens))...)
	out[Audit] = a

	// The provisioner manages streams, consumers and buckets; it publishes
	// no data, and may not pull, get or snapshot any. (It could still
	// create a push consumer delivering to its own inbox: its credentials
	// are an administrator's, used only while provisioning.)
	pr := base(Provisioner)
	pr.PubAllow = append(pr.PubAllow, jsAPI(">"))
	pr.PubDeny = []string{jsAPI("CONSUMER.MSG.NEXT.>"), jsAPI("DIRECT.GET.>"), jsAPI("STREAM.MSG.GET.>"),
		jsAPI("STREAM.SNAPSHOT.>"), jsAPI("STREAM.RESTORE.>")}
	out[Provisioner] = pr

	for id, p := range out {
		p.PubAllow = dedup(p.PubAllow)
		out[id] = p
	}
	return out
}

func dedup(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}
