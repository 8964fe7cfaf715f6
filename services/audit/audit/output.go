package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ansflow/ansflow/services/audit/store"
)

// DBFile is the name of the SQLite audit store inside a data directory.
const DBFile = "audit.db"

// OpenStore opens the audit store named by dsnOrDataDir: a PostgreSQL DSN
// (postgres://..., or key=value with host= or dbname=); a SQLite file
// ("sqlite:PATH", "file:PATH", or a path ending in .db, .sqlite or
// .sqlite3); or else a data directory, whose SQLite store is
// <dir>/audit.db (created if missing).
func OpenStore(dsnOrDataDir string) (store.Store, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := dsnOrDataDir
	switch {
	case s == "":
		return nil, fmt.Errorf("open audit store: no DSN or data directory given")
	case store.IsPostgresDSN(s), strings.HasPrefix(s, "sqlite:"), strings.HasPrefix(s, "file:"):
	case strings.HasSuffix(s, ".db"), strings.HasSuffix(s, ".sqlite"), strings.HasSuffix(s, ".sqlite3"):
	default:
		if fi, err := os.Stat(s); err == nil && fi.Mode().IsRegular() {
			break
		}
		s = filepath.Join(s, DBFile)
	}
	st, err := store.Open(ctx, s)
	if err != nil {
		return nil, fmt.Errorf("open audit store: %w", err)
	}
	return st, nil
}

// Format is an output format of [WriteRecords] and [WriteVerify].
type Format string

// Output formats.
const (
	FormatTable Format = "table"
	FormatJSON  Format = "json"
	FormatJSONL Format = "jsonl"
)

// ParseFormat reads an --output value; "" and "text" are [FormatTable].
func ParseFormat(s string) (Format, error) {
	switch f := Format(strings.ToLower(s)); f {
	case "", "text":
		return FormatTable, nil
	case FormatTable, FormatJSON, FormatJSONL:
		return f, nil
	}
	return "", fmt.Errorf("output format %q: want text (table), json or jsonl", s)
}

// WriteRecords prints a page of query results:
//   - table: one line per record (seq, time, type, subject, actor, data or
//     rejection reason, cut to fit), then "next cursor: C" when there are
//     more;
//   - json: the page as the REST API answers it, {"records", "next_cursor"};
//   - jsonl: one record per line and nothing else (the caller may show
//     p.NextCursor elsewhere, e.g. on stderr).
func WriteRecords(w io.Writer, f Format, p store.Page) error {
	switch f {
	case FormatJSON:
		if p.Records == nil {
			p.Records = []store.Record{}
		}
		return writeIndented(w, p)
	case FormatJSONL:
		enc := json.NewEncoder(w)
		for _, r := range p.Records {
			if err := enc.Encode(r); err != nil {
				return fmt.Errorf("write audit record %d: %w", r.Seq, err)
			}
		}
		return nil
	case FormatTable, "":
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tTIME\tTYPE\tSUBJECT\tACTOR\tDATA")
		for _, r := range p.Records {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", r.Seq, tableTime(r), shortType(r.Type),
				cell(r.Subject, 40), cell(r.Actor, 24), cell(summary(r), 100))
		}
		if err := tw.Flush(); err != nil {
			return fmt.Errorf("write audit records: %w", err)
		}
		if p.NextCursor != "" {
			if _, err := fmt.Fprintf(w, "next cursor: %s\n", p.NextCursor); err != nil {
				return fmt.Errorf("write audit records: %w", err)
			}
		}
		return nil
	}
	return fmt.Errorf("output format %q: want table, json or jsonl", f)
}

// WriteVerify prints the outcome of a verification: a sentence for table,
// the result as JSON (indented for json, one line for jsonl). Callers
// should exit non-zero when res.Err() is not nil.
func WriteVerify(w io.Writer, f Format, res store.VerifyResult) error {
	switch f {
	case FormatJSON:
		return writeIndented(w, res)
	case FormatJSONL:
		if err := json.NewEncoder(w).Encode(res); err != nil {
			return fmt.Errorf("write audit verification: %w", err)
		}
		return nil
	case FormatTable, "":
		var b strings.Builder
		if res.OK {
			if res.Records == 0 {
				b.WriteString("audit chain OK: no records\n")
			} else {
				fmt.Fprintf(&b, "audit chain OK: %d records verified (seq %d..%d), head %s\n", res.Records, res.FirstSeq, res.LastSeq, res.HeadHash)
			}
		} else if bad := res.Bad; bad != nil {
			fmt.Fprintf(&b, "audit chain BROKEN at seq %d", bad.Seq)
			if bad.Source != "" || bad.ID != "" {
				fmt.Fprintf(&b, " (source %s, id %s, type %s)", bad.Source, bad.ID, bad.Type)
			}
			fmt.Fprintf(&b, ": %s\n%d records checked\n", bad.Reason, res.Records)
		}
		if c := res.Checkpoint; c != nil {
			fmt.Fprintf(&b, "chain starts at a checkpoint: %d records (seq %d..%d) pruned at %s\n",
				c.Count, c.FirstSeq, c.LastSeq, c.PrunedAt.UTC().Format(time.RFC3339))
		}
		if _, err := io.WriteString(w, b.String()); err != nil {
			return fmt.Errorf("write audit verification: %w", err)
		}
		return nil
	}
	return fmt.Errorf("output format %q: want table, json or jsonl", f)
}

func writeIndented(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("write audit output: %w", err)
	}
	return nil
}

func tableTime(r store.Record) string {
	t := r.Time
	if t.IsZero() {
		t = r.ReceivedAt
	}
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z")
}

// shortType drops the "io.ansflow." prefix and the ".v1" suffix.
func shortType(t string) string {
	if t == "" {
		return "-"
	}
	return strings.TrimSuffix(strings.TrimPrefix(t, "io.ansflow."), ".v1")
}

func summary(r store.Record) string {
	if r.Rejected {
		return "REJECTED: " + r.Reason
	}
	if r.Reason != "" {
		return r.Reason
	}
	var b bytes.Buffer
	if json.Compact(&b, r.Data) != nil {
		return string(r.Data)
	}
	return b.String()
}

// cell makes s one table cell of at most n runes.
func cell(s string, n int) string {
	if s == "" {
		return "-"
	}
	s = strings.Map(func(r rune) rune {
		if r == '\t' || r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, s)
	if rs := []rune(s); len(rs) > n {
		return string(rs[:n-1]) + "…"
	}
	return s
}
