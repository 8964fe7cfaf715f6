package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
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
CREATE INDEX IF NOT EXISTS audit_runs_pipeline ON audit_runs(pipeline);
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
	path  string
	w     *sql.DB // one connection; transactions BEGIN IMMEDIATE
	r     *sql.DB // readers; query_only
	mu    sync.Mutex
	h     hasher               // guarded by mu
	stmts map[string]*sql.Stmt // on w; read-only after OpenSQLite
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
	r, err := sql.Open("sqlite", path+common+"&_pragma=query_only(1)&_pragma=mmap_size(2147418112)&_pragma=cache_size(-32768)")
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open sqlite audit store %s for reading: %w", path, err)
	}
	r.SetMaxOpenConns(verifyWorkers + 4) // a verification's ranges, and queries beside it
	s := &SQLite{path: path, w: w, r: r}
	if err := s.prepare(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open sqlite audit store %s: %w", path, err)
	}
	return s, nil
}

// Path is the database file.
func (s *SQLite) Path() string { return s.path }

// Writable begins an immediate (write-locking) transaction, updates no row
// and rolls back.
func (s *SQLite) Writable(ctx context.Context) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite audit store %s: begin a write: %w", s.path, err)
	}
	defer tx.Rollback() //nolint:errcheck // nothing was written
	if _, err := tx.ExecContext(ctx, `UPDATE audit_head SET seq = seq WHERE id = 1 AND 0`); err != nil {
		return fmt.Errorf("sqlite audit store %s: write: %w", s.path, err)
	}
	return nil
}

// Close closes the database.
func (s *SQLite) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.stmts {
		st.Close()
	}
	return errors.Join(s.w.Close(), s.r.Close())
}

// readHead returns the recorded chain head and the last record; see
// appendHead for which one appends continue from.
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

// appendHead is where appends continue from: the recorded head, so that a
// removed tail stays visible as a gap, or the last record when that is
// further (a head row that was tampered with must not stop appends).
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
	fresh, err := s.unstored(ctx, tx, batch)
	if err != nil {
		return 0, err
	}
	runs := map[string]string{}
	for i := range fresh {
		r := &fresh[i]
		head = s.h.link(head, r)
		if r.RunID != "" && r.Pipeline != "" {
			if _, ok := runs[r.RunID]; !ok {
				runs[r.RunID] = r.Pipeline
			}
		}
	}
	if err := s.insertRows(ctx, tx, fresh); err != nil {
		return 0, err
	}
	for run, pipeline := range runs {
		if _, err := tx.ExecContext(ctx, `INSERT INTO audit_runs(run_id, pipeline) VALUES (?, ?) ON CONFLICT(run_id) DO NOTHING`, run, pipeline); err != nil {
			return 0, fmt.Errorf("index run %s: %w", run, err)
		}
	}
	stored := len(fresh)
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

// Appends write many rows per statement. Statements for 1, 2, 4, ...
// sqliteMaxRows rows are prepared once and reused; a batch is cut into
// pieces of those sizes. 128 rows of 19 columns stay well under SQLite's
// limit of 32766 parameters.
const sqliteMaxRows = 128

// pieces cuts n into sizes that are powers of two, largest first.
func pieces(n int) []int {
	var out []int
	for size := sqliteMaxRows; n > 0; size /= 2 {
		for n >= size {
			out = append(out, size)
			n -= size
		}
	}
	return out
}

// prepare prepares the multi-row statements on the writer connection. It
// runs before any transaction: with one connection, preparing on the pool
// while a transaction holds it would wait forever.
func (s *SQLite) prepare(ctx context.Context) error {
	s.stmts = map[string]*sql.Stmt{}
	for rows := 1; rows <= sqliteMaxRows; rows *= 2 {
		for kind, q := range map[string]string{
			"insert": `INSERT OR ROLLBACK INTO audit_records(` + recordColumns + `) VALUES ` +
				strings.TrimSuffix(strings.Repeat("(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?),", rows), ","),
			"keys": `SELECT source, event_id FROM audit_records WHERE (source, event_id) IN (VALUES ` +
				strings.TrimSuffix(strings.Repeat("(?,?),", rows), ",") + `)`,
		} {
			st, err := s.w.PrepareContext(ctx, q)
			if err != nil {
				return fmt.Errorf("prepare audit %s statement: %w", kind, err)
			}
			s.stmts[fmt.Sprintf("%s/%d", kind, rows)] = st
		}
	}
	return nil
}

// stmt returns the prepared statement of kind for rows rows.
func (s *SQLite) stmt(kind string, rows int) *sql.Stmt {
	return s.stmts[fmt.Sprintf("%s/%d", kind, rows)]
}

// unstored returns the records of batch whose (source, id) is neither
// stored nor earlier in batch. The caller holds mu and the write lock, so
// the answer stays true until it commits.
func (s *SQLite) unstored(ctx context.Context, tx *sql.Tx, batch []Record) ([]Record, error) {
	seen := make(map[[2]string]bool, len(batch))
	from := 0
	for _, n := range pieces(len(batch)) {
		part := batch[from : from+n]
		from += n
		args := make([]any, 0, 2*n)
		for i := range part {
			args = append(args, part[i].Source, part[i].ID)
		}
		rows, err := tx.StmtContext(ctx, s.stmt("keys", n)).QueryContext(ctx, args...)
		if err != nil {
			return nil, fmt.Errorf("look up stored audit keys: %w", err)
		}
		for rows.Next() {
			var k [2]string
			if err := rows.Scan(&k[0], &k[1]); err != nil {
				rows.Close()
				return nil, fmt.Errorf("look up stored audit keys: %w", err)
			}
			seen[k] = true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("look up stored audit keys: %w", err)
		}
	}
	fresh := batch[:0:0]
	for _, r := range batch {
		k := [2]string{r.Source, r.ID}
		if !seen[k] {
			seen[k] = true
			fresh = append(fresh, r)
		}
	}
	return fresh, nil
}

// insertRows writes recs with multi-row INSERTs. The caller holds mu.
func (s *SQLite) insertRows(ctx context.Context, tx *sql.Tx, recs []Record) error {
	from := 0
	for _, n := range pieces(len(recs)) {
		part := recs[from : from+n]
		from += n
		args := make([]any, 0, 19*n)
		for i := range part {
			rejected := 0
			if part[i].Rejected {
				rejected = 1
			}
			args = append(args, recordArgs(&part[i], rejected)...)
		}
		if _, err := tx.StmtContext(ctx, s.stmt("insert", n)).ExecContext(ctx, args...); err != nil {
			return fmt.Errorf("insert audit records %d..%d: %w", part[0].Seq, part[n-1].Seq, err)
		}
	}
	return nil
}

// Query implements [Store.Query].
func (s *SQLite) Query(ctx context.Context, f Filter) (Page, error) {
	after, err := DecodeCursor(f.Cursor)
	if err != nil {
		return Page{}, err
	}
	q, args := selectPage(f, after, sqliteDialect)
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return Page{}, fmt.Errorf("query audit records: %w", err)
	}
	defer rows.Close()
	return readPage(rows, f.limit())
}

// Verify implements [Store.Verify]. It reads one snapshot, so appends may
// go on meanwhile. SQLite builds each row's canonical encoding itself, so a
// row crosses into Go as one value, and a long chain is cut into ranges
// checked in parallel, then stitched (see [segment]).
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
	// The first record is read whole: it may be a checkpoint.
	var first Record
	switch err := scanRecord(tx.QueryRowContext(ctx, "SELECT "+recordColumns+" FROM audit_records ORDER BY seq LIMIT 1"), &first); {
	case errors.Is(err, sql.ErrNoRows):
		return v.finish(head), nil
	case err != nil:
		return VerifyResult{}, fmt.Errorf("verify audit chain: %w", err)
	}
	if v.next(&first) {
		var last int64
		if err := tx.QueryRowContext(ctx, `SELECT MAX(seq) FROM audit_records`).Scan(&last); err != nil {
			return VerifyResult{}, fmt.Errorf("verify audit chain: %w", err)
		}
		segs, err := s.verifySegments(ctx, tx, first, last)
		if err != nil {
			return VerifyResult{}, fmt.Errorf("verify audit chain: %w", err)
		}
		for i := range segs {
			if !segs[i].stitch(v) {
				break
			}
		}
	}
	if b := v.res.Bad; b != nil {
		var r Record
		if err := scanRecord(tx.QueryRowContext(ctx, "SELECT "+recordColumns+" FROM audit_records WHERE seq = ?", b.Seq), &r); err == nil {
			b.Source, b.ID, b.Type = r.Source, r.ID, r.Type
		}
	}
	return v.finish(head), nil
}

// Parallel verification: chains longer than verifyParallelMin records are
// cut into up to verifyWorkers ranges.
var (
	verifyParallelMin int64 = 100_000
	verifyWorkers           = min(runtime.GOMAXPROCS(0), 4)
)

// errMoved reports that the chain's first record changed between two
// snapshots (a prune ran), so ranges read in separate snapshots cannot be
// stitched.
var errMoved = errors.New("the chain start moved during verification")

// verifySegments checks the records after first up to last, in ranges
// read in parallel when the chain is long; tx is the snapshot the caller
// read first from.
func (s *SQLite) verifySegments(ctx context.Context, tx *sql.Tx, first Record, last int64) ([]segment, error) {
	workers := verifyWorkers
	if last-first.Seq < verifyParallelMin || workers < 2 {
		workers = 1
	}
	bounds := make([]int64, workers+1)
	for i := range bounds {
		bounds[i] = first.Seq + (last-first.Seq)*int64(i)/int64(workers)
	}
	if workers == 1 {
		seg, err := readSegment(ctx, tx, bounds[0], bounds[1])
		return []segment{seg}, err
	}
	segs := make([]segment, workers)
	g, gctx := errgroup.WithContext(ctx)
	for i := range workers {
		g.Go(func() error {
			// Each range has its own snapshot. Appends do not touch
			// records up to last; a prune would, and shows as a new
			// first record.
			wtx, err := s.r.BeginTx(gctx, &sql.TxOptions{ReadOnly: true})
			if err != nil {
				return err
			}
			defer wtx.Rollback() //nolint:errcheck // read-only
			var seq int64
			var hash string
			if err := wtx.QueryRowContext(gctx, `SELECT seq, hash FROM audit_records ORDER BY seq LIMIT 1`).Scan(&seq, &hash); err != nil {
				return err
			}
			if seq != first.Seq || hash != first.Hash {
				return errMoved
			}
			segs[i], err = readSegment(gctx, wtx, bounds[i], bounds[i+1])
			return err
		})
	}
	err := g.Wait()
	if errors.Is(err, errMoved) {
		seg, err := readSegment(ctx, tx, first.Seq, last)
		return []segment{seg}, err
	}
	return segs, err
}

// readSegment checks the records with after < seq <= upTo.
func readSegment(ctx context.Context, tx *sql.Tx, after, upTo int64) (segment, error) {
	var seg segment
	rows, err := tx.QueryContext(ctx, "SELECT seq, hash, prev_hash, (type = ? AND source = ?), "+canonicalSQL+
		" FROM audit_records WHERE seq > ? AND seq <= ? ORDER BY seq", TypeCheckpoint, CheckpointSource, after, upTo)
	if err != nil {
		return seg, err
	}
	defer rows.Close()
	var (
		r     Record
		cp    bool
		canon sql.RawBytes
	)
	for rows.Next() {
		if err := rows.Scan(&r.Seq, &r.Hash, &r.PrevHash, &cp, &canon); err != nil {
			return seg, err
		}
		r.Type, r.Source = "", ""
		if cp {
			r.Type, r.Source = TypeCheckpoint, CheckpointSource
		}
		if !seg.add(&r, hashBytes(canon)) {
			break
		}
	}
	return seg, rows.Err()
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
		if err := tx.QueryRowContext(ctx, `SELECT MIN(seq) FROM audit_records WHERE received_ns >= ? AND type <> ?`, toNanos(opts.Before), TypeCheckpoint).Scan(&keep); err != nil {
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
