package login

import (
	"net/http"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/event"
)

// auditSource is the CloudEvents source of the actions this package
// records: the pipeline service's.
const auditSource = "ansflow/pipeline"

// auditSubject is where API actions are published for the audit trail.
const auditSubject = "ansflow.events.api.action._"

// publisher is what the service needs of JetStream to record actions.
type publisher interface {
	PublishMsgAsync(m *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error)
}

// Audited actions.
const (
	actionLogin      = "login"
	actionLoginOIDC  = "login.oidc"
	actionLoginToken = "login.token"
	actionLogout     = "logout"
	actionUserCreate = "user.create"
	actionUserDelete = "user.delete"
)

// audit publishes an io.ansflow.api.action.v1 event: who (actor), what,
// on whom (target, e.g. "user:kim") and how it ended. It never carries a
// password, cookie or token. Publishing is asynchronous and best effort,
// as for the API's other actions.
func (s *Service) audit(r *http.Request, actor, action, target, outcome string) {
	if actor == "" {
		actor = "anonymous@" + clientIP(r)
	}
	e, err := event.New(auditSource, event.TypeAPIAction, event.Meta{}, event.Action{
		Actor: actor, SourceIP: clientIP(r), Action: action, Target: target, Outcome: outcome})
	if err != nil {
		return
	}
	e.SetSubject(target)
	m, err := event.ToMsg(auditSubject, e)
	if err != nil {
		return
	}
	_, _ = s.pub.PublishMsgAsync(m)
}

// actorOf is the authenticated caller as the audit trail names it.
func actorOf(r *http.Request) string {
	if id := auth.FromContext(r.Context()); id != nil {
		return id.Actor()
	}
	return ""
}
