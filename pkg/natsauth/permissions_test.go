package natsauth_test

import (
	"strings"
	"testing"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsauth"
	"github.com/ansflow/ansflow/pkg/topology"
)

// matches reports whether subject matches NATS pattern (with * and >).
func matches(pattern, subject string) bool {
	p, s := strings.Split(pattern, "."), strings.Split(subject, ".")
	for i, tok := range p {
		if tok == ">" {
			return len(s) > i
		}
		if i >= len(s) || (tok != "*" && tok != s[i]) {
			return false
		}
	}
	return len(p) == len(s)
}

func allowed(p natsauth.Perms, subject string) bool {
	for _, d := range p.PubDeny {
		if matches(d, subject) {
			return false
		}
	}
	for _, a := range p.PubAllow {
		if matches(a, subject) {
			return true
		}
	}
	return false
}

// Every durable consumer of the catalogue is pulled by exactly the
// identities that serve it, in both ack formats, and no other identity.
func TestEveryConsumerHasExactlyItsReaders(t *testing.T) {
	pools := topology.Pools{Docker: []string{"a", "b"}, K8s: []string{"c1"}}
	perms := natsauth.Permissions(pools)
	owner := map[string]string{
		topology.RunnerDurable(event.KindDocker, "a"): natsauth.DockerIdentity("a"),
		topology.RunnerDurable(event.KindDocker, "b"): natsauth.DockerIdentity("b"),
		topology.RunnerDurable(event.KindK8s, "c1"):   natsauth.K8sIdentity("c1"),
		topology.DurableOrchestrator:                  natsauth.Pipeline,
		topology.DurableDeadRequests:                  natsauth.Pipeline,
		topology.DurableNotify:                        natsauth.Pipeline,
		topology.DurableForgeStatus:                   natsauth.Pipeline,
	}
	for _, c := range topology.Consumers(pools, 0, true) {
		want, ok := owner[c.Config.Durable]
		if !ok && strings.HasPrefix(c.Config.Durable, topology.DefaultAuditPrefix+"-") {
			want = natsauth.Audit
		} else if !ok {
			t.Errorf("consumer %s has no expected owner", c.Config.Durable)
			continue
		}
		for _, subj := range []string{
			"$JS.API.CONSUMER.MSG.NEXT." + c.Stream + "." + c.Config.Durable,
			"$JS.ACK." + c.Stream + "." + c.Config.Durable + ".1.2.3.4.5",
			"$JS.ACK._.HASH." + c.Stream + "." + c.Config.Durable + ".1.2.3.4.5.tok",
		} {
			for id, p := range perms {
				if got := allowed(p, subj); got != (id == want) && !(id == natsauth.Pipeline && strings.HasPrefix(subj, "$JS.ACK.")) {
					t.Errorf("%s may publish %s: %v, want %v", id, subj, got, id == want)
				}
			}
		}
	}
	// No identity but the provisioner manages streams.
	for id, p := range perms {
		for _, subj := range []string{"$JS.API.STREAM.CREATE.X", "$JS.API.STREAM.DELETE." + event.StreamSteps, "$JS.API.STREAM.UPDATE." + event.StreamEvents} {
			if allowed(p, subj) != (id == natsauth.Provisioner) {
				t.Errorf("%s may publish %s: %v", id, subj, allowed(p, subj))
			}
		}
		if len(p.SubAllow) == 0 || p.SubAllow[0] != "_INBOX_"+id+".>" {
			t.Errorf("%s subscribes %v, want its own inbox first", id, p.SubAllow)
		}
	}
}

// Only the pipeline service may read or write the secrets bucket: its
// ciphertext is useless without the secrets key, but nobody else has a
// reason to hold it.
func TestOnlyThePipelineServiceTouchesTheSecretsBucket(t *testing.T) {
	perms := natsauth.Permissions(topology.Pools{Docker: []string{"default"}, K8s: []string{"default"}})
	kvStream := topology.KVStream(topology.BucketSecrets)
	subjects := []string{
		"$KV." + topology.BucketSecrets + ".g.NPM_TOKEN",
		"$JS.API.DIRECT.GET." + kvStream,
		"$JS.API.STREAM.MSG.GET." + kvStream,
	}
	for id, p := range perms {
		for _, s := range subjects {
			got := allowed(p, s)
			want := id == natsauth.Pipeline
			if got != want {
				t.Errorf("identity %s: publish to %s allowed=%v, want %v", id, s, got, want)
			}
		}
	}
}
