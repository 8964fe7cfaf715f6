// Package store keeps AnsFlow's audit trail: an append-only sequence of
// records, each holding the SHA-256 hash of the record before it, so that
// editing, deleting or reordering any stored record is detected by
// [Store.Verify].
//
// Two implementations share one schema and one hash definition: SQLite
// (pure Go, modernc.org/sqlite, WAL) for a single process, and PostgreSQL
// (pgx) for several audit instances. [Open] picks one from a DSN.
//
// Records are deduplicated on (source, id): appending a record whose key is
// already stored is silently skipped and takes no sequence number, so a
// redelivered event is stored exactly once.
//
// Retention never breaks verifiability: [Store.Prune] replaces a verified
// prefix of the chain by one checkpoint record that keeps the hash of the
// last pruned record (the anchor the next record links to) and a seal over
// its own content.
package store

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Record is one entry of the audit trail. Seq, Hash and PrevHash are set by
// [Store.Append]; every other field is hashed as given (after
// normalisation: text is made valid UTF-8 without NUL bytes, times are kept
// to the nanosecond in UTC).
type Record struct {
	// Seq is the record's position in the chain, from 1, without gaps
	// except for the prefix a checkpoint replaced.
	Seq int64 `json:"seq"`
	// Hash is the hex SHA-256 of the record's content and PrevHash.
	Hash string `json:"hash"`
	// PrevHash is the Hash of the record before (GenesisHash for the
	// first).
	PrevHash string `json:"prev_hash"`
	// Stream and StreamSeq say where on the bus the record was read from;
	// both are empty for records not read from JetStream.
	Stream    string `json:"stream,omitempty"`
	StreamSeq uint64 `json:"stream_seq,omitempty"`
	// Source and ID are the CloudEvent's source and id: the dedupe key.
	// Messages without a usable identity get one derived from their
	// position on the bus.
	Source string `json:"source"`
	ID     string `json:"id"`
	// Type is the CloudEvent type (as claimed by the message when it was
	// rejected).
	Type string `json:"type"`
	// Time is the CloudEvent's time, as given by its producer.
	Time     time.Time `json:"time,omitzero"`
	Subject  string    `json:"subject,omitempty"`
	RunID    string    `json:"run_id,omitempty"`
	StepID   string    `json:"step_id,omitempty"`
	Attempt  int       `json:"attempt,omitempty"`
	Pipeline string    `json:"pipeline,omitempty"`
	// Actor is who acted: a token identity or a webhook delivery.
	Actor string `json:"actor,omitempty"`
	// Data is the event's JSON data; empty or valid JSON.
	Data json.RawMessage `json:"data,omitempty"`
	// Rejected marks a message the audit service could not accept as an
	// event (not a CloudEvent, unknown type, oversized, ...); Reason says
	// why. Reason is also set on dead-letter records.
	Rejected bool   `json:"rejected,omitempty"`
	Reason   string `json:"reason,omitempty"`
	// ReceivedAt is when the bus accepted the message (JetStream's
	// timestamp), or when the record was built for records not read from
	// the bus.
	ReceivedAt time.Time `json:"received_at,omitzero"`
}

// IsCheckpoint reports whether r is a checkpoint written by [Store.Prune].
func (r *Record) IsCheckpoint() bool { return r.Type == TypeCheckpoint && r.Source == CheckpointSource }

// Checkpoint decodes the checkpoint data of r.
func (r *Record) Checkpoint() (Checkpoint, error) {
	var c Checkpoint
	if !r.IsCheckpoint() {
		return c, fmt.Errorf("record %d is not a checkpoint", r.Seq)
	}
	if err := json.Unmarshal(r.Data, &c); err != nil {
		return c, fmt.Errorf("decode checkpoint %d: %w", r.Seq, err)
	}
	return c, nil
}

// Checkpoint identifies a checkpoint record.
const (
	TypeCheckpoint   = "io.ansflow.audit.checkpoint.v1"
	CheckpointSource = "ansflow/audit"
)

// Checkpoint is the data of a checkpoint record: it stands for records
// FirstSeq..LastSeq, which were verified and then pruned.
type Checkpoint struct {
	// FirstSeq and LastSeq bound the pruned records (over every prune so
	// far); Count is how many records they were.
	FirstSeq int64 `json:"first_seq"`
	LastSeq  int64 `json:"last_seq"`
	Count    int64 `json:"count"`
	// Anchor is the hash of record LastSeq, which the record after the
	// checkpoint links to; it equals the checkpoint record's Hash.
	Anchor string `json:"anchor"`
	// PrevSeal is the seal of the checkpoint this one replaced, so
	// successive prunes form a chain of their own.
	PrevSeal string    `json:"prev_seal,omitempty"`
	PrunedAt time.Time `json:"pruned_at"`
	// Seal is the hex SHA-256 over the checkpoint record and the fields
	// above; editing any of them is detected by Verify.
	Seal string `json:"seal"`
}

// Filter selects records for [Store.Query]. Empty fields do not filter.
type Filter struct {
	RunID string
	// Pipeline matches records naming the pipeline in their data and every
	// record of a run whose events named it.
	Pipeline string
	StepID   string
	Actor    string
	Type     string
	// Since (inclusive) and Until (exclusive) bound the event time.
	Since, Until time.Time
	// Limit is the page size: DefaultLimit when 0, at most MaxLimit.
	Limit int
	// Cursor is a Page.NextCursor from an earlier query with the same
	// filter.
	Cursor string
}

// Page sizes of [Filter.Limit].
const (
	DefaultLimit = 100
	MaxLimit     = 10000
)

// Page is one page of query results in chain order. NextCursor is empty on
// the last page.
type Page struct {
	Records    []Record `json:"records"`
	NextCursor string   `json:"next_cursor"`
}

// VerifyResult is the outcome of [Store.Verify].
type VerifyResult struct {
	// OK is true when every record matched.
	OK bool `json:"ok"`
	// Records is how many records were checked (up to and including the
	// first bad one).
	Records  int64 `json:"records"`
	FirstSeq int64 `json:"first_seq,omitempty"`
	LastSeq  int64 `json:"last_seq,omitempty"`
	// HeadHash is the hash of the last record checked; an operator may
	// keep it outside the database to detect a rewrite of the whole chain.
	HeadHash string `json:"head_hash,omitempty"`
	// Checkpoint is the checkpoint the chain starts from, if any.
	Checkpoint *Checkpoint `json:"checkpoint,omitempty"`
	// Bad is the first record that does not match, when OK is false.
	Bad *Mismatch `json:"first_bad,omitempty"`
}

// Err returns nil when the chain verified and a *[ChainError] (which
// matches [ErrChainBroken]) otherwise.
func (v VerifyResult) Err() error {
	if v.OK || v.Bad == nil {
		return nil
	}
	return &ChainError{Mismatch: *v.Bad}
}

// Mismatch names the first record that does not match the chain.
type Mismatch struct {
	Seq    int64  `json:"seq"`
	Source string `json:"source,omitempty"`
	ID     string `json:"id,omitempty"`
	Type   string `json:"type,omitempty"`
	Reason string `json:"reason"`
}

// ErrChainBroken is matched by a *[ChainError]: [VerifyResult.Err] returns
// one for a broken chain, and [Store.Prune] refuses to prune a prefix that
// does not verify.
var ErrChainBroken = errors.New("audit chain broken")

// ErrBadCursor is returned by [Store.Query] for a cursor it did not issue.
var ErrBadCursor = errors.New("bad audit cursor")

// ErrInvalidRecord is returned by [Store.Append] for a record whose Data is
// not valid JSON or whose Source or ID is empty.
var ErrInvalidRecord = errors.New("invalid audit record")

// ChainError reports the first record of a broken chain.
type ChainError struct{ Mismatch Mismatch }

// Error names the first bad record and why it does not match.
func (e *ChainError) Error() string {
	return fmt.Sprintf("%v at seq %d (%s %s): %s", ErrChainBroken, e.Mismatch.Seq, e.Mismatch.Source, e.Mismatch.ID, e.Mismatch.Reason)
}

// Is makes errors.Is(err, ErrChainBroken) true.
func (e *ChainError) Is(target error) bool { return target == ErrChainBroken }

// PruneOptions says which prefix [Store.Prune] removes. Set one of them.
type PruneOptions struct {
	// Before prunes the records received before this time: the prefix up
	// to the first record received at or after it.
	Before time.Time
	// BeforeSeq prunes records with a lower seq.
	BeforeSeq int64
}

// PruneResult reports what [Store.Prune] did.
type PruneResult struct {
	// Pruned is how many records this prune replaced by the checkpoint
	// (an earlier checkpoint it absorbed not counted); zero when there was
	// nothing to prune.
	Pruned int64 `json:"pruned"`
	// Checkpoint is the checkpoint record now at the start of the chain.
	Checkpoint *Record `json:"checkpoint,omitempty"`
}

// Store is an append-only, hash-chained audit trail. Implementations are
// safe for concurrent use; appends are serialised so the chain stays
// linear.
type Store interface {
	// Append stores recs in one transaction, in order, assigning Seq,
	// PrevHash and Hash. A record whose (Source, ID) is already stored, or
	// appears earlier in recs, is skipped. It returns how many records were
	// stored; on error none were. Records with invalid data fail with
	// [ErrInvalidRecord].
	Append(ctx context.Context, recs []Record) (int, error)
	// Query returns one page of records matching f, in chain order. A
	// cursor it did not issue fails with [ErrBadCursor].
	Query(ctx context.Context, f Filter) (Page, error)
	// Verify walks the whole chain in one snapshot and reports the first
	// record that does not match. The error is for failures to read; a
	// broken chain is reported in the result.
	Verify(ctx context.Context) (VerifyResult, error)
	// Prune verifies and removes a prefix of the chain, leaving a
	// checkpoint in its place. It fails with [ErrChainBroken] when the
	// prefix does not verify.
	Prune(ctx context.Context, opts PruneOptions) (PruneResult, error)
	// Writable reports whether the store takes writes now: it begins a
	// write transaction, makes a write that changes nothing and rolls it
	// back (a read-only database, a standby or a locked file fail). It
	// is the audit service's readiness check of its store.
	Writable(ctx context.Context) error
	// Close releases the store.
	Close() error
}

// Open opens the store a DSN names: a postgres:// or postgresql:// URL, or a
// key=value string with host= or dbname=, opens PostgreSQL; anything else is
// a SQLite file path, optionally prefixed with "sqlite:" or "file:".
func Open(ctx context.Context, dsn string) (Store, error) {
	if IsPostgresDSN(dsn) {
		return OpenPostgres(ctx, dsn)
	}
	path := strings.TrimPrefix(strings.TrimPrefix(dsn, "sqlite:"), "file:")
	path = strings.TrimPrefix(path, "//")
	return OpenSQLite(ctx, path)
}

// IsPostgresDSN reports whether dsn names a PostgreSQL database.
func IsPostgresDSN(dsn string) bool {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		return true
	}
	for _, f := range strings.Fields(dsn) {
		if strings.HasPrefix(f, "host=") || strings.HasPrefix(f, "dbname=") {
			return true
		}
	}
	return false
}

const cursorPrefix = "a1."

// EncodeCursor returns the opaque cursor that continues after seq.
func EncodeCursor(seq int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte(cursorPrefix + strconv.FormatInt(seq, 10)))
}

// DecodeCursor returns the seq a cursor continues after; "" is 0. It fails
// with [ErrBadCursor].
func DecodeCursor(c string) (int64, error) {
	if c == "" {
		return 0, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || !strings.HasPrefix(string(b), cursorPrefix) {
		return 0, fmt.Errorf("%w: %q", ErrBadCursor, c)
	}
	n, err := strconv.ParseInt(string(b[len(cursorPrefix):]), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%w: %q", ErrBadCursor, c)
	}
	return n, nil
}

func (f Filter) limit() int {
	switch {
	case f.Limit <= 0:
		return DefaultLimit
	case f.Limit > MaxLimit:
		return MaxLimit
	}
	return f.Limit
}
