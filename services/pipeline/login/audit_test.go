package login

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/bus"
	"github.com/ansflow/ansflow/pkg/event"
)

func TestLoginsAndUserChangesAreAudited(t *testing.T) {
	js := startNATS(t)
	ctx := context.Background()
	if err := bus.EnsureStreams(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, js, testConfig())
	e.addUser(t, "root", auth.RoleAdmin, "password1")
	b := newBrowser(t)
	wantStatus(t, b.login(e.srv.URL, "root", "wrong-password"), http.StatusUnauthorized)
	wantStatus(t, b.login(e.srv.URL, "root", "password1"), http.StatusOK)
	wantStatus(t, b.do(http.MethodPost, e.srv.URL+"/api/v1/users", apiv1.CreateUserRequest{Name: "kim", Role: auth.RoleViewer, Password: "kims-password"},
		CSRFHeader, b.csrf), http.StatusCreated)
	wantStatus(t, b.do(http.MethodDelete, e.srv.URL+"/api/v1/users/kim", nil, CSRFHeader, b.csrf), http.StatusNoContent)
	wantStatus(t, b.do(http.MethodPost, e.srv.URL+"/api/v1/logout", nil, CSRFHeader, b.csrf), http.StatusNoContent)

	want := []string{
		"anonymous@127.0.0.1 login user:root denied: invalid username or password",
		"user:root login user:root ok",
		"user:root user.create user:kim ok",
		"user:root user.delete user:kim ok",
		"user:root logout user:root ok",
	}
	got := auditRecords(t, ctx, js, len(want), "password1", "kims-password", b.csrf)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("audit records:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// auditRecords waits until the events stream holds at least n records and
// returns them described by [describeAction]; a record holding any of
// secrets fails the test.
func auditRecords(t *testing.T, ctx context.Context, js jetstream.JetStream, n int, secrets ...string) []string {
	t.Helper()
	stream, err := js.Stream(ctx, event.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	eventually(t, 10*time.Second, "the records reach the events stream", func() bool {
		got = nil
		info, err := stream.Info(ctx)
		if err != nil {
			return false
		}
		for seq := uint64(1); seq <= info.State.LastSeq; seq++ {
			m, err := stream.GetMsg(ctx, seq)
			if err != nil {
				continue
			}
			for _, s := range secrets {
				if strings.Contains(string(m.Data), s) {
					t.Fatalf("an audit record holds a secret: %s", m.Data)
				}
			}
			got = append(got, describeAction(t, m))
		}
		return len(got) >= n
	})
	return got
}

func describeAction(t *testing.T, m *jetstream.RawStreamMsg) string {
	t.Helper()
	ce, err := event.FromMsg(&nats.Msg{Subject: m.Subject, Header: m.Header, Data: m.Data})
	if err != nil {
		t.Fatalf("decode %s: %v", m.Data, err)
	}
	if ce.Type() != event.TypeAPIAction {
		return "type " + ce.Type()
	}
	var a event.Action
	if err := json.Unmarshal(ce.Data(), &a); err != nil {
		t.Fatalf("decode %s: %v", ce.Data(), err)
	}
	return strings.Join([]string{a.Actor, a.Action, a.Target, a.Outcome}, " ")
}
