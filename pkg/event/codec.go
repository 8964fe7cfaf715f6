package event

import (
	"fmt"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats.go"
)

// Header names of the binary content mode and of JetStream deduplication.
const (
	headerPrefix    = "ce-"
	HeaderMsgID     = "Nats-Msg-Id"
	HeaderCEID      = "ce-id"
	HeaderCEType    = "ce-type"
	HeaderCESource  = "ce-source"
	headerCEVersion = "ce-specversion"
	headerCETime    = "ce-time"
	headerCESubject = "ce-subject"
	headerCT        = "content-type"
)

// ToMsg encodes e in binary content mode as a NATS message for subject.
// The event id is also set as Nats-Msg-Id so JetStream drops a duplicate
// publish of the same event.
func ToMsg(subject string, e cloudevents.Event) (*nats.Msg, error) {
	if err := e.Validate(); err != nil {
		return nil, fmt.Errorf("encode event %q for %s: %w", e.ID(), subject, err)
	}
	m := nats.NewMsg(subject)
	m.Header.Set(HeaderCEID, e.ID())
	m.Header.Set(HeaderMsgID, e.ID())
	m.Header.Set(headerCEVersion, e.SpecVersion())
	m.Header.Set(HeaderCEType, e.Type())
	m.Header.Set(HeaderCESource, e.Source())
	if !e.Time().IsZero() {
		m.Header.Set(headerCETime, e.Time().UTC().Format(time.RFC3339Nano))
	}
	if e.Subject() != "" {
		m.Header.Set(headerCESubject, e.Subject())
	}
	if ct := e.DataContentType(); ct != "" {
		m.Header.Set(headerCT, ct)
	}
	for k, v := range e.Extensions() {
		m.Header.Set(headerPrefix+k, fmt.Sprint(v))
	}
	m.Data = e.Data()
	return m, nil
}

// FromMsg decodes a binary-mode CloudEvent from a NATS message. It returns an
// error wrapping [ErrNotCloudEvent] when a required attribute is missing or
// invalid; the caller decides whether that message is poison.
func FromMsg(m *nats.Msg) (cloudevents.Event, error) {
	e := cloudevents.NewEvent()
	if m.Header == nil || m.Header.Get(headerCEVersion) == "" {
		return e, fmt.Errorf("message on %s: %w: no %s header", m.Subject, ErrNotCloudEvent, headerCEVersion)
	}
	if v := m.Header.Get(headerCEVersion); v != cloudevents.VersionV1 {
		return e, fmt.Errorf("message on %s: %w: specversion %q is not 1.0", m.Subject, ErrNotCloudEvent, v)
	}
	e.SetID(m.Header.Get(HeaderCEID))
	e.SetType(m.Header.Get(HeaderCEType))
	e.SetSource(m.Header.Get(HeaderCESource))
	if s := m.Header.Get(headerCESubject); s != "" {
		e.SetSubject(s)
	}
	if t := m.Header.Get(headerCETime); t != "" {
		ts, err := time.Parse(time.RFC3339Nano, t)
		if err != nil {
			return e, fmt.Errorf("message on %s: %w: bad ce-time %q", m.Subject, ErrNotCloudEvent, t)
		}
		e.SetTime(ts)
	}
	for k, vs := range m.Header {
		lk := strings.ToLower(k)
		if !strings.HasPrefix(lk, headerPrefix) || len(vs) == 0 {
			continue
		}
		name := lk[len(headerPrefix):]
		switch name {
		case "id", "type", "source", "specversion", "time", "subject", "datacontenttype", "dataschema":
			continue
		}
		e.SetExtension(name, vs[0])
	}
	ct := m.Header.Get(headerCT)
	if ct == "" {
		ct = cloudevents.ApplicationJSON
	}
	e.SetDataContentType(ct)
	e.DataEncoded = m.Data
	if err := e.Validate(); err != nil {
		return e, fmt.Errorf("message on %s: %w: %v", m.Subject, ErrNotCloudEvent, err)
	}
	return e, nil
}
