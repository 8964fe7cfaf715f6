package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

const sqliteSchema = `
CREATE TABLE IF NOT EXISTS audit_records (
	seq         INTEGER PRIMARY KEY,
	hash        TEXT    NOT NULL,
	prev_hash   TEXT    NOT NULL,
	stream      TEXT    NOT NULL,
	stream_seq  INTEGER NOT NULL,
	source      TEXT    NOT NULL,
	event_id    TEXT    NOT NULL,
	type        TEXT    NOT NULL,
	time_ns     INTEGER NOT NULL,
	subject     TEXT    NOT NULL,
	run_id      TEXT    NOT NULL,
	step_id     TEXT    NOT NULL,
	attempt     INTEGER NOT NULL,
	pipeline    TEXT    NOT NULL,
	actor       TEXT    NOT NULL,
	data        BLOB    NOT NULL,
	rejected    INTEGER NOT NULL,
	reason      TEXT    NOT NULL,
	received_ns INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS audit_records_key ON audit_records(source, event_id);
CREATE INDEX IF NOT EXISTS audit_records_run ON audit_records(run_id, seq);
CREATE INDEX IF NOT EXISTS audit_records_type ON audit_records(type, seq);
CREATE INDEX IF NOT EXISTS audit_records_actor ON audit_records(actor, seq) WHERE actor <> '';
CREATE INDEX IF NOT EXISTS audit_records_pipeline ON audit_records(pipeline, seq) WHERE pipeline <> '';
CREATE TABLE IF NOT EXISTS audit_runs (
	run_id   TEXT PRIMARY KEY,
	pipeline TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_head (
	id   INTEGER PRIMARY KEY CHECK (id = 1),
	seq  INTEGER NOT NULL,
	hash TEXT    NOT NULL
);
`

// SQLite is the [Store] kept in one SQLite file in WAL mode. One process
// writes it (appends are serialised in the process); other processes, such
// as the CLI, may read it at the same time.
type SQLite struct {
	path string
	w    *sql.DB // one connection; transactions BEGIN IMMEDIATE
	r    *sql.DB // readers; query_only
	mu   sync.Mutex
	h    hasher // guarded by mu
}

var _ Store = (*SQLite)(nil)

// OpenSQLite opens (creating if needed) the SQLite store at path and its
// parent directory.
func OpenSQLite(ctx context.Context, path string) (*SQLite, error) {
	if path == "" {
		return nil, errors.New("open sqlite audit store: empty path")
	}
	if strings.ContainsRune(path, '?') {
		return nil, fmt.Errorf("open sqlite audit store %q: the path may not contain '?'", path)
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("open sqlite audit store: %w", err)
		}
	}
	common := "?_pragma=busy_timeout(15000)&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)"
	w, err := sql.Open("sqlite", path+common+"&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("open sqlite audit store %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetConnMaxIdleTime(0)
	if _, err := w.ExecContext(ctx, sqliteSchema); err != nil {
		w.Close()
		return nil, fmt.Errorf("create sqlite audit schema in %s: %w", path, err)
	}
	if _, err := w.ExecContext(ctx, `INSERT INTO audit_head(id, seq, hash) VALUES (1, 0, ?) ON CONFLICT(id) DO NOTHING`, GenesisHash); err != nil {
		w.Close()
		return nil, fmt.Errorf("init sqlite audit head in %s: %w", path, err)
	}
	r, err := sql.Open("sqlite", path+common+"&_pragma=query_only(1)&_pragma=mmap_size(268435456)&_pragma=cache_size(-32768)")
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open sqlite audit store %s for reading: %w", path, err)
	}
	r.SetMaxOpenConns(4)
	return &SQLite{path: path, w: w, r: r}, nil
}

// Path is the database file.
func (s *SQLite) Path() string { return s.path }

// Close closes the database.
func (s *SQLite) Close() error {
	return errors.Join(s.w.Close(), s.r.Close())
}

// head returns the end of the chain appends continue from: the recorded
// head, or the last record when that is further (a head row that was
// tampered with must not stop appends).
func readHead(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) (head, last chainHead, err error) {
	if err = q.QueryRowContext(ctx, `SELECT seq, hash FROM audit_head WHERE id = 1`).Scan(&head.seq, &head.hash); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return head, last, fmt.Errorf("read audit head: %w", err)
	}
	if err = q.QueryRowContext(ctx, `SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1`).Scan(&last.seq, &last.hash); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return head, last, fmt.Errorf("read last audit record: %w", err)
	}
	return head, last, nil
}

func appendHead(head, last chainHead) chainHead {
	if last.seq > head.seq || head.hash == "" {
		head = last
	}
	if head.seq == 0 {
		head.hash = GenesisHash
	}
	return head
}

// Append implements [Store.Append].
func (s *SQLite) Append(ctx context.Context, recs []Record) (int, error) {
	if len(recs) == 0 {
		return 0, nil
	}
	batch := make([]Record, len(recs))
	copy(batch, recs)
	for i := range batch {
		if err := normalize(&batch[i]); err != nil {
			return 0, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("append audit records: begin: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	head, last, err := readHead(ctx, tx)
	if err != nil {
		return 0, err
	}
	head = appendHead(head, last)
	ins, err := tx.PrepareContext(ctx, `INSERT INTO audit_records(`+recordColumns+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(source, event_id) DO NOTHING`)
	if err != nil {
		return 0, fmt.Errorf("append audit records: prepare: %w", err)
	}
	defer ins.Close()
	runs, err := tx.PrepareContext(ctx, `INSERT INTO audit_runs(run_id, pipeline) VALUES (?, ?) ON CONFLICT(run_id) DO NOTHING`)
	if err != nil {
		return 0, fmt.Errorf("append audit records: prepare: %w", err)
	}
	defer runs.Close()
	stored := 0
	for i := range batch {
		r := &batch[i]
		next := s.h.link(head, r)
		rejected := 0
		if r.Rejected {
			rejected = 1
		}
		res, err := ins.ExecContext(ctx, recordArgs(r, rejected)...)
		if err != nil {
			return 0, fmt.Errorf("append audit record %s %s: %w", r.Source, r.ID, err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return 0, fmt.Errorf("append audit record %s %s: %w", r.Source, r.ID, err)
		} else if n == 0 {
			continue // duplicate (source, id)
		}
		head = next
		stored++
		if r.RunID != "" && r.Pipeline != "" {
			if _, err := runs.ExecContext(ctx, r.RunID, r.Pipeline); err != nil {
				return 0, fmt.Errorf("index run %s: %w", r.RunID, err)
			}
		}
	}
	if stored > 0 {
		if _, err := tx.ExecContext(ctx, `INSERT INTO audit_head(id, seq, hash) VALUES (1, ?, ?) ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash`, head.seq, head.hash); err != nil {
			return 0, fmt.Errorf("advance audit head: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("append audit records: commit: %w", err)
	}
	return stored, nil
}

// Query implements [Store.Query].
func (s *SQLite) Query(ctx context.Context, f Filter) (Page, error) {
	after, err := DecodeCursor(f.Cursor)
	if err != nil {
		return Page{}, err
	}
	q, args := selectPage(f, after, func(int) string { return "?" })
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return Page{}, fmt.Errorf("query audit records: %w", err)
	}
	defer rows.Close()
	recs := make([]Record, 0, min(f.limit()+1, 256))
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
	return page(recs, f.limit()), nil
}

// Verify implements [Store.Verify]. It reads one snapshot, so appends may
// go on meanwhile.
func (s *SQLite) Verify(ctx context.Context) (VerifyResult, error) {
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return VerifyResult{}, fmt.Errorf("verify audit chain: begin: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // read-only
	head, _, err := readHead(ctx, tx)
	if err != nil {
		return VerifyResult{}, err
	}
	v := &verifier{}
	if err := walk(ctx, tx, "SELECT "+recordColumns+" FROM audit_records ORDER BY seq", v.next); err != nil {
		return VerifyResult{}, fmt.Errorf("verify audit chain: %w", err)
	}
	return v.finish(head), nil
}

// walk streams the records of query to fn until fn returns false.
func walk(ctx context.Context, tx *sql.Tx, query string, fn func(*Record) bool, args ...any) error {
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	var r Record
	for rows.Next() {
		if err := scanRecord(rows, &r); err != nil {
			return err
		}
		if !fn(&r) {
			break
		}
	}
	return rows.Err()
}

// Prune implements [Store.Prune].
func (s *SQLite) Prune(ctx context.Context, opts PruneOptions) (PruneResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return PruneResult{}, fmt.Errorf("prune audit records: begin: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	var last int64
	switch {
	case opts.BeforeSeq > 0:
		last = opts.BeforeSeq - 1
	case !opts.Before.IsZero():
		var keep sql.NullInt64
		if err := tx.QueryRowContext(ctx, `SELECT MIN(seq) FROM audit_records WHERE received_ns >= ?`, toNanos(opts.Before)).Scan(&keep); err != nil {
			return PruneResult{}, fmt.Errorf("prune audit records: %w", err)
		}
		last = keep.Int64 - 1
		if !keep.Valid {
			last = 1<<63 - 1
		}
	default:
		return PruneResult{}, errors.New("prune audit records: neither Before nor BeforeSeq set")
	}
	p := pruner{}
	if err := walk(ctx, tx, "SELECT "+recordColumns+" FROM audit_records WHERE seq <= ? ORDER BY seq", p.next, last); err != nil {
		return PruneResult{}, fmt.Errorf("prune audit records: %w", err)
	}
	cp, n, err := p.checkpoint(time.Now())
	if err != nil || n == 0 {
		return PruneResult{}, err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM audit_records WHERE seq <= ?`, cp.Seq); err != nil {
		return PruneResult{}, fmt.Errorf("prune audit records: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO audit_records(`+recordColumns+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`, recordArgs(&cp, 0)...); err != nil {
		return PruneResult{}, fmt.Errorf("write audit checkpoint: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return PruneResult{}, fmt.Errorf("prune audit records: commit: %w", err)
	}
	return PruneResult{Pruned: n, Checkpoint: &cp}, nil
}
