package store

import (
	"fmt"
	"strconv"
	"strings"
)

// Both stores keep the same table; these helpers are shared.

const recordColumns = "seq, hash, prev_hash, stream, stream_seq, source, event_id, type, time_ns, subject, run_id, step_id, attempt, pipeline, actor, data, rejected, reason, received_ns"

// scanner is satisfied by *sql.Rows, *sql.Row and pgx.Rows.
type scanner interface{ Scan(dest ...any) error }

func scanRecord(s scanner, r *Record) error {
	var streamSeq, timeNs, recvNs, attempt int64
	var data []byte
	if err := s.Scan(&r.Seq, &r.Hash, &r.PrevHash, &r.Stream, &streamSeq, &r.Source, &r.ID, &r.Type, &timeNs,
		&r.Subject, &r.RunID, &r.StepID, &attempt, &r.Pipeline, &r.Actor, &data, &r.Rejected, &r.Reason, &recvNs); err != nil {
		return err
	}
	r.StreamSeq = uint64(streamSeq)
	r.Time = fromNanos(timeNs)
	r.ReceivedAt = fromNanos(recvNs)
	r.Attempt = int(attempt)
	if len(data) == 0 {
		data = nil
	}
	r.Data = data
	return nil
}

// recordArgs lists r's column values in recordColumns order.
func recordArgs(r *Record, rejected any) []any {
	data := []byte(r.Data)
	if data == nil {
		data = []byte{}
	}
	return []any{r.Seq, r.Hash, r.PrevHash, r.Stream, int64(r.StreamSeq), r.Source, r.ID, r.Type, toNanos(r.Time),
		r.Subject, r.RunID, r.StepID, int64(r.Attempt), r.Pipeline, r.Actor, data, rejected, r.Reason, toNanos(r.ReceivedAt)}
}

// queryBuilder builds the SELECT of a [Filter] with the placeholder style
// of one database.
type queryBuilder struct {
	ph    func(n int) string
	where []string
	args  []any
}

func (q *queryBuilder) add(cond string, args ...any) {
	for _, a := range args {
		q.args = append(q.args, a)
		cond = strings.Replace(cond, "?", q.ph(len(q.args)), 1)
	}
	q.where = append(q.where, cond)
}

// dialect is what differs between the databases in a query.
type dialect struct {
	// ph is the n-th placeholder.
	ph func(n int) string
	// noIndex wraps a column so the planner does not pick its index (SQLite
	// has no statistics to choose by; PostgreSQL has them).
	noIndex func(col string) string
}

var (
	sqliteDialect   = dialect{ph: func(int) string { return "?" }, noIndex: func(c string) string { return "+" + c }}
	postgresDialect = dialect{ph: func(n int) string { return "$" + strconv.Itoa(n) }, noIndex: func(c string) string { return c }}
)

// selectPage returns the query for one page of f after seq, asking for one
// more row than the page holds so the caller knows whether a next page
// exists. The most selective filter drives the index: run, then actor,
// then pipeline, then type.
func selectPage(f Filter, after int64, d dialect) (string, []any) {
	q := &queryBuilder{ph: d.ph}
	q.add("seq > ?", after)
	led := false
	col := func(c string) string {
		if led {
			return d.noIndex(c)
		}
		led = true
		return c
	}
	if f.RunID != "" {
		q.add(col("run_id")+" = ?", f.RunID)
	}
	if f.Actor != "" {
		// The literal "<> ''" lets the planner use the partial index.
		c := col("actor")
		q.add(c+" = ? AND "+c+" <> ''", f.Actor)
	}
	if f.Pipeline != "" {
		c := col("pipeline")
		run := "run_id"
		if c != "pipeline" {
			run = d.noIndex(run)
		}
		q.add("(("+c+" = ? AND "+c+" <> '') OR "+run+" IN (SELECT run_id FROM audit_runs WHERE pipeline = ?))", f.Pipeline, f.Pipeline)
	}
	if f.Type != "" {
		q.add(col("type")+" = ?", f.Type)
	}
	if f.StepID != "" {
		q.add(d.noIndex("step_id")+" = ?", f.StepID)
	}
	if !f.Since.IsZero() {
		q.add("time_ns >= ?", toNanos(f.Since))
	}
	if !f.Until.IsZero() {
		q.add("time_ns < ?", toNanos(f.Until))
	}
	sql := "SELECT " + recordColumns + " FROM audit_records WHERE " + strings.Join(q.where, " AND ") +
		" ORDER BY seq LIMIT " + strconv.Itoa(f.limit()+1)
	return sql, q.args
}

// recordRows is satisfied by *sql.Rows and pgx.Rows.
type recordRows interface {
	scanner
	Next() bool
	Err() error
}

// readPage reads the rows of a selectPage query into a Page of at most
// limit records; the caller closes rows.
func readPage(rows recordRows, limit int) (Page, error) {
	recs := make([]Record, 0, min(limit+1, 256))
	for rows.Next() {
		var r Record
		if err := scanRecord(rows, &r); err != nil {
			return Page{}, fmt.Errorf("query audit records: %w", err)
		}
		recs = append(recs, r)
	}
	if err := rows.Err(); err != nil {
		return Page{}, fmt.Errorf("query audit records: %w", err)
	}
	return page(recs, limit), nil
}

// page turns up to limit+1 rows into a Page.
func page(recs []Record, limit int) Page {
	p := Page{Records: recs}
	if p.Records == nil {
		p.Records = []Record{}
	}
	if len(recs) > limit {
		p.Records = recs[:limit]
		p.NextCursor = EncodeCursor(recs[limit-1].Seq)
	}
	return p
}
