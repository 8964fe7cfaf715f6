package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// backend opens a fresh, empty store for one test and offers raw SQL on
// the same database, to play the part of someone editing it behind the
// store's back. exec takes "?" placeholders.
type backend struct {
	name string
	open func(t *testing.T) (Store, func(t *testing.T, query string, args ...any))
}

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// rec builds the i-th test record of run.
func rec(i int, run string) Record {
	return Record{
		Stream: "ANSFLOW_EVENTS", StreamSeq: uint64(i),
		Source: "test/source", ID: fmt.Sprintf("%s-%d", run, i), Type: "io.ansflow.step.started.v1",
		Time: t0.Add(time.Duration(i) * time.Second), Subject: run + "/s1/1",
		RunID: run, StepID: "s1", Attempt: 1,
		Data:       json.RawMessage(fmt.Sprintf(`{"run_id":%q,"n":%d}`, run, i)),
		ReceivedAt: t0.Add(time.Duration(i) * time.Second),
	}
}

func recs(from, to int, run string) []Record {
	var out []Record
	for i := from; i <= to; i++ {
		out = append(out, rec(i, run))
	}
	return out
}

func mustAppend(t *testing.T, s Store, rs []Record) int {
	t.Helper()
	n, err := s.Append(context.Background(), rs)
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	return n
}

// all reads every record through paginated queries of f.
func all(t *testing.T, s Store, f Filter) []Record {
	t.Helper()
	var out []Record
	for i := 0; ; i++ {
		p, err := s.Query(context.Background(), f)
		if err != nil {
			t.Fatalf("Query(%+v): %v", f, err)
		}
		out = append(out, p.Records...)
		if p.NextCursor == "" {
			return out
		}
		if i > 10000 {
			t.Fatal("pagination does not end")
		}
		f.Cursor = p.NextCursor
	}
}

func verify(t *testing.T, s Store) VerifyResult {
	t.Helper()
	res, err := s.Verify(context.Background())
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return res
}

func wantOK(t *testing.T, res VerifyResult, records int64) {
	t.Helper()
	if !res.OK || res.Bad != nil || res.Err() != nil {
		t.Fatalf("Verify = %+v (bad %+v), want OK", res, res.Bad)
	}
	if res.Records != records {
		t.Fatalf("Verify checked %d records, want %d", res.Records, records)
	}
}

func wantBad(t *testing.T, res VerifyResult, seq int64, reason string) {
	t.Helper()
	if res.OK || res.Bad == nil {
		t.Fatalf("Verify = OK after tampering, want first bad record %d", seq)
	}
	if res.Bad.Seq != seq || !strings.Contains(res.Bad.Reason, reason) {
		t.Fatalf("first bad record = %d (%s), want %d (%s)", res.Bad.Seq, res.Bad.Reason, seq, reason)
	}
	if err := res.Err(); !errors.Is(err, ErrChainBroken) {
		t.Fatalf("Err() = %v, want ErrChainBroken", err)
	}
}

// runContract runs the behaviour every Store must have.
func runContract(t *testing.T, b backend) {
	t.Run("Writable", func(t *testing.T) {
		s, _ := b.open(t)
		mustAppend(t, s, recs(1, 3, "w"))

		if err := s.Writable(context.Background()); err != nil {
			t.Fatalf("Writable on an open store: %v", err)
		}
		if res := verify(t, s); !res.OK || res.Records != 3 {
			t.Fatalf("after Writable: %+v, want the 3 records verified", res)
		}
		s.Close()
		if err := s.Writable(context.Background()); err == nil {
			t.Fatal("Writable on a closed store = nil")
		}
	})
	t.Run("AppendChains", func(t *testing.T) {
		s, _ := b.open(t)
		wantOK(t, verify(t, s), 0)
		if n := mustAppend(t, s, recs(1, 3, "r1")); n != 3 {
			t.Fatalf("stored %d, want 3", n)
		}
		mustAppend(t, s, recs(4, 5, "r1"))
		got := all(t, s, Filter{})
		if len(got) != 5 {
			t.Fatalf("got %d records, want 5", len(got))
		}
		prev := GenesisHash
		for i, r := range got {
			if r.Seq != int64(i+1) || r.PrevHash != prev || len(r.Hash) != 64 {
				t.Fatalf("record %d: seq %d prev %s hash %s, want seq %d prev %s", i, r.Seq, r.PrevHash, r.Hash, i+1, prev)
			}
			prev = r.Hash
			want := rec(i+1, "r1")
			if r.ID != want.ID || !r.Time.Equal(want.Time) || string(r.Data) != string(want.Data) || r.StepID != "s1" || r.Attempt != 1 || r.StreamSeq != want.StreamSeq {
				t.Fatalf("record %d = %+v, want fields of %+v", i, r, want)
			}
		}
		res := verify(t, s)
		wantOK(t, res, 5)
		if res.LastSeq != 5 || res.HeadHash != got[4].Hash {
			t.Fatalf("verify head = %d %s, want 5 %s", res.LastSeq, res.HeadHash, got[4].Hash)
		}
	})

	t.Run("DedupeOnSourceAndID", func(t *testing.T) {
		s, _ := b.open(t)
		mustAppend(t, s, recs(1, 3, "r1"))
		// A redelivery, a duplicate inside one batch and a new record.
		batch := append(recs(2, 3, "r1"), rec(4, "r1"), rec(4, "r1"))
		if n := mustAppend(t, s, batch); n != 1 {
			t.Fatalf("stored %d of a batch with one new record, want 1", n)
		}
		other := rec(1, "r1")
		other.Source = "other/source" // same id, other source: a distinct event
		if n := mustAppend(t, s, []Record{other}); n != 1 {
			t.Fatalf("stored %d, want 1", n)
		}
		got := all(t, s, Filter{})
		if len(got) != 5 || got[4].Seq != 5 {
			t.Fatalf("got %d records (last seq %d), want 5 without gaps", len(got), got[len(got)-1].Seq)
		}
		wantOK(t, verify(t, s), 5)
	})

	t.Run("AppendRejectsInvalid", func(t *testing.T) {
		s, _ := b.open(t)
		bad := rec(1, "r1")
		bad.Data = json.RawMessage(`{not json`)
		if _, err := s.Append(context.Background(), []Record{rec(2, "r1"), bad}); !errors.Is(err, ErrInvalidRecord) {
			t.Fatalf("Append(invalid data) = %v, want ErrInvalidRecord", err)
		}
		noID := rec(3, "r1")
		noID.ID = ""
		if _, err := s.Append(context.Background(), []Record{noID}); !errors.Is(err, ErrInvalidRecord) {
			t.Fatalf("Append(no id) = %v, want ErrInvalidRecord", err)
		}
		if got := all(t, s, Filter{}); len(got) != 0 {
			t.Fatalf("a failed append stored %d records", len(got))
		}
	})

	t.Run("TextIsNormalised", func(t *testing.T) {
		s, _ := b.open(t)
		r := rec(1, "r1")
		r.Reason = "nul\x00 and bad utf8 \xff"
		r.Actor = "ali\x00ce"
		mustAppend(t, s, []Record{r})
		got := all(t, s, Filter{})
		if got[0].Actor != "alice" || got[0].Reason != "nul and bad utf8 \uFFFD" {
			t.Fatalf("stored actor %q reason %q", got[0].Actor, got[0].Reason)
		}
		wantOK(t, verify(t, s), 1)
	})

	t.Run("QueryFilters", func(t *testing.T) {
		s, _ := b.open(t)
		var rs []Record
		// run r1 of pipeline p1: run.created names the pipeline, later
		// step events do not.
		created := rec(1, "r1")
		created.Type, created.Pipeline, created.Actor, created.StepID = "io.ansflow.run.created.v1", "p1", "alice", ""
		rs = append(rs, created)
		rs = append(rs, recs(2, 4, "r1")...)
		for i := 5; i <= 7; i++ {
			r := rec(i, "r2")
			r.StepID = "s2"
			rs = append(rs, r)
		}
		action := rec(8, "")
		action.Type, action.Actor, action.RunID, action.StepID = "io.ansflow.api.action.v1", "bob", "", ""
		rs = append(rs, action)
		mustAppend(t, s, rs)
		cases := []struct {
			name string
			f    Filter
			want []int64
		}{
			{"run", Filter{RunID: "r1"}, []int64{1, 2, 3, 4}},
			{"pipeline via run", Filter{Pipeline: "p1"}, []int64{1, 2, 3, 4}},
			{"step", Filter{StepID: "s2"}, []int64{5, 6, 7}},
			{"run and step", Filter{RunID: "r1", StepID: "s1"}, []int64{2, 3, 4}},
			{"actor", Filter{Actor: "bob"}, []int64{8}},
			{"type", Filter{Type: "io.ansflow.run.created.v1"}, []int64{1}},
			{"since until", Filter{Since: t0.Add(3 * time.Second), Until: t0.Add(6 * time.Second)}, []int64{3, 4, 5}},
			{"unknown run", Filter{RunID: "nope"}, nil},
			{"run and pipeline", Filter{RunID: "r1", Pipeline: "p1"}, []int64{1, 2, 3, 4}},
			{"run and type", Filter{RunID: "r2", Type: "io.ansflow.step.started.v1"}, []int64{5, 6, 7}},
			{"actor and type", Filter{Actor: "alice", Type: "io.ansflow.run.created.v1"}, []int64{1}},
			{"pipeline and type", Filter{Pipeline: "p1", Type: "io.ansflow.step.started.v1"}, []int64{2, 3, 4}},
			{"everything", Filter{RunID: "r1", Pipeline: "p1", StepID: "s1", Actor: "", Type: "io.ansflow.step.started.v1", Since: t0.Add(3 * time.Second)}, []int64{3, 4}},
		}
		for _, c := range cases {
			for _, limit := range []int{0, 1, 2} {
				f := c.f
				f.Limit = limit
				var got []int64
				for _, r := range all(t, s, f) {
					got = append(got, r.Seq)
				}
				if fmt.Sprint(got) != fmt.Sprint(c.want) {
					t.Errorf("%s (limit %d): seqs %v, want %v", c.name, limit, got, c.want)
				}
			}
		}
		p, err := s.Query(context.Background(), Filter{Limit: 3})
		if err != nil || len(p.Records) != 3 || p.NextCursor == "" {
			t.Fatalf("first page = %d records, cursor %q, %v", len(p.Records), p.NextCursor, err)
		}
		p, err = s.Query(context.Background(), Filter{Limit: 5, Cursor: p.NextCursor})
		if err != nil || len(p.Records) != 5 || p.NextCursor != "" || p.Records[0].Seq != 4 {
			t.Fatalf("last page = %+v, %v", p, err)
		}
		if _, err := s.Query(context.Background(), Filter{Cursor: "garbage!"}); !errors.Is(err, ErrBadCursor) {
			t.Fatalf("Query(bad cursor) = %v, want ErrBadCursor", err)
		}
	})

	t.Run("TamperEditDetected", func(t *testing.T) {
		s, exec := b.open(t)
		mustAppend(t, s, recs(1, 10, "r1"))
		exec(t, `UPDATE audit_records SET data = ? WHERE seq = 5`, []byte(`{"run_id":"r1","n":500}`))
		wantBad(t, verify(t, s), 5, "edited")
	})

	t.Run("TamperEditOtherColumnDetected", func(t *testing.T) {
		s, exec := b.open(t)
		mustAppend(t, s, recs(1, 10, "r1"))
		exec(t, `UPDATE audit_records SET actor = 'mallory' WHERE seq = 7`)
		wantBad(t, verify(t, s), 7, "edited")
	})

	t.Run("TamperRehashDetected", func(t *testing.T) {
		// Editing a record and fixing its own hash breaks the next link.
		s, exec := b.open(t)
		mustAppend(t, s, recs(1, 10, "r1"))
		r := all(t, s, Filter{})[4]
		r.Actor = "mallory"
		var h hasher
		exec(t, `UPDATE audit_records SET actor = 'mallory', hash = ? WHERE seq = 5`, h.recordHash(&r))
		wantBad(t, verify(t, s), 6, "prev_hash")
	})

	t.Run("TamperDeleteDetected", func(t *testing.T) {
		s, exec := b.open(t)
		mustAppend(t, s, recs(1, 10, "r1"))
		exec(t, `DELETE FROM audit_records WHERE seq = 5`)
		wantBad(t, verify(t, s), 6, "missing")
	})

	t.Run("TamperDeleteFirstDetected", func(t *testing.T) {
		s, exec := b.open(t)
		mustAppend(t, s, recs(1, 10, "r1"))
		exec(t, `DELETE FROM audit_records WHERE seq = 1`)
		wantBad(t, verify(t, s), 2, "missing")
	})

	t.Run("TamperDeleteLastDetected", func(t *testing.T) {
		s, exec := b.open(t)
		mustAppend(t, s, recs(1, 10, "r1"))
		exec(t, `DELETE FROM audit_records WHERE seq = 10`)
		wantBad(t, verify(t, s), 10, "missing")
		// Appends go on from the recorded head, so the gap stays visible.
		mustAppend(t, s, recs(11, 11, "r1"))
		wantBad(t, verify(t, s), 11, "missing")
	})

	t.Run("TamperSwapDetected", func(t *testing.T) {
		s, exec := b.open(t)
		mustAppend(t, s, recs(1, 10, "r1"))
		exec(t, `UPDATE audit_records SET seq = -1 WHERE seq = 5`)
		exec(t, `UPDATE audit_records SET seq = 5 WHERE seq = 6`)
		exec(t, `UPDATE audit_records SET seq = 6 WHERE seq = -1`)
		wantBad(t, verify(t, s), 5, "prev_hash")
	})

	t.Run("TamperReorderContentDetected", func(t *testing.T) {
		// Swap the content of two records but keep every hash column.
		s, exec := b.open(t)
		mustAppend(t, s, recs(1, 10, "r1"))
		exec(t, `UPDATE audit_records SET event_id = 'tmp' WHERE seq = 3`)
		exec(t, `UPDATE audit_records SET event_id = 'r1-3', data = ? WHERE seq = 4`, []byte(rec(3, "r1").Data))
		exec(t, `UPDATE audit_records SET event_id = 'r1-4', data = ? WHERE seq = 3`, []byte(rec(4, "r1").Data))
		wantBad(t, verify(t, s), 3, "edited")
	})

	t.Run("HeadRowLostStillAppends", func(t *testing.T) {
		s, exec := b.open(t)
		mustAppend(t, s, recs(1, 3, "r1"))
		exec(t, `DELETE FROM audit_head`)
		mustAppend(t, s, recs(4, 5, "r1"))
		wantOK(t, verify(t, s), 5)
	})

	t.Run("PruneKeepsVerifiability", func(t *testing.T) {
		s, exec := b.open(t)
		ctx := context.Background()
		mustAppend(t, s, recs(1, 10, "r1"))
		res, err := s.Prune(ctx, PruneOptions{BeforeSeq: 6})
		if err != nil {
			t.Fatalf("Prune: %v", err)
		}
		if res.Pruned != 5 || res.Checkpoint == nil || res.Checkpoint.Seq != 5 {
			t.Fatalf("Prune = %+v, want 5 records pruned into a checkpoint at seq 5", res)
		}
		v := verify(t, s)
		wantOK(t, v, 6)
		if v.Checkpoint == nil || v.Checkpoint.FirstSeq != 1 || v.Checkpoint.LastSeq != 5 || v.Checkpoint.Count != 5 {
			t.Fatalf("verify checkpoint = %+v", v.Checkpoint)
		}
		got := all(t, s, Filter{})
		if len(got) != 6 || !got[0].IsCheckpoint() || got[1].Seq != 6 {
			t.Fatalf("after prune: %d records, first %+v", len(got), got[0])
		}
		// Appends continue the chain; a second prune absorbs the first
		// checkpoint.
		mustAppend(t, s, recs(11, 12, "r1"))
		res, err = s.Prune(ctx, PruneOptions{BeforeSeq: 9})
		if err != nil || res.Pruned != 3 {
			t.Fatalf("second Prune = %+v, %v; want 3 pruned", res, err)
		}
		v = verify(t, s)
		wantOK(t, v, 5)
		if c := v.Checkpoint; c.FirstSeq != 1 || c.LastSeq != 8 || c.Count != 8 || c.PrevSeal == "" {
			t.Fatalf("second checkpoint = %+v", c)
		}
		// Nothing before the checkpoint: a no-op.
		if res, err := s.Prune(ctx, PruneOptions{BeforeSeq: 9}); err != nil || res.Pruned != 0 {
			t.Fatalf("repeated Prune = %+v, %v", res, err)
		}
		// By time: records received before record 11.
		if res, err := s.Prune(ctx, PruneOptions{Before: rec(11, "r1").ReceivedAt}); err != nil || res.Pruned != 2 {
			t.Fatalf("Prune(Before) = %+v, %v; want records 9 and 10 pruned", res, err)
		}
		wantOK(t, verify(t, s), 3)
		// The checkpoint itself is sealed.
		exec(t, `UPDATE audit_records SET data = ? WHERE seq = 10`, []byte(strings.Replace(string(all(t, s, Filter{})[0].Data), `"count":10`, `"count":3`, 1)))
		wantBad(t, verify(t, s), 10, "seal")
	})

	t.Run("PruneAll", func(t *testing.T) {
		s, _ := b.open(t)
		mustAppend(t, s, recs(1, 4, "r1"))
		if res, err := s.Prune(context.Background(), PruneOptions{Before: t0.Add(time.Hour)}); err != nil || res.Pruned != 4 {
			t.Fatalf("Prune(all) = %+v, %v", res, err)
		}
		wantOK(t, verify(t, s), 1)
		mustAppend(t, s, recs(5, 6, "r1"))
		wantOK(t, verify(t, s), 3)
	})

	t.Run("PruneRefusesBrokenChain", func(t *testing.T) {
		s, exec := b.open(t)
		mustAppend(t, s, recs(1, 10, "r1"))
		exec(t, `UPDATE audit_records SET actor = 'mallory' WHERE seq = 3`)
		if _, err := s.Prune(context.Background(), PruneOptions{BeforeSeq: 6}); !errors.Is(err, ErrChainBroken) {
			t.Fatalf("Prune over a tampered record = %v, want ErrChainBroken", err)
		}
		wantBad(t, verify(t, s), 3, "edited")
	})

	t.Run("ConcurrentAppends", func(t *testing.T) {
		s, _ := b.open(t)
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Workers overlap on half of their records.
				if _, err := s.Append(context.Background(), recs(w*10, w*10+19, "r")); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		wantOK(t, verify(t, s), 90)
	})
}

// TestCanonicalSQLMatchesGo checks that SQLite builds the same canonical
// bytes as the Go encoder, for awkward values too.
func TestCanonicalSQLMatchesGo(t *testing.T) {
	s, _ := sqliteBackend.open(t)
	odd := rec(2, "r:1")
	odd.Time = time.Date(1950, 1, 1, 0, 0, 0, 1, time.UTC) // negative nanoseconds
	odd.Data = nil
	odd.Rejected, odd.Reason = true, "ünïcode: 10:fake"
	odd.Actor = "日本"
	mustAppend(t, s, []Record{rec(1, "r1"), odd})
	sq := s.(*SQLite)
	rows, err := sq.r.Query("SELECT " + recordColumns + ", " + canonicalSQL + " FROM audit_records ORDER BY seq")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var r Record
		var canon []byte
		var streamSeq, timeNs, recvNs, attempt int64
		var data []byte
		if err := rows.Scan(&r.Seq, &r.Hash, &r.PrevHash, &r.Stream, &streamSeq, &r.Source, &r.ID, &r.Type, &timeNs,
			&r.Subject, &r.RunID, &r.StepID, &attempt, &r.Pipeline, &r.Actor, &data, &r.Rejected, &r.Reason, &recvNs, &canon); err != nil {
			t.Fatal(err)
		}
		r.StreamSeq, r.Time, r.ReceivedAt, r.Attempt, r.Data = uint64(streamSeq), fromNanos(timeNs), fromNanos(recvNs), int(attempt), data
		var h hasher
		h.canonical(&r)
		if string(h.buf) != string(canon) {
			t.Fatalf("seq %d:\nGo  %q\nSQL %q", r.Seq, h.buf, canon)
		}
	}
}
