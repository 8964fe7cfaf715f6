package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

const postgresSchema = `
CREATE TABLE IF NOT EXISTS audit_records (
	seq         BIGINT  PRIMARY KEY,
	hash        TEXT    NOT NULL,
	prev_hash   TEXT    NOT NULL,
	stream      TEXT    NOT NULL,
	stream_seq  BIGINT  NOT NULL,
	source      TEXT    NOT NULL,
	event_id    TEXT    NOT NULL,
	type        TEXT    NOT NULL,
	time_ns     BIGINT  NOT NULL,
	subject     TEXT    NOT NULL,
	run_id      TEXT    NOT NULL,
	step_id     TEXT    NOT NULL,
	attempt     INTEGER NOT NULL,
	pipeline    TEXT    NOT NULL,
	actor       TEXT    NOT NULL,
	data        BYTEA   NOT NULL,
	rejected    BOOLEAN NOT NULL,
	reason      TEXT    NOT NULL,
	received_ns BIGINT  NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS audit_records_key ON audit_records(source, event_id);
CREATE INDEX IF NOT EXISTS audit_records_run ON audit_records(run_id, seq);
CREATE INDEX IF NOT EXISTS audit_records_type ON audit_records(type, seq);
CREATE INDEX IF NOT EXISTS audit_records_actor ON audit_records(actor, seq) WHERE actor <> '';
CREATE INDEX IF NOT EXISTS audit_records_pipeline ON audit_records(pipeline, seq) WHERE pipeline <> '';
CREATE TABLE IF NOT EXISTS audit_runs (
	run_id   TEXT PRIMARY KEY,
	pipeline TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_runs_pipeline ON audit_runs(pipeline);
CREATE TABLE IF NOT EXISTS audit_head (
	id   INTEGER PRIMARY KEY CHECK (id = 1),
	seq  BIGINT NOT NULL,
	hash TEXT   NOT NULL
);
`

// Postgres is the [Store] kept in PostgreSQL. Several audit instances may
// append to one database: each append locks the chain head row, so the
// chain stays linear.
type Postgres struct {
	pool *pgxpool.Pool
}

var _ Store = (*Postgres)(nil)

// OpenPostgres connects to the database dsn names (a URL or key=value
// string; extra keys such as search_path become session settings) and
// creates the schema if needed.
func OpenPostgres(ctx context.Context, dsn string) (*Postgres, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse postgres audit DSN: %w", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect postgres audit store: %w", err)
	}
	p := &Postgres{pool: pool}
	if err := p.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return p, nil
}

func (p *Postgres) migrate(ctx context.Context) error {
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		// Several instances may start at once; CREATE ... IF NOT EXISTS
		// alone races on the catalogue.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('ansflow_audit_schema'))`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, postgresSchema); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO audit_head(id, seq, hash) VALUES (1, 0, $1) ON CONFLICT (id) DO NOTHING`, GenesisHash)
		return err
	})
	if err != nil {
		return fmt.Errorf("create postgres audit schema: %w", err)
	}
	return nil
}

// Writable begins a read-write transaction, updates no row and rolls back:
// a standby or a read-only database refuses the update.
func (p *Postgres) Writable(ctx context.Context) error {
	tx, err := p.pool.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadWrite})
	if err != nil {
		return fmt.Errorf("postgres audit store: begin a write: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // nothing was written
	if _, err := tx.Exec(ctx, `UPDATE audit_head SET seq = seq WHERE id = 1 AND false`); err != nil {
		return fmt.Errorf("postgres audit store: write: %w", err)
	}
	return nil
}

// Close closes the connection pool.
func (p *Postgres) Close() error {
	p.pool.Close()
	return nil
}

// lockHead locks the chain head for the transaction and returns where
// appends continue from.
func lockHead(ctx context.Context, tx pgx.Tx) (chainHead, error) {
	var head, last chainHead
	err := tx.QueryRow(ctx, `SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE`).Scan(&head.seq, &head.hash)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return head, fmt.Errorf("lock audit head: %w", err)
	}
	err = tx.QueryRow(ctx, `SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1`).Scan(&last.seq, &last.hash)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return head, fmt.Errorf("read last audit record: %w", err)
	}
	return appendHead(head, last), nil
}

// Append implements [Store.Append]: it filters out stored keys with one
// query and writes the rest with COPY.
func (p *Postgres) Append(ctx context.Context, recs []Record) (int, error) {
	if len(recs) == 0 {
		return 0, nil
	}
	batch := make([]Record, len(recs))
	copy(batch, recs)
	sources, ids := make([]string, len(batch)), make([]string, len(batch))
	for i := range batch {
		if err := normalize(&batch[i]); err != nil {
			return 0, err
		}
		sources[i], ids[i] = batch[i].Source, batch[i].ID
	}
	stored := 0
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		stored = 0
		head, err := lockHead(ctx, tx)
		if err != nil {
			return err
		}
		seen := make(map[[2]string]bool, len(batch))
		rows, err := tx.Query(ctx, `SELECT r.source, r.event_id FROM audit_records r
			JOIN unnest($1::text[], $2::text[]) AS k(source, event_id) ON r.source = k.source AND r.event_id = k.event_id`, sources, ids)
		if err != nil {
			return fmt.Errorf("look up stored audit keys: %w", err)
		}
		for rows.Next() {
			var k [2]string
			if err := rows.Scan(&k[0], &k[1]); err != nil {
				rows.Close()
				return fmt.Errorf("look up stored audit keys: %w", err)
			}
			seen[k] = true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("look up stored audit keys: %w", err)
		}
		var h hasher
		out := make([][]any, 0, len(batch))
		var runIDs, pipelines []string
		runSeen := map[string]bool{}
		for i := range batch {
			r := &batch[i]
			k := [2]string{r.Source, r.ID}
			if seen[k] {
				continue
			}
			seen[k] = true
			head = h.link(head, r)
			out = append(out, recordArgs(r, r.Rejected))
			if r.RunID != "" && r.Pipeline != "" && !runSeen[r.RunID] {
				runSeen[r.RunID] = true
				runIDs, pipelines = append(runIDs, r.RunID), append(pipelines, r.Pipeline)
			}
		}
		if len(out) == 0 {
			return nil
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"audit_records"}, strings.Split(strings.ReplaceAll(recordColumns, " ", ""), ","), pgx.CopyFromRows(out)); err != nil {
			return fmt.Errorf("copy audit records: %w", err)
		}
		if len(runIDs) > 0 {
			if _, err := tx.Exec(ctx, `INSERT INTO audit_runs(run_id, pipeline) SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT (run_id) DO NOTHING`, runIDs, pipelines); err != nil {
				return fmt.Errorf("index runs: %w", err)
			}
		}
		if _, err := tx.Exec(ctx, `UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1`, head.seq, head.hash); err != nil {
			return fmt.Errorf("advance audit head: %w", err)
		}
		stored = len(out)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("append audit records: %w", err)
	}
	return stored, nil
}

func pgPlaceholder(n int) string { return "$" + strconv.Itoa(n) }

// Query implements [Store.Query].
func (p *Postgres) Query(ctx context.Context, f Filter) (Page, error) {
	after, err := DecodeCursor(f.Cursor)
	if err != nil {
		return Page{}, err
	}
	q, args := selectPage(f, after, postgresDialect)
	rows, err := p.pool.Query(ctx, q, args...)
	if err != nil {
		return Page{}, fmt.Errorf("query audit records: %w", err)
	}
	defer rows.Close()
	return readPage(rows, f.limit())
}

// pgWalk streams the records of query to fn until fn returns false.
func pgWalk(ctx context.Context, tx pgx.Tx, query string, fn func(*Record) bool, args ...any) error {
	rows, err := tx.Query(ctx, query, args...)
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

// Verify implements [Store.Verify] in one repeatable-read snapshot.
func (p *Postgres) Verify(ctx context.Context) (VerifyResult, error) {
	var res VerifyResult
	err := pgx.BeginTxFunc(ctx, p.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var head chainHead
		if err := tx.QueryRow(ctx, `SELECT seq, hash FROM audit_head WHERE id = 1`).Scan(&head.seq, &head.hash); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("read audit head: %w", err)
		}
		v := &verifier{}
		if err := pgWalk(ctx, tx, "SELECT "+recordColumns+" FROM audit_records ORDER BY seq", v.next); err != nil {
			return err
		}
		res = v.finish(head)
		return nil
	})
	if err != nil {
		return VerifyResult{}, fmt.Errorf("verify audit chain: %w", err)
	}
	return res, nil
}

// Prune implements [Store.Prune]; it holds the head lock, so appends wait.
func (p *Postgres) Prune(ctx context.Context, opts PruneOptions) (PruneResult, error) {
	var res PruneResult
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := lockHead(ctx, tx); err != nil {
			return err
		}
		var last int64
		switch {
		case opts.BeforeSeq > 0:
			last = opts.BeforeSeq - 1
		case !opts.Before.IsZero():
			var keep *int64
			if err := tx.QueryRow(ctx, `SELECT MIN(seq) FROM audit_records WHERE received_ns >= $1 AND type <> $2`, toNanos(opts.Before), TypeCheckpoint).Scan(&keep); err != nil {
				return err
			}
			last = 1<<63 - 1
			if keep != nil {
				last = *keep - 1
			}
		default:
			return errors.New("neither Before nor BeforeSeq set")
		}
		pr := pruner{}
		if err := pgWalk(ctx, tx, "SELECT "+recordColumns+" FROM audit_records WHERE seq <= $1 ORDER BY seq", pr.next, last); err != nil {
			return err
		}
		cp, n, err := pr.checkpoint(time.Now())
		if err != nil || n == 0 {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM audit_records WHERE seq <= $1`, cp.Seq); err != nil {
			return err
		}
		ph := make([]string, 19)
		for i := range ph {
			ph[i] = pgPlaceholder(i + 1)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO audit_records(`+recordColumns+`) VALUES (`+strings.Join(ph, ",")+`)`, recordArgs(&cp, false)...); err != nil {
			return fmt.Errorf("write audit checkpoint: %w", err)
		}
		res = PruneResult{Pruned: n, Checkpoint: &cp}
		return nil
	})
	if err != nil {
		return PruneResult{}, fmt.Errorf("prune audit records: %w", err)
	}
	return res, nil
}
