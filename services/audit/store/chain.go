package store

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// GenesisHash is the PrevHash of the first record of a chain.
var GenesisHash = strings.Repeat("0", 64)

const (
	recordDomain     = "ansflow.audit.record.v1"
	checkpointDomain = "ansflow.audit.checkpoint.v1"
)

// hasher computes record hashes with a reused buffer; it is not safe for
// concurrent use.
//
// The hashed bytes are a canonical encoding of the record: a text field is
// "<byte length>:<bytes>", an integer field "<decimal>:", in the order of
// [canonicalColumns]. SQLite builds the same bytes in SQL (see
// canonicalSQL), so that verifying a row costs one column read instead of
// nineteen.
type hasher struct{ buf []byte }

func (h *hasher) text(s string) {
	h.buf = strconv.AppendInt(h.buf, int64(len(s)), 10)
	h.buf = append(h.buf, ':')
	h.buf = append(h.buf, s...)
}

func (h *hasher) blob(b []byte) {
	h.buf = strconv.AppendInt(h.buf, int64(len(b)), 10)
	h.buf = append(h.buf, ':')
	h.buf = append(h.buf, b...)
}

func (h *hasher) int(n int64) {
	h.buf = strconv.AppendInt(h.buf, n, 10)
	h.buf = append(h.buf, ':')
}

func (h *hasher) sum() string { return hashBytes(h.buf) }

func hashBytes(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// canonicalColumns lists the hashed columns in order, with true for text
// columns; canonical must follow it.
var canonicalColumns = []struct {
	name string
	text bool
}{
	{"seq", false}, {"prev_hash", true}, {"stream", true}, {"stream_seq", false}, {"source", true},
	{"event_id", true}, {"type", true}, {"time_ns", false}, {"subject", true}, {"run_id", true},
	{"step_id", true}, {"attempt", false}, {"pipeline", true}, {"actor", true}, {"data", true},
	{"rejected", false}, {"reason", true}, {"received_ns", false},
}

// canonical writes the canonical encoding of r (every field but Hash) to
// the buffer. Seq is included, so moving a record changes its hash.
func (h *hasher) canonical(r *Record) {
	h.buf = h.buf[:0]
	h.text(recordDomain)
	h.int(r.Seq)
	h.text(r.PrevHash)
	h.text(r.Stream)
	h.int(int64(r.StreamSeq))
	h.text(r.Source)
	h.text(r.ID)
	h.text(r.Type)
	h.int(toNanos(r.Time))
	h.text(r.Subject)
	h.text(r.RunID)
	h.text(r.StepID)
	h.int(int64(r.Attempt))
	h.text(r.Pipeline)
	h.text(r.Actor)
	h.blob(r.Data)
	if r.Rejected {
		h.int(1)
	} else {
		h.int(0)
	}
	h.text(r.Reason)
	h.int(toNanos(r.ReceivedAt))
}

// recordHash is the chain hash of r: the hex SHA-256 of its canonical
// encoding.
func (h *hasher) recordHash(r *Record) string {
	h.canonical(r)
	return h.sum()
}

// canonicalSQL is a SQLite expression that yields the canonical encoding
// of a row of audit_records as a BLOB. One format() call costs SQLite less
// than a chain of || operators. %s stops at a NUL byte, which stored text
// never holds (see cleanText) and JSON data cannot; a value tampered to
// hold one is still caught, as its octet_length no longer matches.
var canonicalSQL = func() string {
	var h hasher
	h.text(recordDomain)
	layout := strings.ReplaceAll(string(h.buf), "%", "%%")
	var args []string
	for _, c := range canonicalColumns {
		if c.text {
			layout += "%d:%s"
			args = append(args, "octet_length("+c.name+")", c.name)
		} else {
			layout += "%d:"
			args = append(args, c.name)
		}
	}
	return "CAST(format('" + layout + "', " + strings.Join(args, ", ") + ") AS BLOB)"
}()

// checkpointSeal is the seal of checkpoint c held by record r: it covers
// the record's identity and every field of c but the seal itself.
func (h *hasher) checkpointSeal(r *Record, c *Checkpoint) string {
	h.buf = h.buf[:0]
	h.text(checkpointDomain)
	h.int(r.Seq)
	h.text(r.PrevHash)
	h.text(r.Hash)
	h.text(r.Source)
	h.text(r.ID)
	h.int(toNanos(r.Time))
	h.int(toNanos(r.ReceivedAt))
	h.int(c.FirstSeq)
	h.int(c.LastSeq)
	h.int(c.Count)
	h.text(c.Anchor)
	h.text(c.PrevSeal)
	h.int(toNanos(c.PrunedAt))
	return h.sum()
}

// Times are stored as Unix nanoseconds; zero time is 0, and times beyond
// what int64 nanoseconds hold are clamped so that a stored time always
// reads back as the time that was hashed.
var (
	minTime = time.Unix(0, math.MinInt64+1).UTC()
	maxTime = time.Unix(0, math.MaxInt64).UTC()
)

func toNanos(t time.Time) int64 {
	switch {
	case t.IsZero():
		return 0
	case t.Before(minTime):
		return minTime.UnixNano()
	case t.After(maxTime):
		return maxTime.UnixNano()
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// cleanText makes s storable as text everywhere (PostgreSQL refuses NUL
// bytes and invalid UTF-8), so that what is hashed is what reads back.
func cleanText(s string) string {
	if strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(s, "\x00", "")
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// normalize prepares r for hashing and storage.
func normalize(r *Record) error {
	for _, p := range []*string{&r.Stream, &r.Source, &r.ID, &r.Type, &r.Subject, &r.RunID, &r.StepID, &r.Pipeline, &r.Actor, &r.Reason} {
		*p = cleanText(*p)
	}
	if r.Source == "" || r.ID == "" {
		return fmt.Errorf("%w: empty source or id (source %q, id %q)", ErrInvalidRecord, r.Source, r.ID)
	}
	if r.StreamSeq > math.MaxInt64 {
		return fmt.Errorf("%w: stream sequence %d out of range", ErrInvalidRecord, r.StreamSeq)
	}
	if len(r.Data) > 0 && !json.Valid(r.Data) {
		return fmt.Errorf("%w: data of %s %s is not valid JSON", ErrInvalidRecord, r.Source, r.ID)
	}
	r.Time = fromNanos(toNanos(r.Time))
	r.ReceivedAt = fromNanos(toNanos(r.ReceivedAt))
	return nil
}

// chainHead is the end of a chain an append continues from.
type chainHead struct {
	seq  int64
	hash string
}

// link assigns r its place after head, hashes it and returns the new head.
func (h *hasher) link(head chainHead, r *Record) chainHead {
	r.Seq = head.seq + 1
	r.PrevHash = head.hash
	r.Hash = h.recordHash(r)
	return chainHead{seq: r.Seq, hash: r.Hash}
}

// verifier walks records in seq order and remembers the first mismatch.
type verifier struct {
	h       hasher
	res     VerifyResult
	prev    chainHead
	started bool
}

// next checks r against the records seen so far and reports whether the
// walk may go on.
func (v *verifier) next(r *Record) bool {
	if r.IsCheckpoint() {
		return v.nextHashed(r, "")
	}
	return v.nextHashed(r, v.h.recordHash(r))
}

// nextHashed is next for a record whose content hash is already computed:
// r needs only Seq, Hash, PrevHash, Source and Type (and all of its fields
// when it is a checkpoint).
func (v *verifier) nextHashed(r *Record, content string) bool {
	if v.res.Bad != nil {
		return false
	}
	v.res.Records++
	if !v.started {
		v.started = true
		v.res.FirstSeq = r.Seq
		if r.IsCheckpoint() {
			if !v.checkpoint(r) {
				return false
			}
			v.prev = chainHead{seq: r.Seq, hash: r.Hash}
			v.res.LastSeq, v.res.HeadHash = r.Seq, r.Hash
			return true
		}
		v.prev = chainHead{seq: 0, hash: GenesisHash}
	}
	switch {
	case r.IsCheckpoint():
		return v.bad(r, "checkpoint in the middle of the chain: records before it were not pruned")
	case r.Seq != v.prev.seq+1 && v.res.Records == 1:
		return v.bad(r, fmt.Sprintf("chain starts at seq %d without a checkpoint: records before it are missing", r.Seq))
	case r.Seq != v.prev.seq+1:
		return v.bad(r, fmt.Sprintf("seq %d follows seq %d: records missing or reordered", r.Seq, v.prev.seq))
	case r.PrevHash != v.prev.hash:
		return v.bad(r, fmt.Sprintf("prev_hash does not match the hash of seq %d: a record before it was edited, removed or reordered", v.prev.seq))
	}
	if content != r.Hash {
		return v.bad(r, "content does not match its hash: the record was edited")
	}
	v.prev = chainHead{seq: r.Seq, hash: r.Hash}
	v.res.LastSeq, v.res.HeadHash = r.Seq, r.Hash
	return true
}

func (v *verifier) checkpoint(r *Record) bool {
	c, err := r.Checkpoint()
	if err != nil {
		return v.bad(r, "checkpoint data unreadable: "+err.Error())
	}
	switch {
	case c.Anchor != r.Hash:
		return v.bad(r, "checkpoint anchor does not match its hash")
	case c.LastSeq != r.Seq:
		return v.bad(r, fmt.Sprintf("checkpoint covers up to seq %d but is stored at seq %d", c.LastSeq, r.Seq))
	case v.h.checkpointSeal(r, &c) != c.Seal:
		return v.bad(r, "checkpoint does not match its seal: the checkpoint was edited")
	}
	v.res.Checkpoint = &c
	return true
}

func (v *verifier) bad(r *Record, reason string) bool {
	v.res.Bad = &Mismatch{Seq: r.Seq, Source: r.Source, ID: r.ID, Type: r.Type, Reason: reason}
	return false
}

// finish checks the end of the walk against the head the store recorded
// (head.seq 0 when none) and returns the result.
func (v *verifier) finish(head chainHead) VerifyResult {
	if v.res.Bad == nil && head.seq != 0 {
		switch {
		case head.seq > v.res.LastSeq:
			v.res.Bad = &Mismatch{Seq: v.res.LastSeq + 1, Reason: fmt.Sprintf("records %d..%d are missing: the chain head is at seq %d", v.res.LastSeq+1, head.seq, head.seq)}
		case head.seq == v.res.LastSeq && head.hash != v.res.HeadHash:
			v.res.Bad = &Mismatch{Seq: head.seq, Reason: "the last record's hash does not match the chain head"}
		}
	}
	v.res.OK = v.res.Bad == nil
	return v.res
}

// newCheckpoint builds the checkpoint record that replaces records
// first..last, where last is the final pruned record and first the
// current start of the chain (possibly an earlier checkpoint).
func (h *hasher) newCheckpoint(first, last *Record, now time.Time) (Record, error) {
	c := Checkpoint{FirstSeq: first.Seq, LastSeq: last.Seq, Count: last.Seq - first.Seq + 1, Anchor: last.Hash, PrunedAt: now}
	prev := first.PrevHash
	if first.IsCheckpoint() {
		old, err := first.Checkpoint()
		if err != nil {
			return Record{}, err
		}
		c.FirstSeq, c.Count, c.PrevSeal = old.FirstSeq, old.Count+last.Seq-first.Seq, old.Seal
	}
	r := Record{
		Seq: last.Seq, Hash: last.Hash, PrevHash: prev,
		Source: CheckpointSource, ID: fmt.Sprintf("checkpoint/%d", last.Seq), Type: TypeCheckpoint,
		Time: now, ReceivedAt: now,
	}
	if err := normalize(&r); err != nil {
		return Record{}, err
	}
	c.PrunedAt = r.Time
	c.Seal = h.checkpointSeal(&r, &c)
	data, err := json.Marshal(c)
	if err != nil {
		return Record{}, fmt.Errorf("encode checkpoint: %w", err)
	}
	r.Data = data
	return r, nil
}

// segment is a range of the chain checked on its own: its first record is
// kept unjudged, and the records after it are checked against it. Stitching
// the segments in order then gives the result a single walk would.
type segment struct {
	n            int64 // records seen
	first        Record
	firstContent string
	v            verifier // over the records after first
}

// add takes the next record of the segment and reports whether to go on.
func (s *segment) add(r *Record, content string) bool {
	s.n++
	if s.n == 1 {
		s.first, s.firstContent = *r, content
		s.v = verifier{started: true, prev: chainHead{seq: r.Seq, hash: r.Hash}}
		return true
	}
	return s.v.nextHashed(r, content)
}

// stitch continues v with the segment and reports whether to go on.
func (s *segment) stitch(v *verifier) bool {
	if s.n == 0 {
		return true
	}
	if !v.nextHashed(&s.first, s.firstContent) {
		return false
	}
	v.res.Records += s.v.res.Records
	if s.v.res.Bad != nil {
		v.res.Bad = s.v.res.Bad
		return false
	}
	if s.n > 1 {
		v.prev = s.v.prev
		v.res.LastSeq, v.res.HeadHash = s.v.res.LastSeq, s.v.res.HeadHash
	}
	return true
}

// pruner verifies the prefix a prune removes and remembers its ends.
type pruner struct {
	v           verifier
	first, last Record
}

func (p *pruner) next(r *Record) bool {
	if !p.v.next(r) {
		return false
	}
	if p.v.res.Records == 1 {
		p.first = *r
	}
	p.last = *r
	return true
}

// checkpoint returns the checkpoint that replaces the walked prefix and
// how many records it newly covers; n is 0 when there is nothing to prune.
func (p *pruner) checkpoint(now time.Time) (cp Record, n int64, err error) {
	if p.v.res.Bad != nil {
		return Record{}, 0, fmt.Errorf("refusing to prune: %w", &ChainError{Mismatch: *p.v.res.Bad})
	}
	if p.v.res.Records == 0 || (p.first.Seq == p.last.Seq && p.first.IsCheckpoint()) {
		return Record{}, 0, nil
	}
	n = p.last.Seq - p.first.Seq + 1
	if p.first.IsCheckpoint() {
		n--
	}
	cp, err = p.v.h.newCheckpoint(&p.first, &p.last, now)
	if err != nil {
		return Record{}, 0, fmt.Errorf("build audit checkpoint: %w", err)
	}
	return cp, n, nil
}
