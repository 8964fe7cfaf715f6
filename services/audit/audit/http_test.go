package audit

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/natsutil/natstest"
	"github.com/ansflow/ansflow/services/audit/store"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// seed stores 3 runs of 4 events of pipeline p and one action of bob.
func seed(t *testing.T, st store.Store) {
	t.Helper()
	var rs []store.Record
	for i := range 12 {
		run := fmt.Sprintf("run-%d", i%3)
		r := store.Record{Source: "test", ID: fmt.Sprint(i), Type: event.TypeStepStarted, Time: t0.Add(time.Duration(i) * time.Minute),
			Subject: run + "/s/1", RunID: run, StepID: "s", Attempt: 1, Data: json.RawMessage(`{"run_id":"` + run + `"}`)}
		if i < 3 {
			r.Type, r.Pipeline, r.StepID = event.TypeRunCreated, "p", ""
		}
		rs = append(rs, r)
	}
	rs = append(rs, store.Record{Source: "test", ID: "act", Type: event.TypeAPIAction, Time: t0.Add(time.Hour), Actor: "bob",
		Data: json.RawMessage(`{"actor":"bob","action":"pipeline.update","target":"p","outcome":"ok"}`)})
	if _, err := st.Append(context.Background(), rs); err != nil {
		t.Fatal(err)
	}
}

// testTokens are tokens of a real tokens bucket that the guard of
// [guarded] reads (never writes), as the standalone service does.
type testTokens struct {
	guard           *auth.Guard
	viewer, limited string
}

func guarded(t *testing.T) *testTokens {
	t.Helper()
	ns := natstest.Run(t)
	// The pipeline service owns the bucket; the audit side only reads it.
	w, err := auth.OpenTokenStore(context.Background(), ns.JS, 1)
	if err != nil {
		t.Fatal(err)
	}
	mk := func(role auth.Role, pipelines ...string) string {
		secret, _, err := w.Create(context.Background(), auth.TokenSpec{Role: role, Pipelines: pipelines}, auth.System)
		if err != nil {
			t.Fatal(err)
		}
		return secret
	}
	return &testTokens{
		guard:   &auth.Guard{Authenticators: []auth.Authenticator{auth.Bearer{Tokens: auth.ReadTokenStore(ns.JS)}}},
		viewer:  mk(auth.RoleViewer),
		limited: mk(auth.RoleOperator, "p"),
	}
}

// bearer is the token getJSON sends.
var bearer string

func getJSON(t *testing.T, url string, status int, out any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != status {
		t.Fatalf("GET %s: status %d, want %d", url, resp.StatusCode, status)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("GET %s: content type %q", url, ct)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

func TestHTTPQueryAndVerify(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.db")
	st, err := OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	seed(t, st)
	tt := guarded(t)
	srv := httptest.NewServer(NewHandler(st, zap.NewNop(), tt.guard))
	defer srv.Close()
	bearer = tt.viewer
	defer func() { bearer = "" }()

	cases := []struct {
		query string
		want  int
	}{
		{"", 13},
		{"run=run-1", 4},
		{"pipeline=p", 12},
		{"run=run-1&step=s", 3},
		{"actor=bob", 1},
		{"type=" + url.QueryEscape(event.TypeRunCreated), 3},
		{"since=2025-03-01T12:05:00Z&until=2025-03-01T12:08:00Z", 3},
		{"since=2025-03-01&until=2025-03-02", 13},
	}
	for _, c := range cases {
		// Walk the pages two records at a time.
		var seqs []int64
		cursor := ""
		for range 20 {
			var p store.Page
			getJSON(t, srv.URL+PathQuery+"?limit=2&"+c.query+"&cursor="+cursor, http.StatusOK, &p)
			for _, r := range p.Records {
				seqs = append(seqs, r.Seq)
			}
			if cursor = p.NextCursor; cursor == "" {
				break
			}
		}
		if len(seqs) != c.want {
			t.Errorf("?%s: %d records %v, want %d", c.query, len(seqs), seqs, c.want)
		}
	}
	var p store.Page
	getJSON(t, srv.URL+PathQuery+"?actor=bob", http.StatusOK, &p)
	if r := p.Records[0]; r.Type != event.TypeAPIAction || r.Actor != "bob" || !r.Time.Equal(t0.Add(time.Hour)) || !bytes.Contains(r.Data, []byte("pipeline.update")) {
		t.Fatalf("action record %+v", r)
	}
	for _, bad := range []string{"cursor=nope", "since=yesterday", "limit=-1", "until=3x"} {
		var e errorBody
		getJSON(t, srv.URL+PathQuery+"?"+bad, http.StatusBadRequest, &e)
		if e.Error == "" {
			t.Errorf("?%s: empty error", bad)
		}
	}

	var res store.VerifyResult
	getJSON(t, srv.URL+PathVerify, http.StatusOK, &res)
	if !res.OK || res.Records != 13 {
		t.Fatalf("verify = %+v", res)
	}

	// Who may read: no token or an unknown one is 401; a grant limited to
	// pipeline p reads p's records only, and not the whole chain.
	for _, c := range []struct {
		token, query string
		want         int
	}{
		{"", "", http.StatusUnauthorized},
		{"ansf_not-a-token-at-all-but-long-enough", "", http.StatusUnauthorized},
		{tt.limited, "", http.StatusForbidden},
		{tt.limited, "?pipeline=other", http.StatusForbidden},
	} {
		bearer = c.token
		var e errorBody
		getJSON(t, srv.URL+PathQuery+c.query, c.want, &e)
		if e.Error == "" || strings.Contains(e.Error, tt.limited) {
			t.Errorf("token %.8s… ?%s: error %q", c.token, c.query, e.Error)
		}
	}
	bearer = tt.limited
	getJSON(t, srv.URL+PathQuery+"?pipeline=p", http.StatusOK, &p)
	if len(p.Records) != 12 {
		t.Errorf("limited grant on p: %d records, want 12", len(p.Records))
	}
	var e errorBody
	getJSON(t, srv.URL+PathVerify, http.StatusForbidden, &e)
	bearer = tt.viewer

	// The client speaks the same API.
	c := NewClient(srv.URL+"/", &http.Client{Transport: &auth.BearerTransport{Token: tt.viewer}})
	cp, err := c.Query(context.Background(), store.Filter{RunID: "run-2", Since: t0, Limit: 10})
	if err != nil || len(cp.Records) != 4 {
		t.Fatalf("client query: %d records, %v", len(cp.Records), err)
	}
	var he *HTTPError
	if _, err := c.Query(context.Background(), store.Filter{Cursor: "nope"}); !errors.As(err, &he) || he.Status != http.StatusBadRequest {
		t.Fatalf("client query with bad cursor: %v", err)
	}

	// Tampering with the file shows in the API.
	raw, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if _, err := raw.Exec(`UPDATE audit_records SET data = '{"actor":"mallory"}' WHERE seq = 13`); err != nil {
		t.Fatal(err)
	}
	res, err = c.Verify(context.Background())
	if err != nil || res.OK || res.Bad == nil || res.Bad.Seq != 13 || res.Bad.ID != "act" {
		t.Fatalf("client verify after tampering = %+v (%+v), %v", res, res.Bad, err)
	}
	if !errors.Is(res.Err(), store.ErrChainBroken) {
		t.Fatalf("Err() = %v", res.Err())
	}
}

func TestParseTime(t *testing.T) {
	now := time.Date(2025, 3, 10, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		in   string
		want time.Time
	}{
		{"", time.Time{}},
		{"2025-03-01T12:00:00Z", t0},
		{"2025-03-01T13:00:00+01:00", t0},
		{"2025-03-01T12:00:00", t0},
		{"2025-03-01 12:00:00", t0},
		{"2025-03-01", t0.Add(-12 * time.Hour)},
		{"90m", now.Add(-90 * time.Minute)},
		{"2d", now.Add(-48 * time.Hour)},
	}
	for _, c := range cases {
		got, err := ParseTime(c.in, now)
		if err != nil || !got.Equal(c.want) {
			t.Errorf("ParseTime(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"yesterday", "-5m", "2025-13-01"} {
		if _, err := ParseTime(bad, now); !errors.Is(err, ErrBadParameter) {
			t.Errorf("ParseTime(%q) = %v, want ErrBadParameter", bad, err)
		}
	}
}

func TestFilterValuesRoundTrip(t *testing.T) {
	f := store.Filter{RunID: "r", Pipeline: "p", StepID: "s", Actor: "a", Type: "t", Since: t0, Until: t0.Add(time.Hour), Limit: 5, Cursor: "c"}
	got, err := ParseFilter(FilterValues(f), time.Now())
	if err != nil || got != f {
		t.Fatalf("round trip = %+v, %v; want %+v", got, err, f)
	}
}

func TestWriteRecords(t *testing.T) {
	st, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	seed(t, st)
	if _, err := st.Append(context.Background(), []store.Record{{Source: "nats:X", ID: "1@2", Rejected: true, Reason: "not a CloudEvent:\tno header"}}); err != nil {
		t.Fatal(err)
	}
	p, err := st.Query(context.Background(), store.Filter{Limit: 20})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := WriteRecords(&b, FormatTable, store.Page{Records: p.Records[12:], NextCursor: "abc"}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "SEQ") || !strings.Contains(lines[1], "api.action") ||
		!strings.Contains(lines[1], "bob") || !strings.Contains(lines[1], `"action":"pipeline.update"`) ||
		!strings.Contains(lines[2], "REJECTED: not a CloudEvent: no header") || lines[3] != "next cursor: abc" {
		t.Fatalf("table:\n%s", b.String())
	}

	b.Reset()
	if err := WriteRecords(&b, FormatJSON, p); err != nil {
		t.Fatal(err)
	}
	var back store.Page
	if err := json.Unmarshal(b.Bytes(), &back); err != nil || len(back.Records) != 14 || back.Records[3].Hash != p.Records[3].Hash {
		t.Fatalf("json output does not read back: %v", err)
	}

	b.Reset()
	if err := WriteRecords(&b, FormatJSONL, p); err != nil {
		t.Fatal(err)
	}
	for i, line := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		var r store.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil || r.Seq != int64(i+1) {
			t.Fatalf("jsonl line %d: %q: %v", i, line, err)
		}
	}

	b.Reset()
	if err := WriteRecords(&b, FormatJSON, store.Page{}); err != nil || !strings.Contains(b.String(), `"records": []`) {
		t.Fatalf("empty json page: %q, %v", b.String(), err)
	}
	if err := WriteRecords(&b, "yaml", p); err == nil {
		t.Fatal("WriteRecords(yaml) = nil")
	}
	if f, err := ParseFormat("JSONL"); err != nil || f != FormatJSONL {
		t.Fatalf("ParseFormat(JSONL) = %q, %v", f, err)
	}
	if _, err := ParseFormat("xml"); err == nil {
		t.Fatal("ParseFormat(xml) = nil")
	}
}

func TestWriteVerify(t *testing.T) {
	ok := store.VerifyResult{OK: true, Records: 3, FirstSeq: 5, LastSeq: 7, HeadHash: "abc",
		Checkpoint: &store.Checkpoint{FirstSeq: 1, LastSeq: 5, Count: 5, PrunedAt: t0}}
	bad := store.VerifyResult{Records: 2, Bad: &store.Mismatch{Seq: 6, Source: "s", ID: "i", Type: "t", Reason: "content does not match its hash: the record was edited"}}
	cases := []struct {
		res  store.VerifyResult
		f    Format
		want []string
	}{
		{ok, FormatTable, []string{"audit chain OK: 3 records verified (seq 5..7), head abc", "5 records (seq 1..5) pruned at 2025-03-01T12:00:00Z"}},
		{bad, FormatTable, []string{"audit chain BROKEN at seq 6 (source s, id i, type t): content does not match", "2 records checked"}},
		{store.VerifyResult{OK: true}, FormatTable, []string{"no records"}},
		{bad, FormatJSON, []string{`"ok": false`, `"first_bad": {`, `"seq": 6`}},
		{ok, FormatJSONL, []string{`{"ok":true,"records":3,`}},
	}
	for _, c := range cases {
		var b bytes.Buffer
		if err := WriteVerify(&b, c.f, c.res); err != nil {
			t.Fatal(err)
		}
		for _, w := range c.want {
			if !strings.Contains(b.String(), w) {
				t.Errorf("WriteVerify(%s) = %q, want it to contain %q", c.f, b.String(), w)
			}
		}
	}
}

func TestOpenStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	st, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	seed(t, st)
	st.Close()
	if _, err := os.Stat(filepath.Join(dir, DBFile)); err != nil {
		t.Fatalf("data dir store: %v", err)
	}
	// The same file by path, by sqlite: prefix, and again by directory.
	for _, name := range []string{filepath.Join(dir, DBFile), "sqlite:" + filepath.Join(dir, DBFile), dir} {
		st, err := OpenStore(name)
		if err != nil {
			t.Fatalf("OpenStore(%q): %v", name, err)
		}
		p, err := st.Query(context.Background(), store.Filter{})
		st.Close()
		if err != nil || len(p.Records) != 13 {
			t.Fatalf("OpenStore(%q): %d records, %v", name, len(p.Records), err)
		}
	}
	if _, err := OpenStore(""); err == nil {
		t.Fatal("OpenStore(\"\") = nil error")
	}
}

func TestFilterFlags(t *testing.T) {
	fs := flag.NewFlagSet("query", flag.ContinueOnError)
	build := FilterFlags(fs)
	if err := fs.Parse([]string{"--run", "r", "--pipeline", "p", "--step", "s", "--actor", "a", "--type", "t",
		"--since", "2025-03-01T12:00:00Z", "--until", "1h", "--limit", "7", "--cursor", "c"}); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2025, 3, 2, 0, 0, 0, 0, time.UTC)
	f, err := build(now)
	want := store.Filter{RunID: "r", Pipeline: "p", StepID: "s", Actor: "a", Type: "t", Since: t0, Until: now.Add(-time.Hour), Limit: 7, Cursor: "c"}
	if err != nil || f != want {
		t.Fatalf("filter = %+v, %v; want %+v", f, err, want)
	}
	fs = flag.NewFlagSet("query", flag.ContinueOnError)
	build = FilterFlags(fs)
	_ = fs.Parse([]string{"--since", "soon"})
	if _, err := build(now); !errors.Is(err, ErrBadParameter) {
		t.Fatalf("--since soon: %v", err)
	}
	if f, err := ParseFormat("text"); err != nil || f != FormatTable {
		t.Fatalf("ParseFormat(text) = %q, %v", f, err)
	}
}
