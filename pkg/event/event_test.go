package event

import (
	"errors"
	"testing"

	"github.com/nats-io/nats.go"
)

func TestBinaryModeRoundTrip(t *testing.T) {
	e, err := New("ansflow/test", TypeStepRequested, Meta{RunID: "r1", StepID: "build", Attempt: 2}, StepRequested{RunID: "r1", StepID: "build"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := ToMsg(StepRequestedSubject(KindDocker, "gpu pool"), e)
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != "ansflow.step.requested.docker.gpu_pool" || m.Header.Get(HeaderMsgID) != e.ID() || m.Header.Get("ce-attempt") != "2" {
		t.Errorf("message = %s %v", m.Subject, m.Header)
	}
	back, err := FromMsg(m)
	if err != nil {
		t.Fatal(err)
	}
	meta := MetaOf(back)
	var d StepRequested
	if back.ID() != e.ID() || back.Type() != e.Type() || meta != (Meta{RunID: "r1", StepID: "build", Attempt: 2}) || DecodeData(back, &d) != nil || d.StepID != "build" {
		t.Errorf("round trip: %v %+v %+v", back, meta, d)
	}
}

func TestFromMsgRejectsNonCloudEvents(t *testing.T) {
	for name, h := range map[string]nats.Header{
		"no headers":  nil,
		"old version": {"ce-specversion": {"0.3"}, "ce-id": {"x"}, "ce-type": {"t"}, "ce-source": {"s"}},
		"no id":       {"ce-specversion": {"1.0"}, "ce-type": {"t"}, "ce-source": {"s"}},
		"bad time":    {"ce-specversion": {"1.0"}, "ce-id": {"x"}, "ce-type": {"t"}, "ce-source": {"s"}, "ce-time": {"yesterday"}},
	} {
		if _, err := FromMsg(&nats.Msg{Subject: "s", Header: h, Data: []byte("{}")}); !errors.Is(err, ErrNotCloudEvent) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

func TestSubjects(t *testing.T) {
	if got := LifecycleSubject(TypeStepCompleted, "r.1"); got != "ansflow.events.step.completed.r_1" {
		t.Errorf("lifecycle subject = %s", got)
	}
	if got := LogSubject("r", "s*"); got != "ansflow.logs.r.s_" {
		t.Errorf("log subject = %s", got)
	}
}
